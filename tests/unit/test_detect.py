"""The change detector on tiny literal series, with exact expected change indices."""

from __future__ import annotations

import math
from dataclasses import replace
from statistics import NormalDist

import numpy as np
import pytest

from moecomm_tasks.detect import (Params, SeriesInput, _normalise, _skewness, detect, detect_group, group_logs,
                                  median_stderr)
from moecomm_tasks.history import lookback

# Twenty-four nights around 100 µs with about 1% noise (the detector needs 21 before it tests).
FLAT = [100.0, 101.0, 99.0, 100.5, 99.5, 100.0, 101.2, 98.9, 100.3, 99.7, 100.8, 99.2, 100.1, 99.9, 100.4, 99.6,
        100.9, 99.1, 100.2, 99.8, 101.1, 98.8, 100.6, 99.4]
N = len(FLAT)
# Their shape (mean log ratio of median to fastest iteration): about 0.08, a little jitter.
SHAPE = [0.08 + 0.002 * ((i * 7) % 5 - 2) for i in range(N)]


def test_a_flat_series_has_no_change():
    assert detect(FLAT) == []


def test_a_sustained_step_is_found_at_its_first_night():
    series = FLAT + [105.2, 104.6, 105.5, 104.9]
    (change,) = detect(series)
    assert (change.last_good, change.first_bad) == (N - 1, N)
    assert change.detected_at == N + 2  # three nights confirm it: two could be two spikes
    assert change.direction == "regression" and 4.0 < change.change_pct < 6.0
    assert change.confidence > 0.99


def test_an_improvement_is_reported_as_such_once_five_nights_show_it():
    # An improvement pages nobody: it needs more evidence than a regression (`improvement_extra`).
    assert detect(FLAT + [94.8, 95.3, 95.1, 94.9]) == []
    (change,) = detect(FLAT + [94.8, 95.3, 95.1, 94.9, 95.2])
    assert change.direction == "improvement" and change.first_bad == N and change.change_pct < -4.0


def test_a_one_night_spike_is_ignored():
    assert detect(FLAT + [125.0, 100.2, 99.8, 100.5, 99.9]) == []


def test_two_steps_are_two_changes():
    # The second step has only the 7 nights since the first as its baseline, and an improvement
    # needs more evidence than a regression: nine nights show it, placed within two nights.
    series = FLAT + [105.0, 105.4, 104.8, 105.2, 105.1, 104.9, 105.3, 95.0, 95.2, 94.8, 95.1, 94.9, 95.3, 94.7,
                     95.1, 95.0]
    first, second = detect(series)
    assert (first.first_bad, first.direction) == (N, "regression")
    assert second.direction == "improvement" and abs(second.first_bad - (N + 7)) <= 2


def test_two_one_night_spikes_in_a_row_are_not_a_change():
    assert detect(FLAT + [125.0, 123.0, 100.2, 99.8, 100.5]) == []


def test_a_large_step_is_found_once_three_nights_show_it():
    (change,) = detect(FLAT + [125.0, 124.0, 126.0, 125.5])
    assert change.first_bad == N and change.detected_at == N + 2 and 20.0 < change.change_pct < 30.0


def test_a_quarantined_night_can_simply_be_left_out():
    # The caller leaves excluded runs out of the series; the rest must still be found.
    assert detect(FLAT + [104.8, 105.3, 105.1])[0].first_bad == N


def test_nothing_is_tested_before_enough_history():
    assert detect([100.0, 100.2, 99.8, 110.0, 110.3, 110.1]) == []


def test_within_night_noise_lowers_confidence():
    series = FLAT + [102.5, 102.8, 102.4, 102.6, 102.7]
    quiet = detect(series)
    noisy = detect(series, stderr=[0.0] * N + [3.0] * 5)
    assert quiet and quiet[0].first_bad == N
    assert noisy == [] or noisy[0].confidence < quiet[0].confidence


