"""False alarms of the regression detector on stationary series of every shape the nightly
produces, and its recall, on groups of series measured in the same runs (one job's sizes), in one
process, seeded; tuning seeds and held-out seeds reported apart.

Usage: PYTHONPATH=. python tests/benchmarks/eval_shapes.py [--groups N] [--seeds 1,2,3]
           [--held-out 101,102,103] [--recall-groups N] [--set 'threshold=3.2,...']

Every series is a member of a group of `MEMBERS` series that the detector sees together
(`detect.detect_group`), as `alerts.py` gives it one job's series. Each night is simulated from
its iterations (ranks x 200, lognormal 3% around the night's level, 1% outlier iterations 1.5-3x)
as `eval_detect.py` does; the shapes differ in how nights vary:

* `harness`: eval_detect.py's series: 1% noise between nights shared by a series' ranks, 2% of
  nights one-night spikes (+20-30%), 3% bimodal nights (30-70% of iterations 5-15% slower);
* `independent ranks`: each rank has its own night-to-night noise (1%), so the slowest rank is
  the largest of 8 independent draws, a different rank each night;
* `shared noise`: one noise shared by every size of the group in a night (1%, plus 0.4% of each
  size's own), and spikes and bimodal nights hit the whole group at once;
* `skewed slowest-of-16`: 16 ranks, each night each rank is late by an exponential delay (mean
  1%): the slowest rank's value is right-skewed (a Gumbel-like tail of slow nights);
* `bimodal nights`: 10% of nights with part of their iterations slow (as `harness`), and a second
  mode of whole nights: 15% of nights run 2% slower on every iteration (another placement);
* `outlier nights`: 5% of nights off by 3-30%, a quarter of them faster, every iteration moved
  (the shape does not see them);
* `no --iter_stats`: `harness`'s nights, but the detector gets what a run without
  `--iter_stats` stores: the slowest rank's mean, no standard error, no shape;
* `loader year EP 4` and `EP 16`: like the year of bench_load.py's matrix that bench_series.py
  detects (each rank its own 2% night noise, nothing shared, no spikes or bimodal nights): the
  slowest of 4 ranks is barely skewed, the slowest of 16 more. A detector that lowers its
  threshold where the baseline looks skewed pays for it on the first.

False alarms per 1,000 tested series-nights (nights the detector can alert on, from
`Params.min_history` on) are counted per alert and per group of alerts with one cause (alerts of
one group raised on the same night count once). Recall scenarios (each member of a group steps,
or one member alone) are scored as eval_detect.py scores them: a regression alert located within
2 nights of the change, no later than 7 nights after it.
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from moecomm_tasks.detect import Params, SeriesInput, detect_group, median_stderr  # noqa: E402

ITERS, NIGHTS, CHANGE_AT, MEMBERS = 200, 80, 50, 6
WITHIN, OUTLIER_ITER_RATE = 0.03, 0.01
FOUND_WITHIN, LOCATION_SLACK = 7, 2
TUNING_SEEDS, HELD_OUT_SEEDS = (1, 2, 3), (101, 102, 103)


@dataclass(frozen=True)
class Shape:
    """How a group's nights vary (fractions of the level; rates per night)."""
    name: str
    ranks: int = 8
    own_between: float = 0.01       # a series' own night noise, shared by its ranks
    shared_between: float = 0.0     # night noise shared by every series of the group
    rank_between: float = 0.0       # each rank's own night noise
    rank_delay: float = 0.0         # mean of each rank's exponential delay per night
    spike_rate: float = 0.02
    spike: tuple[float, float] = (0.20, 0.30)
    bimodal_rate: float = 0.03      # nights with part of every rank's iterations slow
    mode_rate: float = 0.0          # nights in a second, slower mode (every iteration)
    mode_size: float = 0.0
    outlier_rate: float = 0.0       # nights off by `outlier` either way, every iteration moved
    outlier: tuple[float, float] = (0.03, 0.30)
    shared_events: bool = False     # spikes, bimodal and outlier nights hit the whole group
    iter_stats: bool = True


SHAPES = [
    Shape("harness"),
    Shape("independent ranks", own_between=0.0, rank_between=0.01, shared_between=0.003),
    Shape("shared noise", own_between=0.004, shared_between=0.01, shared_events=True),
    Shape("skewed slowest-of-16", ranks=16, own_between=0.005, rank_delay=0.01),
    Shape("bimodal nights", bimodal_rate=0.10, mode_rate=0.15, mode_size=0.02),
    Shape("outlier nights", spike_rate=0.0, outlier_rate=0.05),
    Shape("no --iter_stats", iter_stats=False),
    Shape("loader year EP 4", ranks=4, own_between=0.0, rank_between=0.02, spike_rate=0.0, bimodal_rate=0.0),
    Shape("loader year EP 16", ranks=16, own_between=0.0, rank_between=0.02, spike_rate=0.0, bimodal_rate=0.0),
]


