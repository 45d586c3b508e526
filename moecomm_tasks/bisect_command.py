"""`moecomm bisect ALERT_ID`: the bisection DAG, once, in this process (as `moecomm demo` runs the
nightly DAG: `dag.test()`, an Airflow home of its own), then its verdict.

Exit status: 0 when it named the first bad build; 1 when it ended inconclusive or failed (the
verdict says why); 3 when the alert cannot be bisected (the message says what is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from moecomm_tasks import bisection, bisection_report, demo
from moecomm_tasks.embedded import moecomm_home
from moecomm_tasks.errors import MoecommError
from moecomm_tasks.matrix import load_matrix, matrix_path

DAG_ID = "moe_comm_bisect"


def run(args: argparse.Namespace) -> int:
    from moecomm_tasks.cli import _engine, console, err_console

    started = time.monotonic()
    engine = _engine()
    # The tasks run in this process: let them reuse the server started here.
    os.environ.setdefault("MOECOMM_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    matrix_name = str(matrix_path(args.matrix).resolve()) if args.matrix else None
    chosen = bisection.plan(engine, load_matrix(matrix_name), args.alert_id)
    err_console.print(f"Bisecting alert {args.alert_id} over {len(chosen.builds)} builds, "
                      f"{chosen.builds[0].label} .. {chosen.builds[-1].label} ...", markup=False)
    airflow_home = Path(args.airflow_home) if args.airflow_home else moecomm_home() / "airflow"
    run_id, state = demo.run_dag(datetime.now(timezone.utc), airflow_home, matrix_name, dag_id=DAG_ID,
                                 conf={"alert_id": args.alert_id})
    verdict = bisection.latest(engine, args.alert_id, run_id)
    if verdict is None:
        raise MoecommError(f"DAG run {run_id} ({state}) stored no bisection of alert {args.alert_id}: "
                           f"see its task logs under {airflow_home / 'logs'}")
    probes = bisection.probes(engine, verdict.bisection_id)
    if args.format == "json":
        print(json.dumps(bisection_report.payload(verdict, probes), indent=2, default=str))
    else:
        console.print(bisection_report.text(verdict, probes), markup=False, highlight=False)
        console.print(f"DAG run {run_id}: {state}; follow-up: {verdict.notified or 'no channel configured'}; "
                      f"{time.monotonic() - started:.0f} s", markup=False)
    return 0 if verdict.state == "culprit" else 1