def test_small_changes_below_the_floor_are_not_reported():
    assert detect(FLAT + [100.4] * 6, params=Params(min_noise=0.0001, min_change=0.01)) == []


def test_the_median_stderr_comes_from_the_faster_half():
    # 200 normal iterations with a 3 us spread: the minimum sits ~2.7 spreads under the median.
    gap = -NormalDist().inv_cdf(0.625 / 200.25)
    (se,) = median_stderr([100.0], [100.0 - 3.0 * gap], iterations=200)
    assert se == pytest.approx(math.sqrt(math.pi / 2) * 3.0 / math.sqrt(200))
    assert math.isnan(median_stderr([100.0], [math.nan])[0])


def test_a_night_with_partly_slow_iterations_does_not_make_a_change():
    # Night N+1 is far up because some of its iterations ran slow (its median left its fastest
    # iterations behind); around it the nights are only a little high.
    series = FLAT + [101.5, 106.0, 102.0, 101.0]
    shape = SHAPE + [0.08, 0.12, 0.08, 0.081]
    assert detect(series) != []                 # without the shape it looks like a step
    assert detect(series, shape=shape) == []


def test_a_lasting_change_of_shape_is_a_change():
    # Every night after the change has partly slow iterations: that is the change itself.
    series = FLAT + [104.0, 104.6, 104.2, 104.4]
    (change,) = detect(series, shape=SHAPE + [0.12, 0.12, 0.122, 0.121])
    assert change.first_bad == N and change.direction == "regression"


def test_the_change_is_placed_after_an_outlier_night_by_shape_just_before_it():
    # Night N is high because some of its iterations ran slow (its shape); the step starts at
    # N + 1. The windows leave night N out, and so does the placing of the change.
    series = FLAT + [104.0, 102.6, 102.4, 102.8, 102.5, 102.7, 102.3]
    (change,) = detect(series, shape=SHAPE + [0.12] + [0.08] * 6)
    assert change.first_bad == N + 1


def test_spikes_in_the_baseline_do_not_raise_the_bar_for_a_step():
    # One-night spikes (+22 to 28%) are left out of a window; counted at the clip in the
    # baseline's spread they would make every window need more evidence (a 2% step, 1% noise,
    # was found a night later with three spikes among its 40 nights of baseline).
    rng = np.random.default_rng(7)
    clean = list(100.0 * (1 + 0.01 * rng.standard_normal(40)))
    step = list(102.0 * (1 + 0.01 * rng.standard_normal(7)))
    spiky = list(clean)
    for night, factor in ((12, 1.22), (25, 1.25), (33, 1.28)):
        spiky[night] *= factor
    (found,) = detect(clean + step)
    (with_spikes,) = detect(spiky + step)
    assert (found.first_bad, found.detected_at) == (40, 43)
    assert (with_spikes.first_bad, with_spikes.detected_at) == (40, 43)


def _sample_skew(values: np.ndarray) -> float:
    deviations = values - values.mean()
    return float(np.mean(deviations ** 3) / np.mean(deviations ** 2) ** 1.5)


def test_a_right_skewed_baseline_s_nights_are_normalised_for_its_skew():
    # The slowest of many ranks: a Gumbel-like tail of slow nights. Clipping alone leaves the
    # nights skewed; the inverse Cornish-Fisher transform makes them about symmetric, so that a
    # high night counts as much as it is unusual.
    params = Params()
    gumbel = np.random.default_rng(1).gumbel(size=5000)
    z = (gumbel - np.median(gumbel)) / (1.4826 * np.median(np.abs(gumbel - np.median(gumbel))))
    clipped = np.clip(z, -params.clip, params.clip)
    skew = _skewness(clipped, params)
    assert 0.5 < skew <= params.skew_max
    assert _sample_skew(clipped) > 0.35
    assert abs(_sample_skew(_normalise(z, skew, params))) < 0.1
    # Left-skewed nights are not normalised (their high nights would count more), nor any
    # with `skew_prior` 0; a few nights' skewness is shrunk towards none.
    assert _skewness(-clipped, params) == 0.0 and _skewness(clipped, replace(params, skew_prior=0.0)) == 0.0
    assert _skewness(clipped[:20], params) < _skewness(clipped[:20], replace(params, skew_prior=1e-9))
    # Never as far as 3 / clip, where the transform turns back.
    assert _skewness(clipped, replace(params, skew_max=5.0, skew_prior=1e-9, clip=3.5)) < 3.0 / 3.5


