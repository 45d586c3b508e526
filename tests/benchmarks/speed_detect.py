"""The detector's cost, before and after a change to it, side by side in one process: a full scan
of every series, and detecting one new night (a resumed scan), on the harness's series.

Usage: PYTHONPATH=. python tests/benchmarks/speed_detect.py [--before PATH] [--groups N]

`--before` is another copy of `moecomm_tasks/detect.py` (e.g. `git show main:moecomm_tasks/detect.py
> /tmp/detect_main.py`); both scan the same series (groups of 6 of eval_shapes.py's `harness`
shape, 80 nights), each alone (`detect`) and as groups (`detect_group`).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import eval_shapes as harness  # noqa: E402

from moecomm_tasks import detect as current  # noqa: E402


def load(path: str):
    spec = importlib.util.spec_from_file_location("detect_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["detect_before"] = module
    spec.loader.exec_module(module)
    return module


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="")
    parser.add_argument("--groups", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    groups = [harness.make_group(rng, harness.SHAPES[0]) for _ in range(args.groups)]
    modules = [("after (this tree)", current)] + ([("before", load(args.before))] if args.before else [])
    series = sum(len(g) for g in groups)
    print(f"{series} series of {harness.NIGHTS} nights, {args.groups} groups")
    print("| detector | full scan, each alone | full scan, by group | last night only, by group |")
    print("|---|---:|---:|---:|")
    for name, module in modules:
        inputs = [{i: module.SeriesInput(m.values, m.stderr, m.shape) for i, m in enumerate(g)} for g in groups]
        alone = timed(lambda: [module.detect(m.values, m.stderr, module.Params(), m.shape) for g in groups for m in g])
        full: list[dict] = []
        grouped = timed(lambda: full.extend(module.detect_group(members) for members in inputs))
        resumed = []
        for members, found in zip(inputs, full):
            resumed.append({key: module.SeriesInput(
                m.values, m.stderr, m.shape,
                start=max([c.first_bad for c in found[key] if c.detected_at < harness.NIGHTS - 1], default=0),
                first_test=harness.NIGHTS - 1) for key, m in members.items()})
        last = timed(lambda: [module.detect_group(members) for members in resumed])
        print(f"| {name} | {1000 * alone / series:.1f} ms/series | {1000 * grouped / series:.1f} ms/series "
              f"| {1000 * last / series:.2f} ms/series |")


if __name__ == "__main__":
    main()
