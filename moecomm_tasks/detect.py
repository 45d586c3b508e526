"""Regression detection on one series: pure functions on arrays, no database.

A series gives, per night, the slowest rank's median time (a collective waits for its slowest
rank; the median is unmoved by outlier iterations) and, with `--iter_stats`, two things from the
iterations themselves: the standard error of that median, from how far the median sits above the
fastest iteration (slow outlier iterations inflate the standard deviation but do not move the
median, so the faster half measures its uncertainty; `median_stderr`), and the night's *shape*,
the ranks' mean log ratio of median to fastest iteration, in which the night's level cancels.
The detector scans the nights in order, as the nightly run sees them:

* the baseline is the nights since the last change: its level a trimmed mean, its noise between
  nights the biweight spread of those nights (or, with fewer than `direct_noise_nights`, a robust
  spread of successive differences over the recent history, which a level shift barely moves);
  a night whose own standard error is larger than usual counts for less;
* a night whose median moved away from its own fastest iterations (its shape beyond `shape_gate`
  robust standard deviations of the baseline's shapes: some of its iterations ran slow, the rest
  did not, as when a night is bimodal) is an outlier night and is left out of the baseline and of
  the windows, unless four or more of a window's nights, and three quarters of them, are like it:
  a shape that persists is a change, not an outlier. A real step moves every iteration, the fastest too, and keeps the shape;
* a change is a *sustained* shift: the mean deviation of the last L nights (L = 2 ..
  `max_window`), each clipped to +/- `clip` noise units, must exceed a threshold in units of its
  own spread (the window's noise and the uncertainty of the baseline's level); short windows need
  more evidence than long ones. Nights far from the rest of their window (spikes, outlier nights)
  are left out, and a window whose nights are all far from the baseline needs three of them: one
  or two nights far out are as likely spikes as a step. So one-night spikes never alarm;
* that evidence is measured against the baseline's own nights, clipped the same way: their
  clipped mean and spread (never narrower than a normal's, shrunk towards it by `prior_nights`),
  without the nights a window would leave out (beyond the gate: spikes). A baseline with a tail
  of slow nights (the slowest of many ranks) or a second mode counts a window like the nights it
  already had as no change; and where its nights are right-skewed, its nights and the window's
  are first made about normal for that skewness (shrunk by `skew_prior`): a high night counts
  less where high nights are common;
* an improvement pages nobody and needs `improvement_extra` more evidence than a regression;
* in a group of series measured in the same runs (`detect_group`: one job's sizes and ops), a
  shift that the group's common move (the members' median move that night) shares at least
  half of must be significant on that common move as well: a shared noisy stretch that pushes
  one member over the line is not reported, a whole backend's regression still is, and a change
  of one size alone is judged as before;
* the change is then located at the night after which the nights sit furthest from the
  baseline, reported once with its size in %, its confidence, and the last good and first bad
  nights; the baseline restarts there.

Parameters are tuned on the evaluation harnesses (tests/benchmarks/eval_detect.py and
eval_shapes.py, docs/detector-evaluation.md), not on any test's data.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

MAD_TO_SIGMA = 1.4826
# Clipped nights are less skewed than the nights (a Gumbel's 1.16 is 0.43 clipped at 2.2 noise
# units); the transform that makes them symmetric takes about 1.5 times their skewness (1.5 for a
# Gumbel, the slowest of 16 exponentials, of 16 or of 4 normals; 2.3 for an exponential).
CLIPPED_SKEW_GAIN = 1.5


@dataclass(frozen=True)
class Params:
    threshold: float = 3.1      # evidence needed over `max_window` nights, in standard deviations
    short_extra: float = 0.45   # more evidence needed over 2 nights (linear in between)
    clip: float = 2.2           # the most one night can count, in noise units
    gate: float = 7.0           # nights this far from the rest of their window are left out
    min_night: float = 1.0      # in windows of 2-3 nights, every night must move at least this much
    max_window: int = 7         # nights after a change within which it must be found
    min_baseline: int = 5       # nights of baseline (since the last change) before anything is tested
    min_history: int = 21       # nights of history before anything is tested (to know the noise)
    baseline_window: int = 60   # nights of baseline used at most for its level
    noise_window: int = 60      # nights used at most to estimate the noise between nights
    direct_noise_nights: int = 20  # with this many nights since the last change, noise is their spread
    min_noise: float = 0.002    # floor of the between-night noise, as a fraction of the level
    min_change: float = 0.005   # changes smaller than this fraction are not reported
    shape_gate: float = 3.5     # nights whose shape is this far above the baseline's are outlier nights
    min_shape_nights: int = 10  # baseline nights with a known shape needed before shapes are judged
    shape_change_nights: int = 4  # outlier nights by shape in a window that make a change of shape
    shape_change_share: float = 0.75  # share of a window's nights that must be odd by shape to be a change of shape
    group_share: float = 0.5    # a member's shift the group shares this much of must be the group's too
    group_relief: float = 0.6   # the group's common move needs this much less evidence than a member
    group_min_members: int = 3  # members a group needs (on a night) before its common move is used
    improvement_extra: float = 1.0  # more evidence needed for an improvement than for a regression
    studentize: bool = True     # the window's clipped mean against the baseline's clipped mean and spread
    one_sided_spread: bool = False  # regressions against the baseline's spread above it, improvements below
    prior_nights: int = 10      # weight, in nights, of the normal's clipped spread in the baseline's
    skew_prior: float = 10.0    # weight, in nights, of no skew against the baseline's (0: nights not normalised for skew)
    skew_max: float = 1.2       # the most skewness normalised for (and never 3 / clip: the transform turns there)


@dataclass(frozen=True)
class Change:
    first_bad: int              # index of the first night after the change
    last_good: int              # index of the last night before it
    detected_at: int            # index of the night whose run found it
    direction: str              # "regression" (slower) or "improvement" (faster)
    change_pct: float
    confidence: float
    baseline: float
    after: float


def median_stderr(median: Sequence[float], fastest: Sequence[float], iterations: int = 200) -> np.ndarray:
    """The standard error of a night's median iteration time from the spread of its faster half:
    the iterations' standard deviation estimated as (median - fastest) over the expected gap
    between the median and the minimum of that many normal draws (Blom's approximation), times
    sqrt(pi/2) / sqrt(iterations). Slow outlier iterations, which dominate the standard deviation,
    move neither the median nor the fastest iteration. NaN where either is unknown."""
    gap = -NormalDist().inv_cdf((1.0 - 0.375) / (iterations + 0.25))
    spread = (np.asarray(median, dtype=float) - np.asarray(fastest, dtype=float)) / gap
    return math.sqrt(math.pi / 2.0) * np.maximum(spread, 0.0) / math.sqrt(iterations)


def _shape_limit(reference: np.ndarray, params: Params) -> float:
    """The shape above which a night is an outlier night: `shape_gate` robust standard deviations
    (MAD) above the reference nights' median shape; infinite (no night is) while fewer than
    `min_shape_nights` of them have a known shape, or their shapes do not vary."""
    known = reference[np.isfinite(reference)]
    if len(known) < params.min_shape_nights:
        return math.inf
    centre = float(np.median(known))
    spread = float(np.median(np.abs(known - centre))) * MAD_TO_SIGMA
    return centre + params.shape_gate * spread if spread > 0 else math.inf


def _usual_nights(x: np.ndarray, shape: np.ndarray, nights: slice, params: Params) -> tuple[np.ndarray, float]:
    """The values of `nights` without their outlier nights by shape, and the shape limit that
    judged them (nights of unknown shape are kept)."""
    limit = _shape_limit(shape[nights], params)
    return x[nights][~(shape[nights] > limit)], limit


def _noise(history: np.ndarray, level: float, params: Params) -> float:
    """Between-night noise from successive differences (a level shift moves only one of them):
    their standard deviation once differences beyond 3 MADs (spikes, shifts) are set aside. It
    includes the nights' usual within-night error."""
    if len(history) < 3:
        return params.min_noise * level
    diffs = np.diff(history)
    centre = float(np.median(diffs))
    mad = float(np.median(np.abs(diffs - centre))) * MAD_TO_SIGMA
    kept = diffs[np.abs(diffs - centre) <= 3.0 * mad] if mad > 0 else diffs
    sigma = float(np.std(kept)) / math.sqrt(2.0) if len(kept) > 1 else mad / math.sqrt(2.0)
    return max(sigma, params.min_noise * level)


def _biweight_sigma(values: np.ndarray) -> float:
    """Tukey's biweight midvariance, as a standard deviation: nearly as efficient as the standard
    deviation on normal data, unmoved by a few spikes or bimodal nights."""
    centre = float(np.median(values))
    mad = float(np.median(np.abs(values - centre)))
    if mad == 0:
        return 0.0
    u = (values - centre) / (9.0 * mad)
    inside = np.abs(u) < 1.0
    d, w = (values - centre)[inside], u[inside] ** 2
    denominator = float(np.sum((1.0 - w) * (1.0 - 5.0 * w)))
    return math.sqrt(len(values) * float(np.sum(d ** 2 * (1.0 - w) ** 4))) / abs(denominator)


def _level(baseline: np.ndarray) -> float:
    """The baseline's trimmed mean (a fifth, and at least one night, off each end): nearly as
    precise as the mean, unmoved by a spike."""
    ordered = np.sort(baseline)
    cut = max(1, int(len(ordered) * 0.2)) if len(ordered) >= 3 else 0
    return float(ordered[cut:len(ordered) - cut].mean())


def _drop_outlier_nights(z: np.ndarray, params: Params) -> np.ndarray | None:
    """The window's nights without those unlike the rest of it (further than the gate from the
    window's median: a spike, an outlier night), or None when what is left cannot tell a step
    from spikes (fewer than three nights, some of them beyond the gate: two nights far out are as
    likely two spikes as a step, and a step that large shows on every night after it)."""
    if len(z) < 2:
        return None
    kept = z[np.abs(z - np.median(z)) <= params.gate]
    if len(kept) < 2 or (len(kept) < 3 and np.any(np.abs(kept) > params.gate)):
        return None
    return kept


def _left_out_by_shape(odd: np.ndarray, params: Params) -> bool:
    """Whether a window's outlier nights by shape (`odd`) are left out of it: they are, unless
    they are a change of shape: at least `shape_change_nights`, and most of the window (a lasting
    change shows on the nights after it; odd nights among usual ones, or three in a row, are what
    a series with one bimodal night in ten shows every few years of nights)."""
    return bool(odd.any()) and not (odd.sum() >= params.shape_change_nights and odd.mean() >= params.shape_change_share)


def _locate(x: np.ndarray, form: np.ndarray, start: int, t: int, found: int, sign: float, sigma: float,
            params: Params) -> int:
    """Where the change found by the window starting at `found` begins: the most likely night for
    a step of the size that window shows (its median deviation d), i.e. the night k among those
    the windows reach that maximises the sum over nights k..t of (deviation - d/2), unclipped but
    without spikes (nights beyond the gate above d) and, as the windows judge them, without
    outlier nights by shape (unless most of k..t is odd by shape: a change of shape), which are
    not candidates either (unless none is left: then `found`). Clipping, which keeps spikes from
    raising alarms, would otherwise favour windows that reach back over the last good nights."""
    earliest = max(start + params.min_baseline, params.min_history, t - params.max_window + 1)
    base, shape_limit = _usual_nights(x, form, slice(max(start, earliest - params.baseline_window), earliest), params)
    level = _level(base)
    shift = max(float(np.median(sign * (x[found:t + 1] - level))), 0.0)
    best_score, best_at = -math.inf, found
    for first_bad in range(earliest, t):
        deviation = sign * (x[first_bad:t + 1] - level)
        odd = form[first_bad:t + 1] > shape_limit
        if _left_out_by_shape(odd, params):
            if odd[0]:
                continue  # a change is not placed at a night left out
            deviation = deviation[~odd]
        kept = deviation[deviation <= params.gate * sigma + shift]  # no spikes
        score = float(np.sum(kept - shift / 2.0))
        if score > best_score:
            best_score, best_at = score, first_bad
    return best_at


def _normalise(z: np.ndarray, skew: float, params: Params) -> np.ndarray:
    """Nights' deviations (noise units) as they count: clipped to +/- `clip` and, for a baseline
    whose nights are right-skewed (`skew` > 0, from `_skewness`), mapped by the inverse
    Cornish-Fisher expansion z - skew/6 (z^2 - 1), which makes clipped nights of that skewness
    about symmetric: a night far up (beyond 1 noise unit) counts less where such nights are
    common, one far down counts more; on a skewed baseline no night within the gate counts more
    than what the transform leaves of the clip. Nights beyond the gate (in a window that kept
    them: a large step shows on all its nights) count the whole clip, as the baseline's nights
    that far out are not its tail."""
    clipped = np.clip(z, -params.clip, params.clip)
    if skew:  # monotone on the clip's range while skew < 3 / clip; no night counts more than the clip
        clipped = np.clip(clipped - (skew / 6.0) * (clipped ** 2 - 1.0), -params.clip, params.clip)
    return np.where(np.abs(z) > params.gate, np.sign(z) * params.clip, clipped)


def _skewness(clipped: np.ndarray, params: Params) -> float:
    """The skewness `_normalise` corrects for: the clipped nights' sample skewness times
    CLIPPED_SKEW_GAIN, shrunk towards none with the weight of `skew_prior` nights and kept within
    0..`skew_max` (and below 3 / clip, where the transform stops being monotone). Clipped, one
    night far out (4 to 7 noise units, within the gate) barely moves it; two or three such nights
    in a normal baseline still look like a tail of slow nights (docs/detector-evaluation.md).
    A left-skewed baseline is not normalised (its high nights would count more); 0 with
    `skew_prior` 0 or fewer than three nights."""
    if not params.skew_prior or len(clipped) < 3:
        return 0.0
    deviations = clipped - clipped.mean()
    sd = math.sqrt(float(np.mean(deviations ** 2)))
    if sd == 0:
        return 0.0
    shrink = len(clipped) / (len(clipped) + params.skew_prior)
    skew = CLIPPED_SKEW_GAIN * float(np.mean(deviations ** 3)) / sd ** 3 * shrink
    return min(max(skew, 0.0), params.skew_max, 0.99 * 3.0 / params.clip)


def _baseline_clipped(base: np.ndarray, level: float, sigma: float, params: Params) -> tuple[float, float, float, float]:
    """Where the baseline's own nights put the clipped mean, and their clipped spread relative to
    a normal's above and below it, each shrunk towards the normal's with the weight of
    `prior_nights` and never narrower: (0, 1, 1, 0) for nights as the noise model says; a skewed or
    bimodal baseline (a tail of slow nights, a second mode) widens the side it reaches, so that
    nights like those it already had are not taken for a change. With `one_sided_spread` off,
    both sides get the spread of all the nights. Also the baseline's skewness, by which its
    nights and the window's are normalised (`_normalise`). Nights further than the gate from the
    baseline's median (spikes, outlier nights) are left out, as a window leaves them out: counted
    here at the clip, they would make every window need more evidence."""
    if not params.studentize or len(base) < 2:
        return 0.0, 1.0, 1.0, 0.0
    z = (base - level) / sigma
    z = z[np.abs(z - np.median(z)) <= params.gate]
    if len(z) < 2:
        return 0.0, 1.0, 1.0, 0.0
    skew = _skewness(np.clip(z, -params.clip, params.clip), params)
    clipped = _normalise(z, skew, params)
    normal_var = _CLIPPED_NORMAL_VAR.get(params.clip) or _clipped_normal_var(params.clip)
    centre = float(clipped.mean())
    deviations = clipped - centre
    if params.one_sided_spread:  # each side's semi-variance, doubled: the variance were it symmetric
        sides = (2.0 * float(np.sum(np.maximum(deviations, 0.0) ** 2)),
                 2.0 * float(np.sum(np.minimum(deviations, 0.0) ** 2)))
    else:
        sides = (float(np.sum(deviations ** 2)),) * 2
    up, down = (math.sqrt(max((params.prior_nights * normal_var + side) / (params.prior_nights + len(clipped) - 1)
                              / normal_var, 1.0)) for side in sides)
    return centre, up, down, skew


def _clipped_normal_var(clip: float) -> float:
    """The variance of a standard normal clipped to +/- clip."""
    nd = NormalDist()
    tail = 1.0 - nd.cdf(clip)
    inside = (1.0 - 2.0 * tail) - 2.0 * clip * nd.pdf(clip)  # E[z^2; |z| < clip]
    value = inside + 2.0 * tail * clip ** 2
    _CLIPPED_NORMAL_VAR[clip] = value
    return value


_CLIPPED_NORMAL_VAR: dict[float, float] = {}


def _group_agrees(logs: np.ndarray, since: slice, first_bad: int, t: int, shift: float, needed: float,
                  params: Params) -> bool:
    """Whether a member's candidate change (nights first_bad..t, `shift` signed as a fraction of
    its level, positive in the change's direction) stands against its group's common move: it
    does when the group moved less than `group_share` of it over those nights (the member's own
    change), or when the common move itself passes the threshold `needed` less `group_relief`,
    tested as a series is (clipped mean over its baseline nights, in units of their noise): the
    member's own evidence is there already, the group's says whether the group shares it."""
    moves = _common_move(logs, since, first_bad, t, params)
    before, after = moves[:first_bad - since.start], moves[first_bad - since.start:]
    before, after = before[np.isfinite(before)], after[np.isfinite(after)]
    if len(before) < params.min_baseline or len(after) < 2:
        return True  # too little of the group on these nights to tell
    direction = math.copysign(1.0, shift)
    level = _level(before)
    moved = direction * (float(np.median(after)) - level)
    if moved < params.group_share * abs(shift):
        return True
    if len(before) >= params.direct_noise_nights:
        sigma = max(_biweight_sigma(before), params.min_noise)
    else:
        sigma = _noise(before, 1.0, params)
    z = direction * (after - level) / sigma
    evidence = float(np.clip(z, -params.clip, params.clip).mean()) / math.sqrt(1.0 / len(z) + 1.2 / len(before))
    return evidence > needed - params.group_relief


def _baseline(x: np.ndarray, form: np.ndarray, se: np.ndarray, since: slice, first_bad: int,
              params: Params) -> tuple:
    """What a window starting at `first_bad` is measured against, from the nights before it alone:
    the baseline's usual nights and shape limit, its level, the noise between nights, the usual
    squared standard error of a night, and the baseline's clipped centre, spreads and skewness
    (`_baseline_clipped`)."""
    base, shape_limit = _usual_nights(x, form, since, params)
    level = _level(base)
    recent = slice(max(0, first_bad - params.noise_window), first_bad)
    if len(base) >= params.direct_noise_nights:  # enough nights since the last change
        sigma = max(_biweight_sigma(base), params.min_noise * level)
    else:
        sigma = _noise(_usual_nights(x, form, recent, params)[0], level, params)
    # A night less certain than usual (its iterations spread more) weighs less.
    usual = float(np.median(se[recent] ** 2))
    return base, shape_limit, level, sigma, usual, _baseline_clipped(base, level, sigma, params)


def _confidence(score: float, tests: int) -> float:
    """One minus the (Bonferroni-adjusted) one-sided normal tail of the evidence."""
    tail = 0.5 * math.erfc(score / math.sqrt(2.0))
    return max(0.0, 1.0 - tail * tests)


def detect(values: Sequence[float], stderr: Sequence[float] | None = None, params: Params = Params(),
           shape: Sequence[float] | None = None, start: int = 0, first_test: int = 0,
           common: np.ndarray | None = None) -> list[Change]:
    """The sustained changes in a series of nightly values (oldest first), given each night's
    standard error (`median_stderr`) and shape where known (NaN or None where not).

    `common` (from `detect_group`): the group's log night values on this series' nights (nights x
    members, NaN where unknown), from which the group's common move is taken. A shift the group shares at least `group_share` of must also be
    significant on the group's common move: one that only this member's own noise carried over
    the line is not reported, a whole group's change is (its common move, averaged over the
    members, is less noisy than any member).

    Resuming a scan: `start` is where the baseline starts (the first bad night of the last change
    found, 0 if none) and `first_test` the first night not tested yet. A scan resumed after night
    n - 1 with the same earlier nights finds what a full scan finds after night n - 1."""
    x = np.asarray(values, dtype=float)
    se = np.zeros_like(x) if stderr is None else np.nan_to_num(np.asarray(stderr, dtype=float))
    form = np.full(len(x), np.nan) if shape is None else np.asarray(shape, dtype=float)
    logs = None if common is None else np.asarray(common, dtype=float)
    changes: list[Change] = []
    baselines: dict[tuple[int, int], tuple] = {}
    t = max(start + params.min_baseline + 1, first_test)
    while t < len(x):
        best: tuple[float, int] | None = None
        for window in range(2, params.max_window + 1):
            first_bad = t - window + 1
            if first_bad - start < params.min_baseline or first_bad < params.min_history:
                break
            since = slice(max(start, first_bad - params.baseline_window), first_bad)
            if (start, first_bad) not in baselines:  # each baseline serves up to max_window - 1 nights
                baselines[(start, first_bad)] = _baseline(x, form, se, since, first_bad, params)
            base, shape_limit, level, sigma, usual, (centre, scale_up, scale_down, skew) = baselines[(start, first_bad)]
            z = (x[first_bad:t + 1] - level) / np.sqrt(sigma ** 2 + np.maximum(se[first_bad:t + 1] ** 2 - usual, 0.0))
            odd = form[first_bad:t + 1] > shape_limit
            if _left_out_by_shape(odd, params):
                z = z[~odd]
            z = _drop_outlier_nights(z, params)
            if z is None:
                continue
            # The mean clipped (and normalised) deviation, against its spread: the window's own noise plus the
            # uncertainty of the baseline's level (about 1.2 sigma^2 / n for this trimmed mean).
            spread = math.sqrt(1.0 / len(z) + 1.2 / len(base))
            window_mean = float(_normalise(z, skew, params).mean()) - centre
            for sign in (1.0, -1.0):
                signed = sign * z
                evidence = sign * window_mean / (spread * (scale_up if sign > 0 else scale_down))
                shift = sign * (float(np.median(x[first_bad:t + 1])) - level) / level
                # Sustained: every night of a short window moved (longer ones rest on the clipping).
                consistent = len(z) > 3 or float(signed.min()) > params.min_night
                needed = params.threshold + params.short_extra * (params.max_window - window) / (params.max_window - 2)
                if sign < 0:
                    needed += params.improvement_extra
                if (evidence > needed and consistent and shift >= params.min_change
                        and (logs is None or _group_agrees(logs, since, first_bad, t, sign * shift, needed, params))):
                    if best is None or evidence > best[0]:
                        best = (evidence * sign, first_bad, sigma)
        if best is None:
            t += 1
            continue
        evidence, direction = abs(best[0]), math.copysign(1.0, best[0])
        first_bad = _locate(x, form, start, t, best[1], direction, best[2], params)
        since = slice(max(start, first_bad - params.baseline_window), first_bad)
        level = _level(_usual_nights(x, form, since, params)[0])
        after = float(np.median(x[first_bad:t + 1]))
        changes.append(Change(
            first_bad=first_bad, last_good=first_bad - 1, detected_at=t,
            direction="regression" if direction > 0 else "improvement",
            change_pct=100.0 * (after - level) / level,
            confidence=_confidence(evidence, 2 * (params.max_window - 1)),
            baseline=level, after=after,
        ))
        start = first_bad
        t = start + params.min_baseline + 1
    return changes


@dataclass(frozen=True)
class SeriesInput:
    """One series' nights as the detector sees them (oldest first): the night values, their
    standard errors and shapes (NaN where unknown), and the runs they came from, by which the
    members of a group line up night by night."""
    values: Sequence[float]
    stderr: Sequence[float] | None = None
    shape: Sequence[float] | None = None
    runs: Sequence[str] = ()
    start: int = 0        # resuming: see `detect`
    first_test: int = 0


def detect_group(members: dict, params: Params = Params()) -> dict:
    """The changes of every member of a group of series measured in the same runs (one job's
    sizes and ops: they share each night's noise), keyed as `members` is. Each member is scanned
    with its group's nights (`group_logs`), so that a shift the whole group shares is reported
    only when the group's common move is itself significant, and a shift of one member alone is
    judged as before."""
    logs = group_logs(members, params)
    return {key: detect(m.values, m.stderr, params, m.shape, m.start, m.first_test, logs[key])
            for key, m in members.items()}


def nights_before_testing(params: Params = Params()) -> int:
    """How many nights a series needs before `detect` tests any of them: the first bad night of
    a change must have `min_history` nights (and `min_baseline` of baseline) before it, and the
    shortest window is two nights, so the first tested night is the series' night number
    max(min_history, min_baseline) + 2. A series with fewer nights is never tested (and a
    change that moves every night far from the baseline needs one more night: `detect`)."""
    return max(params.min_history, params.min_baseline) + 2


def group_logs(members: dict, params: Params = Params()) -> dict:
    """Per member, its group's log night values on each of the member's nights: an array of
    (the member's nights) x (the group's members), NaN where a member did not measure that night.
    Members line up by `runs`; without runs, by position (all members the same length). None for
    every member when the group has fewer than `group_min_members`, or cannot be lined up.

    The common move is taken from this per candidate change, against each member's own baseline
    nights (`_common_move`): it depends only on nights a resumed scan reads, so a nightly scan of
    a series' tail finds what a scan of its whole history finds."""
    keys = list(members)
    none = {key: None for key in keys}
    if len(keys) < params.group_min_members:
        return none
    if all(len(members[k].runs) == 0 for k in keys):
        lengths = {len(members[k].values) for k in keys}
        if len(lengths) != 1:
            return none
        positions = {k: np.arange(len(members[k].values)) for k in keys}
        nights = len(members[keys[0]].values)
    else:
        if any(len(members[k].runs) != len(members[k].values) for k in keys):
            return none
        index: dict[str, int] = {}
        for k in keys:
            for run in members[k].runs:
                index.setdefault(run, len(index))
        positions = {k: np.fromiter((index[r] for r in members[k].runs), dtype=int, count=len(members[k].runs))
                     for k in keys}
        nights = len(index)
    table = np.full((nights, len(keys)), np.nan)
    for column, k in enumerate(keys):
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(np.asarray(members[k].values, dtype=float))
        logs[~np.isfinite(logs)] = np.nan
        table[positions[k], column] = logs
    return {k: table[positions[k]] for k in keys}


def _common_move(logs: np.ndarray, since: slice, first_bad: int, t: int, params: Params) -> np.ndarray:
    """The group's common move on the nights since.start..t, in log units: per night, the median
    over the members measured that night of their log value less their own median over the
    baseline nights `since`; NaN on nights fewer than `group_min_members` members measured."""
    rows = logs[since.start:t + 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a member without baseline nights: all-NaN
        reference = np.nanmedian(logs[since], axis=0)
    moved = rows - reference
    counted = np.isfinite(moved).sum(axis=1)
    moves = np.full(len(rows), np.nan)
    enough = counted >= params.group_min_members
    if enough.any():
        moves[enough] = np.nanmedian(moved[enough], axis=1)
    return moves
