"""`moecomm demo`: the main job on this machine.

Loads the sample outputs shipped with moecomm (real runs of the reference backends on an H100)
into the database (the embedded PostgreSQL unless MOECOMM_DATABASE_URL is set) and prints their
trend table.
"""

from __future__ import annotations

import argparse

from moecomm_tasks import parse, query, store
from moecomm_tasks.samples import sample_runs


def run(args: argparse.Namespace) -> int:
    from moecomm_tasks.cli import _engine, console, print_trend_table

    engine = _engine()
    runs = sample_runs()
    for sample in runs:
        result = store.load(engine, parse.parse_paths(sample.paths), sample.run_id, sample.run_at)
        loaded = sum(j.measurements for j in result.jobs if j.status != "unchanged")
        console.print(f"run {sample.run_id} ({sample.run_at.isoformat()}): "
                      f"{loaded} measurements loaded, {len(result.jobs)} jobs", markup=False)
    print_trend_table(engine, query.SeriesFilter(gpu_model="NVIDIA H100 80GB HBM3"), last=len(runs))
    return 0
