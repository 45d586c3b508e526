"""The bisection's search and its statistical test, as pure functions.

Input: the catalog's builds from the alert's last good build to its first bad one, oldest first,
and `measure(build, n)`, which runs the alert's job `n` more times on `build` and returns one
value per repetition: the slowest rank's median iteration time (µs) of the alert's series, the
value the detector reads per night. `measure` raises `BuildFailed` when the build does not run
(or times out).

The test, on x = ln(value) (timings are right-skewed; a ratio becomes a difference):

The noise of a repetition is the variance of x within a build, pooled over every build measured
so far (the same job on the same node: only the build differs, so one noise serves them all, and
each build measured adds degrees of freedom). Two builds are compared with Student's t on the
difference of their mean x, one-sided, with that pooled variance and its N - k degrees of
freedom (N repetitions of k builds).

1. The ends are measured first, `repetitions` times each, interleaved (good, bad, good, ...).
   They must differ: the bad end slower, p < `alpha`. When the bad end is instead significantly
   less slow than the alert said (the difference below ln(1 + change), p < `alpha`), the
   regression does not reproduce between these builds: inconclusive. Otherwise both ends get one
   more repetition, up to `max_repetitions`; then inconclusive: the repetitions cannot resolve
   the ends.
2. A probe (the middle build of the range still open) is measured `repetitions` times. Its
   position is (mean x_probe - mean x_good) / (mean x_bad - mean x_good): 0 at the good end's
   level, 1 at the bad end's. It is bad when it is significantly slower than the good end and its
   position is at least 1 - `closeness`; good when it is significantly faster than the bad end
   and its position is at most `closeness` (both one-sided, p < `alpha`).
   Otherwise one more repetition, up to `max_repetitions`; then the bisection ends inconclusive
   and says where the probe lies (part of the way: part of the regression came with it).
3. Binary search: the first bad build is one of the n - 1 builds after the good end (n builds in
   all, ends included); each probe halves them, so at most ceil(log2(n - 1)) probes are made,
   within the bound ceil(log2 n) + 1.

A build that fails to run stops the search ("failed"), naming the build and why, with the range
narrowed so far: nothing is guessed around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from moecomm_tasks.errors import MoecommError

if TYPE_CHECKING:
    from moecomm_tasks.matrix import Matrix

CULPRIT, INCONCLUSIVE, FAILED = "culprit", "inconclusive", "failed"
# Launching, parsing and loading one repetition, besides the job's own timeout.
OVERHEAD_PER_RUN_S = 60
GOOD, BAD, UNRESOLVED = "good", "bad", "unresolved"
TEST = ("one-sided Student's t on ln(slowest rank's median) per repetition, the noise pooled over every build "
        "measured")


class BuildFailed(MoecommError):
    """A build that did not run: it failed to start, crashed, timed out or measured nothing."""


@dataclass(frozen=True)
class Settings:
    repetitions: int = 3
    max_repetitions: int = 8
    alpha: float = 0.01
    closeness: float = 1 / 3


@dataclass(frozen=True)
class Measured:
    """One build's repetitions and what the test made of them."""

    build: str
    role: str  # good_end, bad_end or probe
    outcome: str  # good, bad, unresolved or failed
    values_us: tuple[float, ...]
    p_slower_than_good: float | None = None
    p_faster_than_bad: float | None = None
    position: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class Verdict:
    """How the bisection ended. `last_good` and `first_bad` bound the first bad build (after
    `last_good`, at or before `first_bad`): adjacent builds for a culprit."""

    state: str  # culprit, inconclusive or failed
    last_good: str
    first_bad: str
    probes: int
    max_probes: int
    reason: str
    measured: tuple[Measured, ...]


def max_probes(n_builds: int) -> int:
    """The bound on probes for `n_builds` builds, both ends included: ceil(log2 n) + 1."""
    return math.ceil(math.log2(n_builds)) + 1


def time_bound_s(matrix: Matrix) -> int:
    """How long a bisection over the matrix's whole catalog may take: every repetition it may make
    (both ends and the probes, each up to max_repetitions), each within its job's timeout."""
    timeout = max([matrix.timeout_s] + [o.timeout_s or 0 for o in matrix.overrides]) + matrix.kill_grace_s
    runs = (2 + max_probes(max(2, len(matrix.builds)))) * matrix.bisection.max_repetitions
    return runs * (timeout + OVERHEAD_PER_RUN_S)


