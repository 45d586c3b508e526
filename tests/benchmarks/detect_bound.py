"""How well could any detector do on the harness's 2% steps? An idealised bound, seeded, one process.

Usage: python tests/benchmarks/detect_bound.py [--series N] [--noise PCT] [--step PCT]

The idealised detector knows what ours has to estimate: the series' level and its noise between
nights, and that nights are Gaussian with no spikes or bimodal nights. It is the one-sided CUSUM
tuned to the step (reference value half the step, in noise units), restarted after every alarm,
which is the optimal detector of a known step in known Gaussian noise; the change is placed where
the alarm's run began. Scored as tests/benchmarks/eval_detect.py scores ours: false alarms per
1,000 series-nights, and a step "found" if an alarm comes within 7 nights of it, placed within 2
nights of the truth (the looser figure: any alarm in those 7 nights).

The default noise, 1.06% per night, is what the harness's per-night statistic (the slowest rank's
median) shows between nights: 1% shared by the ranks plus the ranks' own within-night error.
"""

from __future__ import annotations

import argparse

import numpy as np

FOUND_WITHIN, LOCATION_SLACK, BEFORE, NULL_NIGHTS = 7, 2, 40, 400


def cusum(z: np.ndarray, k: float, h: float) -> tuple[np.ndarray, np.ndarray]:
    """Per series (rows) and night: whether an alarm was raised that night, and where its run began."""
    series, nights = z.shape
    s = np.zeros(series)
    began = np.zeros(series, dtype=int)
    alarm = np.zeros((series, nights), dtype=bool)
    where = np.full((series, nights), -1)
    for t in range(nights):
        began = np.where(s == 0.0, t, began)
        s = np.maximum(0.0, s + z[:, t] - k)
        hit = s > h
        alarm[hit, t] = True
        where[hit, t] = began[hit]
        s[hit] = 0.0
    return alarm, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=100_000)
    parser.add_argument("--noise", type=float, default=1.06, help="noise between nights, %% of the level")
    parser.add_argument("--step", type=float, default=2.0, help="the step, %% of the level")
    parser.add_argument("--seed", type=int, default=20261124)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    delta = args.step / args.noise
    k = delta / 2.0
    print(f"step {args.step}% in {args.noise}% noise: {delta:.2f} noise units per night; CUSUM reference {k:.2f}")
    print("| threshold h | false alarms / 1,000 series-nights | found within 7 nights, placed within 2 | any alarm in the 7 nights |")
    print("|---:|---:|---:|---:|")
    null = rng.normal(size=(args.series // 4, NULL_NIGHTS))
    changed = rng.normal(size=(args.series, BEFORE + FOUND_WITHIN))
    changed[:, BEFORE:] += delta
    for h in (2.0, 2.25, 2.5, 2.75, 3.0, 3.5):
        alarms, _ = cusum(null, k, h)
        fa = 1000.0 * alarms.sum() / alarms.size
        alarms, where = cusum(changed, k, h)
        window = alarms[:, BEFORE:]
        placed = np.abs(where[:, BEFORE:] - BEFORE) <= LOCATION_SLACK
        found = (window & placed).any(axis=1).mean()
        anywhere = window.any(axis=1).mean()
        print(f"| {h:.2f} | {fa:.2f} | {100 * found:.0f}% | {100 * anywhere:.0f}% |")


if __name__ == "__main__":
    main()
