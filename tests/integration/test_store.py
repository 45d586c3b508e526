"""Loading into a real PostgreSQL: views, idempotency, atomicity, refusals, concurrency."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from moecomm_tasks import store
from moecomm_tasks.errors import LoadError
from moecomm_tasks.parse import parse_paths
from moecomm_tasks.records import Stats

pytestmark = pytest.mark.integration

NIGHT = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc)
TABLES = ("run", "job", "measurement", "kernel_timing", "skip", "failure", "provenance")


def counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in TABLES}


def snapshot(engine) -> dict[str, list]:
    """Every row with its xmin: a row that was rewritten (even to equal values) shows a new xmin."""
    with engine.connect() as conn:
        return {t: sorted(map(tuple, conn.execute(sa.text(f"SELECT xmin::text, * FROM {t}")).all()), key=str)
                for t in TABLES}


def test_load_fills_the_public_views(engine, data_dir):
    parsed = parse_paths([data_dir / "seed_stdout_iter_stats_kernels.txt"])
    result = store.load(engine, parsed, "nightly-1", NIGHT, provenance={"gpu_model": "NVIDIA H100", "hosts": ["n1"]})
    assert [j.status for j in result.jobs] == ["loaded"]
    with engine.connect() as conn:
        flat = conn.execute(sa.text(
            "SELECT run_id, run_at, backend, profile, ep_size, local_batch_size, op, rank, mean_us, "
            "median_us, stdev_us, min_us, max_us, gpu_model FROM measurement_flat ORDER BY op, rank")).all()
        assert len(flat) == 4
        assert tuple(flat[2]) == ("nightly-1", NIGHT, "NVLINK_ONE_SIDED", "gpt_oss", 2, 1024, "dispatch", 0,
                                  88.5, 87.0, 3.1, 84.2, 110.9, "NVIDIA H100")
        kernels = conn.execute(sa.text(
            "SELECT phase, count(*) FROM kernel_flat WHERE run_id = 'nightly-1' GROUP BY phase ORDER BY phase")).all()
        assert [tuple(k) for k in kernels] == [("combine", 2), ("dispatch", 2), ("other", 2)]
        series = conn.execute(sa.text(
            "SELECT n_ranks, median_us, slowest_rank_us, slowest_rank, within_night_stdev_us, "
            "slowest_rank_median_us, slowest_rank_min_us, median_min_log_ratio "
            "FROM nightly_series WHERE op = 'dispatch'")).one()
        assert series.n_ranks == 2 and series.median_us == pytest.approx((88.5 + 90.25) / 2)
        assert series.slowest_rank_us == 90.25 and series.slowest_rank == 1
        assert series.within_night_stdev_us == pytest.approx(2.9)
        # The rank with the largest median (rank 1: 89.5) and its fastest iteration; the shape.
        assert series.slowest_rank_median_us == 89.5 and series.slowest_rank_min_us == 85.0
        assert series.median_min_log_ratio == pytest.approx((math.log(87.0 / 84.2) + math.log(89.5 / 85.0)) / 2)


def test_reload_under_the_same_run_id_changes_no_row(engine, data_dir):
    paths = [data_dir / "seed_stdout_2ranks.txt", data_dir / "seed_output_2ranks.json"]
    store.load(engine, parse_paths(paths), "nightly-1", NIGHT)
    before = snapshot(engine)
    assert len(before["measurement"]) == 6 and len(before["skip"]) == 5  # 3 objects x 2 ops, ranks in arrays
    again = store.load(engine, parse_paths(paths), "nightly-1", NIGHT)
    assert [j.status for j in again.jobs] == ["unchanged"]
    store.load(engine, parse_paths(paths[:1]), "nightly-1", NIGHT)
    assert snapshot(engine) == before


def test_a_remeasurement_replaces_the_job_whole(engine, data_dir):
    parsed = parse_paths([data_dir / "seed_stdout_2ranks.txt"])
    store.load(engine, parsed, "nightly-1", NIGHT)
    job = parsed.jobs[0]
    slower = replace(job, timings=tuple(replace(t, stats=Stats(t.stats.mean_us * 2)) for t in job.timings[:4]))
    result = store.load(engine, replace(parsed, jobs=(slower,)), "nightly-1", NIGHT)
    assert [j.status for j in result.jobs] == ["replaced"]
    assert counts(engine)["measurement"] == 2 and counts(engine)["job"] == 1
    with engine.connect() as conn:
        means = conn.execute(sa.text("SELECT mean_us FROM measurement_flat ORDER BY op, rank")).scalars().all()
    assert means == [2 * t.stats.mean_us for t in sorted(job.timings[:4], key=lambda t: (t.op, t.rank))]


def test_truncated_output_loads_the_complete_objects_and_records_the_drop(engine, data_dir):
    parsed = parse_paths([data_dir / "truncated_stdout.txt"])
    result = store.load(engine, parsed, "nightly-1", NIGHT)
    assert result.jobs[0].state == "partial"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM measurement_flat")).scalar() == 8
        reason = conn.execute(sa.text("SELECT kind, reason FROM failure")).one()
        assert tuple(reason) == ("dropped", "truncated JSON object (it never closes)")


KNOBS_SQL = ("cuda_graph, pdl, perfect_router, payload_in_workspace, low_precision_combine, timing_method",
             "false, false, false, false, false, 'cuda_events'")


def test_database_refuses_negative_and_nan_times(engine, data_dir):
    store.load(engine, parse_paths([data_dir / "seed_stdout_2ranks.txt"]), "nightly-1", NIGHT)
    for bad, constraint in (("-1.0", "measurement_times_finite_nonnegative"), ("NaN", "measurement_times_finite_nonnegative"),
                            ("Infinity", "measurement_times_finite_nonnegative"), ("0", "measurement_times_positive")):
        with engine.connect() as conn, pytest.raises(sa.exc.IntegrityError, match=constraint):
            conn.execute(sa.text(
                f"INSERT INTO measurement (job_pk, backend, local_batch_size, op, mean_us, {KNOBS_SQL[0]}) "
                f"SELECT job_pk, 'X', 1, 'dispatch', '{{1.0,{bad}}}', {KNOBS_SQL[1]} FROM job"))
    for means, medians in (("{1.0,2.0}", "'{1.0}'"), ("{NULL,NULL}", "NULL")):
        with engine.connect() as conn, pytest.raises(sa.exc.IntegrityError, match="measurement_one_value_per_rank"):
            conn.execute(sa.text(
                f"INSERT INTO measurement (job_pk, backend, local_batch_size, op, mean_us, median_us, {KNOBS_SQL[0]}) "
                f"SELECT job_pk, 'X', 1, 'dispatch', '{means}', {medians}, {KNOBS_SQL[1]} FROM job"))
    with engine.connect() as conn, pytest.raises(sa.exc.IntegrityError, match="measurement_timing_method_known"):
        conn.execute(sa.text(
            f"INSERT INTO measurement (job_pk, backend, local_batch_size, op, mean_us, {KNOBS_SQL[0]}) "
            f"SELECT job_pk, 'X', 1, 'dispatch', '{{1.0}}', {KNOBS_SQL[1].replace('cuda_events', 'stopwatch')} FROM job"))


def test_database_refuses_a_duplicate_measurement(engine, data_dir):
    store.load(engine, parse_paths([data_dir / "seed_stdout_2ranks.txt"]), "nightly-1", NIGHT)
    with engine.connect() as conn, pytest.raises(sa.exc.IntegrityError, match="measurement_pkey"):
        conn.execute(sa.text(
            f"INSERT INTO measurement (job_pk, backend, local_batch_size, op, mean_us, {KNOBS_SQL[0]}) "
            f"SELECT job_pk, backend, local_batch_size, op, mean_us, {KNOBS_SQL[0]} FROM measurement LIMIT 1"))


def test_a_failure_mid_load_leaves_nothing_of_that_input(engine, data_dir):
    """A NaN slipped past the parser: the database refuses it and the whole job is rolled back."""
    parsed = parse_paths([data_dir / "seed_stdout_2ranks.txt"])
    job = parsed.jobs[0]
    poisoned = replace(job, timings=job.timings[:-1] + (replace(job.timings[-1], stats=Stats(math.nan)),))
    with pytest.raises(LoadError, match="nothing of it was written"):
        store.load(engine, replace(parsed, jobs=(poisoned,)), "nightly-1", NIGHT)
    assert counts(engine) == {t: 0 for t in TABLES}


def test_run_time_needs_a_zone(engine, data_dir):
    with pytest.raises(LoadError, match="no time zone"):
        store.load(engine, parse_paths([data_dir / "seed_stdout_2ranks.txt"]), "r", datetime(2026, 1, 1))


def test_two_loads_of_different_runs_at_once(database_url, engine, data_dir):
    env = dict(os.environ, MOECOMM_DATABASE_URL=database_url)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "moecomm_tasks.cli", "load", str(data_dir / name), "--run-id", run_id],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for run_id, name in [("run-a", "seed_stdout_2ranks.txt"), ("run-b", "seed_stdout_iter_stats_kernels.txt"),
                             ("run-c", "newer_output_report.json")]
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    with engine.connect() as conn:
        per_run = dict(conn.execute(sa.text(
            "SELECT run_id, count(*) FROM measurement_flat GROUP BY run_id")).all())
    assert per_run == {"run-a": 12, "run-b": 4, "run-c": 16}


def test_concurrent_replaces_of_one_job_all_succeed(database_url, engine, data_dir, tmp_path):
    """Three reloads of changed content under one run id, started together while the job's row is
    locked, so that all three race for it when it is released: each succeeds (the losers of the
    race run again), and the job holds exactly one of the three contents, whole."""
    import re
    import time

    import psycopg2
    from sqlalchemy.engine import make_url

    text = (data_dir / "seed_stdout_2ranks.txt").read_text()
    variants = []
    for factor in (2, 3, 4):
        path = tmp_path / f"x{factor}.txt"
        path.write_text(re.sub(r'("rank\d": )([\d.]+)', lambda m: f"{m[1]}{float(m[2]) * factor}", text))
        variants.append(path)
    env = dict(os.environ, MOECOMM_DATABASE_URL=database_url)
    first = subprocess.run([sys.executable, "-m", "moecomm_tasks.cli", "load", str(data_dir / "seed_stdout_2ranks.txt"),
                            "--run-id", "n1"], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    holder = psycopg2.connect(make_url(database_url).render_as_string(hide_password=False)
                              .replace("postgresql+psycopg2", "postgresql"))
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT job_pk FROM job FOR UPDATE")
        procs = [subprocess.Popen([sys.executable, "-m", "moecomm_tasks.cli", "load", str(path), "--run-id", "n1"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for path in variants]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                waiting = conn.execute(sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND application_name = 'moecomm' AND wait_event_type = 'Lock'")).scalar()
            if waiting == 3:
                break
            time.sleep(0.1)
        assert waiting == 3, "the three loads did not all reach the job's lock"
    finally:
        holder.rollback()
        holder.close()
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert all("replaced: run n1 job" in out or "loaded: run n1 job" in out for out, _err in outputs), outputs
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM job")).scalar() == 1
        rows = conn.execute(sa.text(
            "SELECT backend, local_batch_size, op, rank, mean_us FROM measurement_flat ORDER BY 1, 2, 3, 4")).all()
    seed = {(t.backend, t.local_batch_size, t.op, t.rank): t.stats.mean_us
            for t in parse_paths([data_dir / "seed_stdout_2ranks.txt"]).jobs[0].timings}
    assert len(rows) == len(seed) == 12
    factors = {round(r.mean_us / seed[(r.backend, r.local_batch_size, r.op, r.rank)], 6) for r in rows}
    assert len(factors) == 1 and factors <= {2.0, 3.0, 4.0}, factors
