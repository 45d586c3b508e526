"""Our detector's trade-off on the evaluation harness's series: false alarms against recall, for
detector parameter overrides, in one process (seeded; the same series as eval_detect.py).

Usage: PYTHONPATH=. python tests/benchmarks/sweep_detect.py [--series N] [--seed S] [--clean] \\
           'threshold=2.8' 'threshold=2.95' 'clip=2.6,gate=4.0' ...

Each argument is a set of `moecomm_tasks.detect.Params` overrides; one line per set with false
alarms per 1,000 series-nights and, per scenario, recall scored as eval_detect.py scores it
(alert within 7 nights, placed within 2 nights; median delay) and loosely (any alert in those
7 nights).
"""

from __future__ import annotations

import argparse
import ast
import sys
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import eval_detect as harness

from moecomm_tasks.detect import Params

SHOWN = ("step +1%", "step +2%", "step +3%", "step +5%", "1 rank +10%")


def overrides(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        out[name.strip()] = ast.literal_eval(value.strip())
    return out


def alerts(job: tuple[harness.Night, dict]) -> list[tuple[int, int]]:
    night, params = job
    return harness.ours(night, Params(**params))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=300)
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--clean", action="store_true",
                        help="no spike or bimodal nights (what the detector could do without outlier nights)")
    parser.add_argument("sets", nargs="*", default=[""])
    args = parser.parse_args()
    if args.clean:
        harness.SPIKE_RATE = harness.BIMODAL_RATE = 0.0
    nulls, changed = harness.make_dataset(args.seed, args.series)
    print(f"seed {args.seed}, {len(nulls)} series without change, {args.series} per scenario"
          + (", no spike or bimodal nights" if args.clean else ""))
    print("| overrides | false alarms / 1,000 | " + " | ".join(SHOWN) + " |")
    print("|---|---:|" + "---:|" * len(SHOWN))
    with Pool(2) as pool:
        for text in args.sets:
            params = overrides(text)
            score = harness.Score()
            for found in pool.map(alerts, [(n, params) for n in nulls], chunksize=20):
                score.null(found)
            for label in SHOWN:
                for found in pool.map(alerts, [(n, params) for n in changed[label]], chunksize=20):
                    score.change(label, found)
            cells = [f"{score.recall(lb)} / {score.recall_anywhere(lb)}" for lb in SHOWN]
            print(f"| {text or 'defaults'} | {score.fa_per_1000():.2f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
