"""The change detector on tiny literal series, with exact expected change indices."""

from __future__ import annotations

from moecomm_tasks.detect import Params, detect

# Sixteen nights around 100 µs with about 1% noise.
FLAT = [100.0, 101.0, 99.0, 100.5, 99.5, 100.0, 101.2, 98.9, 100.3, 99.7, 100.8, 99.2, 100.1, 99.9, 100.4, 99.6]


def test_a_flat_series_has_no_change():
    assert detect(FLAT) == []


def test_a_sustained_step_is_found_at_its_first_night():
    series = FLAT + [105.2, 104.6, 105.5, 104.9]
    (change,) = detect(series)
    assert (change.last_good, change.first_bad) == (15, 16)
    assert change.detected_at == 17  # the second night after the step confirms it
    assert change.direction == "regression" and 4.0 < change.change_pct < 6.0
    assert change.confidence > 0.99


def test_an_improvement_is_reported_as_such():
    (change,) = detect(FLAT + [94.8, 95.3, 95.1])
    assert change.direction == "improvement" and change.first_bad == 16 and change.change_pct < -4.0


def test_a_one_night_spike_is_ignored():
    assert detect(FLAT + [125.0, 100.2, 99.8, 100.5, 99.9]) == []


def test_two_steps_are_two_changes():
    series = FLAT + [105.0, 105.4, 104.8, 105.2, 105.1, 104.9, 105.3, 95.0, 95.2, 94.8]
    changes = detect(series)
    assert [(c.first_bad, c.direction) for c in changes] == [(16, "regression"), (23, "improvement")]


def test_nothing_is_tested_before_enough_history():
    assert detect([100.0, 100.2, 99.8, 110.0, 110.3, 110.1]) == []


def test_within_night_noise_lowers_confidence():
    series = FLAT + [102.5, 102.8, 102.4, 102.6, 102.7]
    quiet = detect(series)
    noisy = detect(series, stderr=[0.0] * 16 + [3.0] * 5)
    assert quiet and quiet[0].first_bad == 16
    assert noisy == [] or noisy[0].confidence < quiet[0].confidence


def test_small_changes_below_the_floor_are_not_reported():
    assert detect(FLAT + [100.4] * 6, params=Params(min_noise=0.0001, min_change=0.01)) == []
