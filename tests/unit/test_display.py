"""How values and run ids are shown (moecomm_tasks.display): short run ids for column headers,
a value with its within-night spread, and the mark of a change beyond the spreads."""

from __future__ import annotations

from moecomm_tasks.display import beyond_noise, short_run_ids, spread_us, with_spread


def test_airflow_run_ids_show_their_dates():
    airflow = short_run_ids(["scheduled__2026-12-01T02:00:00+00:00", "scheduled__2026-12-02T02:00:00+00:00",
                             "manual__2026-12-02T09:15:00.123456+00:00"])
    assert airflow.labels == ("scheduled__12-01", "scheduled__12-02", "manual__12-02")
    assert airflow.dropped == ""


def test_ids_of_one_day_show_the_time_and_name_what_they_share():
    same_day = short_run_ids(["manual__2026-12-01T05:49:01.948317+00:00", "manual__2026-12-01T06:49:01.948317+00:00"])
    assert same_day.labels == ("12-01 05:49", "12-01 06:49") and same_day.dropped == "manual__…"
    compact = short_run_ids(["regression-demo-20260101-00", "regression-demo-20260102-01"])
    assert compact.labels == ("01-01 00", "01-02 01") and compact.dropped == "regression-demo-…"
    ends = short_run_ids(["nightly-2026-11-30-abcdef0123456789", "nightly-2026-12-01-abcdef0123456789"])
    assert ends.labels == ("11-30", "12-01") and ends.dropped == "nightly-…-abcdef0123456789"
    years = short_run_ids(["nightly-2025-12-31-build-a", "nightly-2026-01-01-build-a"])
    assert years.labels == ("2025-12-31", "2026-01-01")


def test_short_ids_stay_whole_and_long_ones_stay_distinct():
    assert short_run_ids(["h100-ep1-1", "h100-ep1-2"]).labels == ("h100-ep1-1", "h100-ep1-2")
    assert short_run_ids(["manual__2026-12-01T05:49:01.948317+00:00"]).labels == (
        "manual__2026-12-01T05:49:01.948317+00:00",)
    plain = short_run_ids(["a-very-long-run-id-without-dates-one", "a-very-long-run-id-without-dates-two", "x"])
    assert len(set(plain.labels)) == 3 and all(len(label) <= 16 for label in plain.labels)
    # Two ids that differ only past the minute keep their seconds.
    seconds = short_run_ids(["run-2026-12-01T05:49:01", "run-2026-12-01T05:49:02"])
    assert seconds.labels == ("12-01 05:49:01", "12-01 05:49:02")


def test_spread_and_the_mark_beyond_it():
    assert spread_us(1.5, None) == 1.5 and spread_us(1.5, 4.0) == 4.0 and spread_us(None, None) is None
    assert beyond_noise(100.0, 2.0, 105.0, 2.0) is True
    assert beyond_noise(100.0, 3.0, 105.0, 2.0) is False  # just within: the intervals touch
    assert beyond_noise(100.0, None, 150.0, 2.0) is None
    assert with_spread(289.149, 1.15, True) == "289.15 ±1.15*"
    assert with_spread(1878.66, 2.31) == "1878.7 ±2.3" and with_spread(None, 1.0) == "-"
