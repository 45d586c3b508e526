"""Regression detection on one series: pure functions on arrays, no database.

A series gives, per night, the slowest rank's mean time (a collective waits for its slowest rank)
and the standard error of that mean inside the night (from the iterations' spread, when
`--iter_stats` was on). The detector scans the nights in order, as the nightly run sees them:

* the baseline is the nights since the last change, its level a trimmed mean; the noise between
  nights is estimated robustly from the successive differences of the recent history (a level
  shift or a spike moves only one or two of them); each night's deviation from the baseline is
  scaled by that noise combined with the night's own standard error;
* a change is a *sustained* shift: the mean deviation of the last L nights (L = 2 ..
  `max_window`), each clipped to ± `clip`, must exceed `threshold` times its own spread (the
  window's noise and the uncertainty of the baseline's median). Clipping bounds what one night
  can contribute, so a one-night spike or an outlier night never makes a change alone; at least
  two nights always do;
* the change point is the window start with the strongest evidence; the baseline then restarts
  there, so each change is reported once, with its size in %, its confidence, and the last good
  and first bad nights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Params:
    threshold: float = 4.0      # evidence, in standard deviations of the window's mean deviation
    clip: float = 4.0           # the most one night can count, in noise units
    min_night: float = 1.0      # each night of a change (but one, in windows over 3) moves this much
    max_window: int = 7         # nights after a change within which it must be found
    min_baseline: int = 5       # nights of baseline (since the last change) before anything is tested
    min_history: int = 14       # nights of history before anything is tested (to know the noise)
    baseline_window: int = 21   # nights of baseline used at most for its level
    noise_window: int = 60      # nights used at most to estimate the noise between nights
    min_noise: float = 0.002    # floor of the between-night noise, as a fraction of the level
    min_change: float = 0.005   # changes smaller than this fraction are not reported


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


def _noise(history: np.ndarray, level: float, params: Params) -> float:
    """Between-night noise from successive differences (a level shift moves only one of them):
    their standard deviation once differences beyond 3 MADs (spikes, shifts) are set aside."""
    if len(history) < 3:
        return params.min_noise * level
    diffs = np.diff(history)
    centre = float(np.median(diffs))
    mad = float(np.median(np.abs(diffs - centre))) * MAD_TO_SIGMA
    kept = diffs[np.abs(diffs - centre) <= 3.0 * mad] if mad > 0 else diffs
    sigma = float(np.std(kept)) / math.sqrt(2.0) if len(kept) > 1 else mad / math.sqrt(2.0)
    return max(sigma, params.min_noise * level)


def _level(baseline: np.ndarray) -> float:
    """The baseline's trimmed mean (a fifth, and at least one night, off each end): nearly as
    precise as the mean, unmoved by a spike."""
    ordered = np.sort(baseline)
    cut = max(1, int(len(ordered) * 0.2)) if len(ordered) >= 3 else 0
    return float(ordered[cut:len(ordered) - cut].mean())


def _confidence(score: float, tests: int) -> float:
    """One minus the (Bonferroni-adjusted) one-sided normal tail of the evidence."""
    tail = 0.5 * math.erfc(score / math.sqrt(2.0))
    return max(0.0, 1.0 - tail * tests)


def detect(values: Sequence[float], stderr: Sequence[float] | None = None, params: Params = Params()) -> list[Change]:
    """The sustained changes in a series of nightly values (oldest first)."""
    x = np.asarray(values, dtype=float)
    se = np.zeros_like(x) if stderr is None else np.nan_to_num(np.asarray(stderr, dtype=float))
    changes: list[Change] = []
    start = 0
    t = start + params.min_baseline + 1
    while t < len(x):
        best: tuple[float, int] | None = None
        for window in range(2, params.max_window + 1):
            first_bad = t - window + 1
            if first_bad - start < params.min_baseline or first_bad < params.min_history:
                break
            base = x[max(start, first_bad - params.baseline_window):first_bad]
            level = _level(base)
            sigma = _noise(x[max(0, first_bad - params.noise_window):first_bad], level, params)
            z = (x[first_bad:t + 1] - level) / np.sqrt(sigma ** 2 + se[first_bad:t + 1] ** 2)
            # The mean clipped deviation, against its spread: the window's own noise plus the
            # uncertainty of the baseline's level (about 1.2 sigma^2 / n for this trimmed mean).
            spread = math.sqrt(1.0 / window + 1.2 / len(base))
            for sign in (1.0, -1.0):
                signed = np.sort(sign * z)
                evidence = float(np.clip(signed, -params.clip, params.clip).mean()) / spread
                shift = sign * (float(np.median(x[first_bad:t + 1])) - level) / level
                # Sustained: every night of a short window (all but one of a longer one) moved.
                consistent = signed[0 if window <= 3 else 1] > params.min_night
                if evidence > params.threshold and consistent and shift >= params.min_change:
                    if best is None or evidence > best[0]:
                        best = (evidence * sign, first_bad)
        if best is None:
            t += 1
            continue
        signed, first_bad = best
        level = _level(x[max(start, first_bad - params.baseline_window):first_bad])
        after = float(np.median(x[first_bad:t + 1]))
        changes.append(Change(
            first_bad=first_bad, last_good=first_bad - 1, detected_at=t,
            direction="regression" if signed > 0 else "improvement",
            change_pct=100.0 * (after - level) / level,
            confidence=_confidence(abs(signed), 2 * (params.max_window - 1)),
            baseline=level, after=after,
        ))
        start = first_bad
        t = start + params.min_baseline + 1
    return changes
