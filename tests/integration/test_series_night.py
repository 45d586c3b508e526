"""`series_night` (migration 0015), filled by the loader's transaction, and detection that tests
only the new nights (`moecomm_tasks.history`): the same alerts as a full re-run."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from moecomm_tasks import alerts, runs, store
from moecomm_tasks.detect import Params
from moecomm_tasks.records import ParsedJob, ParsedOutput, RunHeader, Stats, Timing
from moecomm_tasks.series import SERIES_KEY, SeriesKey

pytestmark = pytest.mark.integration
START = datetime(2026, 9, 1, 2, 0, tzinfo=timezone.utc)
# Short windows, so that a resumed scan reads a tail shorter than the history (lookback 15 nights).
# With so short windows the most evidence a window can carry is clip / sqrt(1/4 + 1.2/8) = 3.5,
# below what an improvement needs by default (3.1 + improvement_extra): none extra here.
SHORT = Params(baseline_window=8, noise_window=8, max_window=4, min_baseline=3, min_history=8,
               direct_noise_nights=6, min_shape_nights=4, improvement_extra=0.0)
ALERT_COLUMNS = (*SERIES_KEY, "direction", "last_good_run_id", "first_bad_run_id", "detected_run_id",
                 "round(change_pct::numeric, 6)")


def night(index: int, rng: random.Random, iter_stats: bool = True) -> ParsedOutput:
    """Two sizes x two ops on 2 ranks: combine at 64 tokens 8% slower from night 20, 6% faster
    again from night 31; dispatch at 128 tokens 5% slower from night 26."""
    header = RunHeader(profile="gpt_oss", ep_size=2, hidden_size=2880, top_k=4, num_experts=128,
                       quant_algo=None, backend="NVLINK_ONE_SIDED",
                       extra={"provenance": {"gpu_model": "NVIDIA H200"}})
    timings = []
    for size in (64, 128):
        for op, base in (("dispatch", 50.0), ("combine", 80.0)):
            factor = 1.0
            if size == 64 and op == "combine":
                factor = (1.08 if index >= 20 else 1.0) * (0.94 if index >= 31 else 1.0)
            if size == 128 and op == "dispatch" and index >= 26:
                factor = 1.05
            for rank in range(2):
                mean = base * factor * rng.lognormvariate(0, 0.005)
                stats = Stats(mean, mean * 0.99 if iter_stats else None, mean * 0.02,
                              mean * 0.96 if iter_stats else None, mean * 1.1)
                timings.append(Timing("NVLINK_ONE_SIDED", size, op, rank, stats))
    return ParsedOutput(jobs=(ParsedJob(header, tuple(timings)),))


def alert_set(engine) -> set[tuple]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(f"SELECT {', '.join(ALERT_COLUMNS)} FROM alert")).all())


def test_nightly_detection_finds_what_a_full_rerun_finds(engine):
    rng = random.Random(3)
    for index in range(40):
        store.load(engine, night(index, rng), f"n-{index:02d}", START + timedelta(days=index))
        alerts.run_detection(engine, SHORT)
    nightly = alert_set(engine)
    firsts = {(a[5], a[4], a[-3]) for a in nightly}
    assert {("combine", 64, "n-20"), ("combine", 64, "n-31"), ("dispatch", 128, "n-26")} <= firsts
    with engine.connect() as conn:
        tested = conn.execute(sa.text("SELECT DISTINCT tested_run_id FROM series_scan")).scalars().all()
    assert tested == ["n-39"]
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM alert"))
    assert alerts.run_detection(engine, SHORT, full=True)
    assert alert_set(engine) == nightly
    assert alerts.run_detection(engine, SHORT) == []  # nothing new to test


def test_a_changed_tested_night_forgets_the_scan(engine):
    rng = random.Random(5)
    for index in range(30):
        store.load(engine, night(index, rng), f"n-{index:02d}", START + timedelta(days=index))
    alerts.run_detection(engine, SHORT)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM series_scan")).scalar() == 4
    alerts.set_excluded(engine, "n-22", "bad node")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM series_scan")).scalar() == 0
        assert conn.execute(sa.text("SELECT bool_and(excluded) FROM series_night WHERE run_id = 'n-22'")).scalar()
    alerts.run_detection(engine, SHORT)
    excluded = alert_set(engine)
    assert all(a[-3] != "n-22" and a[-4] != "n-22" for a in excluded)
    runs.delete(engine, "n-29")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM series_night WHERE run_id = 'n-29'")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM series_scan")).scalar() == 0
    # A night loaded late, before the nights already tested, is tested too: the scan starts again.
    store.load(engine, night(29, rng), "n-29", START + timedelta(days=29))
    alerts.run_detection(engine, SHORT)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT DISTINCT tested_run_id FROM series_scan")).scalars().all() == ["n-29"]


def test_the_night_value_is_the_slowest_ranks_median_else_its_mean(engine):
    rng = random.Random(9)
    store.load(engine, night(0, rng), "with-stats", START)
    store.load(engine, night(1, rng, iter_stats=False), "without", START + timedelta(days=1))
    with engine.connect() as conn:
        rows = conn.execute(sa.text("""
            SELECT n.run_id, n.night_us, n.series_pk, s.*,
                   (SELECT max(v) FROM unnest(m.median_us) v) AS slowest_median,
                   (SELECT max(v) FROM unnest(m.mean_us) v) AS slowest_mean
            FROM series_night n JOIN series s USING (series_pk)
            JOIN measurement m ON (m.job_pk, m.backend, m.local_batch_size, m.op)
                                = (n.job_pk, n.backend, n.local_batch_size, n.op)""")).all()
        view = conn.execute(sa.text("SELECT count(*), count(DISTINCT series_pk), bool_and(quant_algo IS NULL) "
                                    "FROM nightly_series")).one()
    assert len(rows) == 8 and tuple(view) == (8, 4, True)
    for row in rows:
        assert row.night_us == (row.slowest_median if row.run_id == "with-stats" else row.slowest_mean)
        assert SeriesKey.of(row).quant_algo == "" and SeriesKey.of(row).gpu_model == "NVIDIA H200"
