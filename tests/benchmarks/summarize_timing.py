"""Timing methods side by side, from the reports of tests/benchmarks/gpu_timing.sh.

Usage: python3 tests/benchmarks/summarize_timing.py OUTDIR/*.json
Per (EP size, profile, backend, tokens, phase), rank 0's median iteration: upstream's kernel span
and the CUDA events of the same iterations (graph replay, then eager); our spin method's events
with the kernel span of its own iterations (one graph per phase), and eager behind a ~2 ms spin;
each beside the graph run's kernel span in %.
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"^ep(?P<ep>\d+)_(?P<profile>.+)_(?P<run>graph|eager|spin|spineager)$")


def median(value) -> float:
    return float(value["median"]) if isinstance(value, dict) else float(value)


def measured(result: dict, phase: str) -> dict[str, float]:
    """method -> rank 0's median for one phase of one result (main method and alternatives)."""
    found = {result["timing_method"]: median(result[f"{phase}_us"]["rank0"])}
    for method, phases in result.get("timing_alternatives", {}).items():
        found[method] = median(phases[f"{phase}_us"]["rank0"])
    return found


def main(paths: list[str]) -> None:
    table: dict[tuple, dict[str, float]] = defaultdict(dict)
    warnings = []
    for path in paths:
        match = NAME.match(Path(path).stem)
        if not match:
            continue
        report = json.loads(Path(path).read_text())
        if report["benchmark_metadata"].get("warning"):
            warnings.append(f"{Path(path).stem}: {report['benchmark_metadata']['warning']}")
        for result in report["results"]:
            for phase in ("dispatch", "combine"):
                key = (int(match["ep"]), match["profile"], result["backend"], result["local_batch_size"], phase)
                for method, value in measured(result, phase).items():
                    table[key][f"{match['run']}:{method}"] = value
    columns = ["graph:kernel_span", "graph:cuda_events", "eager:kernel_span", "eager:cuda_events",
               "spin:cuda_events_spin", "spin:kernel_span", "spineager:cuda_events_spin"]
    print("| EP | profile | backend | tokens | phase | " + " | ".join(columns) + " |")
    print("|---:|---|---|---:|---|" + "---:|" * len(columns))
    for key in sorted(table):
        row = table[key]
        base = row.get("graph:kernel_span")
        cells = []
        for column in columns:
            value = row.get(column)
            if value is None:
                cells.append("-")
            elif base and column != "graph:kernel_span":
                cells.append(f"{value:.1f} ({(value / base - 1) * 100:+.0f}%)")
            else:
                cells.append(f"{value:.1f}")
        print("| " + " | ".join(str(k) for k in key) + " | " + " | ".join(cells) + " |")
    for warning in warnings:
        print(f"\nWARNING {warning}")


if __name__ == "__main__":
    main(sys.argv[1:])