@dataclass(frozen=True)
class Noise:
    """The spread of ln(value) between repetitions of one build, pooled over every build measured
    so far (the same job on the same node: only the build differs), with its degrees of freedom."""

    variance: float
    df: int


def _logs(values: Sequence[float]) -> np.ndarray:
    return np.log(np.asarray(values, dtype=float))


def noise(groups: Iterable[Sequence[float]]) -> Noise:
    """The pooled within-build variance of ln(value) of `groups` (each a build's repetitions)."""
    logs = [_logs(g) for g in groups if len(g)]
    df = sum(len(x) - 1 for x in logs)
    squares = sum(float(((x - x.mean()) ** 2).sum()) for x in logs)
    return Noise(squares / df if df else 0.0, df)


def _t(a: Sequence[float], b: Sequence[float], spread: Noise, shift: float) -> float | None:
    """Student's t of mean ln(a) - mean ln(b) - shift with the pooled noise; None without noise."""
    if spread.df < 1 or spread.variance <= 0:
        return None
    difference = float(_logs(a).mean() - _logs(b).mean()) - shift
    return difference / math.sqrt(spread.variance * (1 / len(a) + 1 / len(b)))


def p_greater(a: Sequence[float], b: Sequence[float], spread: Noise, shift: float = 0.0) -> float:
    """One-sided p-value that ln(a) exceeds ln(b) by more than `shift` on average."""
    # scipy.stats takes seconds to import: only a bisection needs it, not the DAG files that
    # import this module.
    from scipy import stats

    t = _t(a, b, spread, shift)
    # Without spread there is no statistic: nothing is significant.
    return 1.0 if t is None else float(stats.t.sf(t, spread.df))


def p_less(a: Sequence[float], b: Sequence[float], spread: Noise, shift: float = 0.0) -> float:
    """One-sided p-value that ln(a) exceeds ln(b) by less than `shift` on average."""
    from scipy import stats

    t = _t(a, b, spread, shift)
    return 1.0 if t is None else float(stats.t.cdf(t, spread.df))


def judge_ends(good: Sequence[float], bad: Sequence[float], change_pct: float, spread: Noise,
               settings: Settings) -> tuple[str, float, float]:
    """("differ" | "same" | "unresolved", p that the bad end is slower, p that it is slower by less
    than `change_pct`, the alert's change)."""
    p_differ = p_greater(bad, good, spread)
    p_smaller = p_less(bad, good, spread, shift=math.log1p(change_pct / 100))
    if p_differ < settings.alpha:
        return "differ", p_differ, p_smaller
    if p_smaller < settings.alpha:
        return "same", p_differ, p_smaller
    return UNRESOLVED, p_differ, p_smaller


def classify(values: Sequence[float], good: Sequence[float], bad: Sequence[float], spread: Noise,
             settings: Settings) -> tuple[str, float, float, float]:
    """(good | bad | unresolved, p slower than the good end, p faster than the bad end, position)."""
    xm, xg, xb = _logs(values), _logs(good), _logs(bad)
    position = float((xm.mean() - xg.mean()) / (xb.mean() - xg.mean()))
    p_bad, p_good = p_greater(values, good, spread), p_less(values, bad, spread)
    if p_bad < settings.alpha and position >= 1 - settings.closeness:
        return BAD, p_bad, p_good, position
    if p_good < settings.alpha and position <= settings.closeness:
        return GOOD, p_bad, p_good, position
    return UNRESOLVED, p_bad, p_good, position


def _change(good: Sequence[float], bad: Sequence[float]) -> float:
    """The bad end against the good end, in % (ratio of geometric means)."""
    return 100 * math.expm1(float(_logs(bad).mean() - _logs(good).mean()))