@dataclass
class Member:
    """What the detector sees of one series."""
    values: np.ndarray
    stderr: np.ndarray | None
    shape: np.ndarray | None


def _events(rng: np.random.Generator, shape: Shape, rate: float) -> np.ndarray:
    """Which nights (members x nights) an event of `rate` hits: the same nights for the whole
    group when the shape's events are shared."""
    if shape.shared_events:
        return np.broadcast_to(rng.random(NIGHTS) < rate, (MEMBERS, NIGHTS)).copy()
    return rng.random((MEMBERS, NIGHTS)) < rate


def make_group(rng: np.random.Generator, shape: Shape, step: float = 0.0, kind: str = "none",
               who: str = "all") -> list[Member]:
    """One group of MEMBERS series; a change (`kind` "step" or "straggler", of `step`) starts at
    CHANGE_AT on every member (`who` "all") or on the first member alone ("one")."""
    m, n, r = MEMBERS, NIGHTS, shape.ranks
    base = 100.0 * np.exp(rng.uniform(0.0, 3.0, m))
    log_level = (rng.normal(0.0, shape.own_between, (m, n))
                 + rng.normal(0.0, shape.shared_between, n)[None, :])[:, :, None] \
        + rng.normal(0.0, 0.005, (m, 1, r)) + rng.normal(0.0, shape.rank_between, (m, n, r))
    if shape.rank_delay:
        log_level = log_level + np.log1p(rng.exponential(shape.rank_delay, (m, n, r)))
    level = base[:, None, None] * np.exp(log_level)                       # members x nights x ranks
    spikes = _events(rng, shape, shape.spike_rate)
    level[spikes] *= rng.uniform(1.0 + shape.spike[0], 1.0 + shape.spike[1], (m, n))[spikes][:, None]
    modes = _events(rng, shape, shape.mode_rate)
    level[modes] *= 1.0 + shape.mode_size
    odd = _events(rng, shape, shape.outlier_rate)
    size = rng.uniform(*shape.outlier, (m, n)) * np.where(rng.random((m, n)) < 0.25, -1.0, 1.0)
    level[odd] *= (1.0 + size[odd])[:, None]
    changed = slice(None) if who == "all" else slice(0, 1)
    if kind == "step":
        level[changed, CHANGE_AT:] *= 1.0 + step
    elif kind == "straggler":
        level[changed, CHANGE_AT:, rng.integers(r)] *= 1.0 + step
    it = level[..., None] * np.exp(rng.normal(0.0, WITHIN, (m, n, r, ITERS)))
    outliers = rng.random(it.shape) < OUTLIER_ITER_RATE
    it[outliers] *= rng.uniform(1.5, 3.0, outliers.sum())
    bimodal = _events(rng, shape, shape.bimodal_rate)
    for member, night in zip(*np.nonzero(bimodal)):
        slow = rng.random((r, ITERS)) < rng.uniform(0.3, 0.7)
        it[member, night][slow] *= rng.uniform(1.05, 1.15)
    members = []
    for one in it:
        if not shape.iter_stats:  # the slowest rank's mean; no median, minimum or shape
            members.append(Member(one.mean(axis=2).max(axis=1), None, None))
            continue
        median, fastest = np.median(one, axis=2), one.min(axis=2)
        slowest = median.argmax(axis=1)
        rows = np.arange(n)
        members.append(Member(median[rows, slowest],
                              median_stderr(median[rows, slowest], fastest[rows, slowest], ITERS),
                              np.log(median / fastest).mean(axis=1)))
    return members


def regressions(job: tuple[list[Member], dict]) -> list[list[tuple[int, int]]]:
    """Per member of one group: its regression alerts as (night of the alert, located change)."""
    group, overrides = job
    found = detect_group({i: SeriesInput(m.values, m.stderr, m.shape) for i, m in enumerate(group)},
                         Params(**overrides))
    return [[(c.detected_at, c.first_bad) for c in found[i] if c.direction == "regression"]
            for i in range(len(group))]


def any_alerts(job: tuple[list[Member], dict]) -> list[list[int]]:
    """Per member of one group: the nights of all its alerts, either direction."""
    group, overrides = job
    found = detect_group({i: SeriesInput(m.values, m.stderr, m.shape) for i, m in enumerate(group)},
                         Params(**overrides))
    return [[c.detected_at for c in found[i]] for i in range(len(group))]


@dataclass
class FalseAlarms:
    alerts: int = 0
    groups: int = 0
    nights: int = 0

    def add(self, per_member: list[list[int]], tested: int) -> None:
        self.alerts += sum(len(a) for a in per_member)
        self.groups += len({t for a in per_member for t in a})
        self.nights += tested * len(per_member)

    def rates(self) -> tuple[float, float]:
        return 1000.0 * self.alerts / max(self.nights, 1), 1000.0 * self.groups / max(self.nights, 1)