def test_one_night_far_out_in_the_baseline_does_not_delay_a_step():
    # One night 5% up (5 noise units, within the gate) among 40 normal ones: its skewness is
    # taken from clipped nights, so it does not make the baseline look skewed and the 2% step
    # after it is found in 7 nights as often as without it (taken from the unclipped nights,
    # the skewness made 7 of these 30 steps late or missed).
    def found(series: np.ndarray) -> bool:
        return any(c.direction == "regression" and abs(c.first_bad - 40) <= 2 and c.detected_at <= 46
                   for c in detect(series))
    plain = with_outlier = 0
    for seed in range(30):
        series = 100.0 * (1 + 0.01 * np.random.default_rng(seed).standard_normal(47))
        series[40:] *= 1.02
        plain += found(series)
        series[20] *= 1.05
        with_outlier += found(series)
    assert plain >= 25 and with_outlier >= plain - 1


def test_a_night_beyond_the_gate_counts_the_whole_clip_whatever_the_skew():
    params = Params()
    high, low, edge = _normalise(np.array([8.0, -8.0, params.clip]), params.skew_max, params)
    assert (high, low) == (params.clip, -params.clip)
    assert edge < params.clip  # high in a skewed baseline: counts less
    counted = _normalise(np.linspace(-10.0, 10.0, 401), params.skew_max, params)
    assert np.all(np.diff(counted) >= 0.0)  # the higher night never counts less


def _resumed_night_by_night(values: list[float]) -> list:
    """What the nightly scan finds when it runs once per night, resuming where it stopped: the
    baseline from the last change found, only the new night tested."""
    found: list = []
    for nights in range(1, len(values) + 1):
        start = found[-1].first_bad if found else 0
        found += detect(values[:nights], start=start, first_test=nights - 1)
    return found


def test_a_scan_resumed_every_night_finds_what_a_full_scan_finds():
    series = FLAT + [105.2, 104.6, 105.5, 104.9, 106.0, 104.8, 105.3, 105.1, 104.7, 105.4] \
        + [99.1, 99.6, 99.3, 98.9, 99.4, 99.0, 99.5, 128.0, 99.2, 99.3, 100.1, 99.8] + [103.8, 104.1, 104.4, 103.9]
    full = detect(series)
    assert [c.direction for c in full] == ["regression", "improvement", "regression"]
    assert _resumed_night_by_night(series) == full


def _group(values: dict[str, list[float]]) -> dict[str, SeriesInput]:
    runs = [f"night-{i}" for i in range(len(next(iter(values.values()))))]
    return {key: SeriesInput(v, runs=runs) for key, v in values.items()}


# Four sizes of one job: each its own level, their own noise (FLAT in another order).
SIZES = {f"tokens={2 ** (k + 5)}": [(1.0 + k) * FLAT[(i * (2 * k + 1)) % N] for i in range(N)] for k in range(4)}


def test_a_step_of_the_whole_group_is_found_on_every_member():
    stepped = {key: v + [1.05 * (1.0 + k) * 100.0 + 0.3 * (j % 2) for j in range(4)]
               for k, (key, v) in enumerate(SIZES.items())}
    found = detect_group(_group(stepped))
    assert {key: [(c.first_bad, c.direction) for c in changes] for key, changes in found.items()} \
        == {key: [(N, "regression")] for key in SIZES}