def bisect(builds: Sequence[str], measure: Callable[[str, int], list[float]], change_pct: float,
           settings: Settings = Settings(), on_measured: Callable[[Measured], None] = lambda m: None) -> Verdict:
    """Find the first bad build of `builds` (oldest first: the last good build, the builds in
    between, the first bad build). `change_pct` is the alert's change. Each build's outcome is
    passed to `on_measured` as soon as it is decided."""
    if len(builds) < 2 or len(set(builds)) != len(builds):
        raise ValueError(f"bisect needs two or more distinct builds, not {list(builds)}")
    bound = max_probes(len(builds))
    measured: list[Measured] = []

    def record(item: Measured) -> None:
        measured.append(item)
        on_measured(item)

    def verdict(state: str, lo: int, hi: int, probes: int, reason: str) -> Verdict:
        return Verdict(state, builds[lo], builds[hi], probes, bound, reason, tuple(measured))

    good_end, bad_end = builds[0], builds[-1]
    good: list[float] = []
    bad: list[float] = []
    # Every build's repetitions so far: the noise between repetitions is pooled over all of them.
    measured_values = {good_end: good, bad_end: bad}
    role = "good_end"
    try:
        while True:
            role = "good_end"
            good += measure(good_end, 1)
            role = "bad_end"
            bad += measure(bad_end, 1)
            if len(good) < settings.repetitions:
                continue
            state, p_differ, p_smaller = judge_ends(good, bad, change_pct, noise(measured_values.values()), settings)
            if state != UNRESOLVED or len(good) >= settings.max_repetitions:
                break
    except BuildFailed as exc:
        failed = good_end if role == "good_end" else bad_end
        if role == "bad_end":
            record(Measured(good_end, "good_end", UNRESOLVED, tuple(good)))
        record(Measured(failed, role, "failed", tuple(good if role == "good_end" else bad), error=str(exc)))
        end = "good" if role == "good_end" else "bad"
        return verdict(FAILED, 0, len(builds) - 1, 0,
                       f"the {end} end {failed} failed to run: {exc}; nothing was bisected")
    observed = _change(good, bad)
    if state != "differ":
        record(Measured(good_end, "good_end", UNRESOLVED, tuple(good)))
        record(Measured(bad_end, "bad_end", UNRESOLVED, tuple(bad), p_slower_than_good=p_differ))
        if state == "same":
            reason = (f"the regression does not reproduce between {good_end} and {bad_end}: the bad end measures "
                      f"{observed:+.1f}% against the good end over {len(good)} repetitions each, significantly less "
                      f"than the alert's {change_pct:+.1f}% (p = {p_smaller:.2g})")
        else:
            reason = (f"{len(good)} repetitions of each end cannot tell {good_end} from {bad_end}: the bad end measures "
                      f"{observed:+.1f}% against the good end (p = {p_differ:.2g}, not below alpha {settings.alpha})")
        return verdict(INCONCLUSIVE, 0, len(builds) - 1, 0, reason)
    record(Measured(good_end, "good_end", GOOD, tuple(good)))
    record(Measured(bad_end, "bad_end", BAD, tuple(bad), p_slower_than_good=p_differ))

    lo, hi, probes = 0, len(builds) - 1, 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        probes += 1
        name = builds[mid]
        values: list[float] = []
        measured_values[name] = values
        try:
            values += measure(name, settings.repetitions)
            outcome, p_bad, p_good, position = classify(values, good, bad, noise(measured_values.values()), settings)
            while outcome == UNRESOLVED and len(values) < settings.max_repetitions:
                values += measure(name, 1)
                outcome, p_bad, p_good, position = classify(values, good, bad, noise(measured_values.values()),
                                                            settings)
        except BuildFailed as exc:
            record(Measured(name, "probe", "failed", tuple(values), error=str(exc)))
            return verdict(FAILED, lo, hi, probes,
                           f"{name} failed to run: {exc}; the first bad build is after {builds[lo]}, "
                           f"at or before {builds[hi]}")
        record(Measured(name, "probe", outcome, tuple(values), p_bad, p_good, position))
        if outcome == UNRESOLVED:
            both = p_bad < settings.alpha and p_good < settings.alpha
            why = ("part of the regression came with it, the rest later" if both
                   else "the repetitions cannot tell which end it is closer to")
            return verdict(INCONCLUSIVE, lo, hi, probes,
                           f"{name} lies {position:.0%} of the way from {good_end}'s level to {bad_end}'s after "
                           f"{len(values)} repetitions (slower than the good end: p = {p_bad:.2g}; faster than the "
                           f"bad end: p = {p_good:.2g}): {why}; the first bad build is after {builds[lo]}, "
                           f"at or before {builds[hi]}")
        lo, hi = (mid, hi) if outcome == GOOD else (lo, mid)
    return verdict(CULPRIT, lo, hi, probes,
                   f"{builds[hi]} is the first bad build: {builds[lo]} measures as the good end, {builds[hi]} as "
                   f"the bad end ({observed:+.1f}% between the ends, p = {p_differ:.2g})")