def hit(alerts: list[tuple[int, int]]) -> bool:
    return any(abs(where - CHANGE_AT) <= LOCATION_SLACK and CHANGE_AT <= t < CHANGE_AT + FOUND_WITHIN
               for t, where in alerts)


RECALL = [  # (label, shape name, kind, step, who)
    ("step +2%", "harness", "step", 0.02, "all"),
    ("step +5%", "harness", "step", 0.05, "all"),
    ("1 rank +10%", "harness", "straggler", 0.10, "all"),
    ("group +2% (shared noise)", "shared noise", "step", 0.02, "all"),
    ("group +5% (shared noise)", "shared noise", "step", 0.05, "all"),
    ("one size +2% (shared noise)", "shared noise", "step", 0.02, "one"),
    ("one size +5% (shared noise)", "shared noise", "step", 0.05, "one"),
    ("step +2% (skewed)", "skewed slowest-of-16", "step", 0.02, "all"),
    ("step +5% (skewed)", "skewed slowest-of-16", "step", 0.05, "all"),
    ("step +2% (bimodal nights)", "bimodal nights", "step", 0.02, "all"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=50, help=f"groups of {MEMBERS} per shape and seed")
    parser.add_argument("--recall-groups", type=int, default=25, help="groups per recall scenario and seed")
    parser.add_argument("--seeds", default=",".join(map(str, TUNING_SEEDS)))
    parser.add_argument("--held-out", default="", help=f"held-out seeds (e.g. {','.join(map(str, HELD_OUT_SEEDS))})")
    parser.add_argument("--set", default="", help="Params overrides, e.g. 'threshold=3.2,clip=2.0'")
    parser.add_argument("--shapes", default="", help="only these shapes (comma-separated names)")
    parser.add_argument("--no-recall", action="store_true")
    parser.add_argument("--recall", default="", help="only these recall scenarios (comma-separated labels)")
    args = parser.parse_args()
    overrides = {k.strip(): ast.literal_eval(v.strip()) for k, _, v in
                 (item.partition("=") for item in filter(None, args.set.split(",")))}
    tested = NIGHTS - Params(**overrides).min_history
    shapes = [s for s in SHAPES if not args.shapes or s.name in args.shapes.split(",")]
    started = time.perf_counter()
    with Pool(2) as pool:
        for title, seeds in (("tuning seeds", args.seeds), ("held-out seeds", args.held_out)):
            seeds = [int(s) for s in filter(None, seeds.split(","))]
            if not seeds:
                continue
            print(f"\n{title} {seeds}: {args.groups} groups of {MEMBERS} per shape and seed, "
                  f"{tested} tested nights per series, overrides: {args.set or 'none'}\n")
            print("| shape | series-nights | alerts | false alarms / 1,000 (per alert) | (per group-night) |")
            print("|---|---:|---:|---:|---:|")
            for shape in shapes:
                score = FalseAlarms()
                for seed in seeds:
                    rng = np.random.default_rng([seed, SHAPES.index(shape)])
                    groups = [make_group(rng, shape) for _ in range(args.groups)]
                    for per_member in pool.map(any_alerts, [(g, overrides) for g in groups], chunksize=5):
                        score.add(per_member, tested)
                per_alert, per_group = score.rates()
                print(f"| {shape.name} | {score.nights} | {score.alerts} | {per_alert:.2f} | {per_group:.2f} |",
                      flush=True)
            if args.no_recall:
                continue
            print(f"\nRecall ({args.recall_groups} groups per scenario and seed; 'one size': the changed member "
                  "only; other members' alerts in those groups, per 1,000 of their series-nights)\n")
            print("| scenario | found | recall | other members' alerts / 1,000 |")
            print("|---|---:|---:|---:|")
            by_name = {s.name: s for s in SHAPES}
            for index, (label, shape_name, kind, step, who) in enumerate(RECALL):
                if args.recall and label not in args.recall.split(","):
                    continue
                found = total = others = 0
                for seed in seeds:
                    rng = np.random.default_rng([seed, 100 + index])
                    groups = [make_group(rng, by_name[shape_name], step, kind, who) for _ in range(args.recall_groups)]
                    for per_member in pool.map(regressions, [(g, overrides) for g in groups], chunksize=5):
                        judged = per_member if who == "all" else per_member[:1]
                        found += sum(hit(a) for a in judged)
                        total += len(judged)
                        if who == "one":
                            others += sum(len(a) for a in per_member[1:])
                other_rate = f"{1000.0 * others / (total * (MEMBERS - 1) * tested):.2f}" if who == "one" else "-"
                print(f"| {label} | {found} / {total} | {100.0 * found / total:.1f}% | {other_rate} |", flush=True)
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