def test_a_step_of_one_member_is_found_on_it_alone():
    values = {key: v + [(1.0 + k) * x for x in (100.2, 99.7, 100.4, 99.9)] for k, (key, v) in enumerate(SIZES.items())}
    values["tokens=32"] = SIZES["tokens=32"] + [105.2, 104.6, 105.5, 104.9]
    found = detect_group(_group(values))
    assert [(c.first_bad, c.direction) for c in found["tokens=32"]] == [(N, "regression")]
    assert all(found[key] == [] for key in SIZES if key != "tokens=32")


def test_a_shared_move_that_the_group_does_not_confirm_is_not_reported():
    # One noise for the whole job (about 1% a night), each size's own on top (about 0.7%). For the
    # last seven nights the group is up 1%, which its history does not make significant, and one
    # member's own noise adds 1% more: alone it is a 2% step; against its group, the group's
    # noise and its own.
    wobble = [0.0, 0.002, -0.001, 0.001, -0.002, 0.0, 0.001]
    shared = [1.0 + 0.015 * ((i * 5) % 7 - 3) / 3.0 for i in range(N)] + [1.01 + w for w in wobble]
    own = {key: [x / v[0] * FLAT[0] / 100.0 for x in v] + [1.0 + w for w in reversed(wobble)]
           for key, v in SIZES.items()}
    own["tokens=32"] = own["tokens=32"][:N] + [1.01 + w for w in wobble]
    values = {key: [100.0 * (1 + k) * s * o for s, o in zip(shared, v)] for k, (key, v) in enumerate(own.items())}
    assert [c.direction for c in detect(values["tokens=32"])] == ["regression"]
    assert detect_group(_group(values))["tokens=32"] == []


def test_a_group_lines_up_by_runs_when_a_member_missed_a_night():
    values = {key: v + [1.05 * (1.0 + k) * 100.0] * 4 for k, (key, v) in enumerate(SIZES.items())}
    members = _group(values)
    runs = list(members["tokens=32"].runs)
    skipped = SeriesInput(values["tokens=32"][:10] + values["tokens=32"][11:], runs=runs[:10] + runs[11:])
    logs = group_logs({**members, "tokens=32": skipped})
    assert logs["tokens=32"].shape == (len(runs) - 1, len(members))
    np.testing.assert_array_equal(logs["tokens=32"][10], logs["tokens=64"][11])
    assert np.isnan(logs["tokens=64"][10][0])  # tokens=32 (the first member) missed night 10


def test_a_group_scanned_night_by_night_on_its_tails_finds_what_a_full_scan_finds():
    # What the nightly does: each night, every member's last `lookback` tested nights and the new
    # one, its baseline's start cut to the tail's first night when it lies before it.
    rng = np.random.default_rng(20261201)
    nights, keep = 150, lookback(Params())
    shared = rng.normal(0.0, 0.006, nights)
    values = {}
    for k in range(5):
        own = rng.normal(0.0, 0.004, nights)
        level = np.where(np.arange(nights) >= 95, 1.04, 1.0)  # the whole group, from night 95
        if k == 0:
            level = level * np.where(np.arange(nights) >= 120, 1.05, 1.0)  # and one member, from 120
        values[f"m{k}"] = list(100.0 * (1 + k) * level * np.exp(shared + own))
    runs = [f"night-{i}" for i in range(nights)]
    full = detect_group({k: SeriesInput(v, runs=runs) for k, v in values.items()})
    assert [c.first_bad for c in full["m0"]] == [95, 120]
    assert all([c.first_bad for c in full[k]] == [95] for k in values if k != "m0")

    found: dict[str, list] = {k: [] for k in values}
    for n in range(1, nights + 1):
        first = max(0, n - 1 - keep)
        members = {}
        for k, v in values.items():
            start = found[k][-1].first_bad if found[k] else 0
            members[k] = SeriesInput(v[first:n], runs=runs[first:n], start=max(start - first, 0),
                                     first_test=n - 1 - first)
        for k, changes in detect_group(members).items():
            found[k] += [replace(c, first_bad=c.first_bad + first, last_good=c.last_good + first,
                                 detected_at=c.detected_at + first) for c in changes]
    assert found == full
