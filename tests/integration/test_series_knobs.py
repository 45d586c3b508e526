"""A series is separated by everything that changes its number: the knobs stored per result, null
ranks and absent kernels, upstream's warning with its job, older rows migrated (migration 0006),
and detection keyed by the whole series; against a real PostgreSQL."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from moecomm_tasks import alerts, db, migrate, store
from moecomm_tasks.knobs import Knobs
from moecomm_tasks.parse import parse_paths
from moecomm_tasks.records import ParsedJob, ParsedOutput, RunHeader, Stats, Timing

pytestmark = pytest.mark.integration

NIGHT = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc)
KNOBS = "cuda_graph, pdl, perfect_router, payload_in_workspace, low_precision_combine, timing_method"


def test_upstream_run_fills_the_knob_columns(engine, data_dir):
    parsed = parse_paths([data_dir / "upstream_external_mpi_stdout.txt", data_dir / "upstream_external_mpi_output.json"])
    result = store.load(engine, parsed, "today-1", NIGHT, provenance={
        "command": ["mpirun", "-np", "2", "python", "bench_moe_comm.py", "--use_low_precision_combine"]})
    assert result.jobs[0].state == "succeeded"
    with engine.connect() as conn:
        series = {(r.backend, r.local_batch_size, r.op): r for r in conn.execute(sa.text(
            f"SELECT backend, local_batch_size, op, n_ranks, median_us, slowest_rank_us, slowest_rank, {KNOBS} "
            "FROM nightly_series"))}
        flat_ranks = conn.execute(sa.text(
            "SELECT rank FROM measurement_flat WHERE backend = 'NVLINK_TWO_SIDED' AND op = 'dispatch'")).scalars().all()
        kernels = conn.execute(sa.text(
            "SELECT rank, mean_us FROM kernel_flat WHERE kernel = 'moeA2APrepareDispatchKernel'")).all()
        summary = conn.execute(sa.text("SELECT warning, measurements FROM job_summary")).one()
    ag = series[("ALLGATHER", 128, "dispatch")]
    assert (ag.cuda_graph, ag.pdl, ag.perfect_router, ag.payload_in_workspace, ag.low_precision_combine,
            ag.timing_method) == (True, False, False, False, True, "kernel_span")
    assert series[("NVLINK_ONE_SIDED", 128, "combine")].payload_in_workspace is True
    assert series[("NVLINK_ONE_SIDED", 256, "combine")].timing_method == "cuda_events"
    assert series[("NVLINK_TWO_SIDED", 128, "combine")].timing_method == "cuda_events"
    # Rank 1's null: one measured rank, which is the median and the slowest.
    two = series[("NVLINK_TWO_SIDED", 128, "dispatch")]
    assert (two.n_ranks, two.median_us, two.slowest_rank_us, two.slowest_rank) == (1, 52.0, 52.0, 0)
    assert flat_ranks == [0]
    # Rank 1 did not run the prepare kernel: no row, not a 0 µs kernel.
    assert [tuple(k) for k in kernels] == [(0, 1.5)]
    assert summary.warning.count("\n") == 1 and "NVLINK_TWO_SIDED @ local_batch_size=128: rank0" in summary.warning
    assert summary.measurements == 5 * 4 - 1


def test_provenance_completes_pdl(engine, data_dir):
    store.load(engine, parse_paths([data_dir / "seed_stdout_2ranks.txt"]), "seed-1", NIGHT,
               provenance={"environment": {"TRTLLM_ENABLE_PDL": "1"}})
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT DISTINCT {KNOBS} FROM nightly_series")).all()
    assert [tuple(r) for r in rows] == [(False, True, False, False, False, "profiler")]


def nights(engine, methods: list[str], level_change_at: int) -> None:
    """One series' nights; from `level_change_at` on, measured by another method (and 30% lower,
    as kernel spans leave out the events' bubbles)."""
    header = RunHeader(profile="deepseek_v3", ep_size=2, quant_algo="FP8_BLOCK_SCALES", backend="NVLINK_ONE_SIDED",
                       extra={"provenance": {"gpu_model": "NVIDIA H200"}})
    for night, method in enumerate(methods):
        us = 100.0 * (0.7 if night >= level_change_at else 1.0) * (1 + 0.002 * ((night * 7) % 5))
        knob = Knobs(cuda_graph=True, timing_method=method)
        timings = tuple(Timing("NVLINK_ONE_SIDED", 1024, "combine", rank, Stats(us, us, 0.5, us * 0.98, us * 1.1),
                               knobs=knob) for rank in range(2))
        store.load(engine, ParsedOutput(jobs=(ParsedJob(header, timings),)), f"n{night:02d}",
                   NIGHT + timedelta(days=night))


def test_a_change_of_timing_method_is_a_new_series_not_an_alert(engine):
    nights(engine, ["cuda_events"] * 24 + ["kernel_span"] * 6, level_change_at=24)
    assert alerts.run_detection(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(DISTINCT timing_method) FROM nightly_series")).scalar() == 2


def test_the_same_step_within_one_method_is_an_alert(engine):
    nights(engine, ["cuda_events"] * 30, level_change_at=24)
    (alert,) = alerts.run_detection(engine)
    assert alert.direction == "improvement" and alert.timing_method == "cuda_events"
    assert alert.cuda_graph is True and alert.first_bad_run_id == "n24"
    assert alerts.run_detection(engine) == []


OLD_ROWS = [
    # (run id, header as the old loader kept it, environment, backend, size, means)
    ("seed", {"profile": "deepseek_v3", "ep_size": 2, "launcher": "spawn"}, {"TRTLLM_ENABLE_PDL": "1"},
     "ALLGATHER", 640, [301.5, 0.0]),
    ("our-graph", {"profile": "gpt_oss", "ep_size": 1, "cuda_graph": True,
                   "provenance": {"timing_method": "cuda_events+cuda_graph"}}, {}, "TORCH_ALLTOALL", 128, [12.5]),
    ("our-eager", {"profile": "gpt_oss", "ep_size": 1, "cuda_graph": False,
                   "provenance": {"timing_method": "cuda_events"}}, {}, "TORCH_ALLTOALL", 128, [13.5]),
    ("our-cpu", {"profile": "gpt_oss", "ep_size": 1, "cuda_graph": False,
                 "provenance": {"timing_method": "monotonic_clock"}}, {}, "TORCH_ALLGATHER", 128, [900.0]),
    ("upstream", {"profile": "deepseek_v3", "ep_size": 1, "cuda_graph": True, "pdl": False,
                  "payload_in_workspace": True, "cupti_enabled": True, "perfect_router": True,
                  "warning": "CUPTI ... Reason: NVLINK_ONE_SIDED @ local_batch_size=256: rank0: no kernels"},
     {}, "NVLINK_ONE_SIDED", 256, [70.0]),
    ("upstream", None, None, "NVLINK_ONE_SIDED", 128, [40.0]),
    ("upstream", None, None, "ALLGATHER", 128, [60.0]),
]


def test_migration_0006_gives_older_rows_the_knobs_that_were_true(server_url, monkeypatch):
    everything = migrate.migrations()
    with db.scratch_database(server_url, prefix="moecomm_test") as url:
        engine = db.make_engine(url)
        with engine.begin() as conn:  # back to the schema before 0006
            conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        monkeypatch.setattr(migrate, "migrations", lambda: [m for m in everything if m.version <= 5])
        migrate.upgrade(engine)
        with engine.begin() as conn:
            jobs = {}
            for run_id, header, environment, backend, size, means in OLD_ROWS:
                if header is not None:
                    run_pk = conn.execute(sa.text(
                        "INSERT INTO run (run_id, run_at) VALUES (:r, now()) RETURNING run_pk"), {"r": run_id}).scalar()
                    jobs[run_id] = conn.execute(sa.text(
                        "INSERT INTO job (run_pk, job_key, profile, ep_size, state, header, content_sha256) "
                        "VALUES (:p, 'k', :profile, :ep, 'succeeded', CAST(:h AS jsonb), 'x') RETURNING job_pk"),
                        {"p": run_pk, "profile": header["profile"], "ep": header["ep_size"],
                         "h": json.dumps(header)}).scalar()
                    conn.execute(sa.text("INSERT INTO provenance (job_pk, environment) VALUES (:j, CAST(:e AS jsonb))"),
                                 {"j": jobs[run_id], "e": json.dumps(environment)})
                conn.execute(sa.text(
                    "INSERT INTO measurement (job_pk, backend, local_batch_size, op, mean_us) VALUES (:j, :b, :s, 'dispatch', :m)"),
                    {"j": jobs[run_id], "b": backend, "s": size, "m": means})
                conn.execute(sa.text(
                    "INSERT INTO kernel_timing (job_pk, backend, local_batch_size, phase, kernel, rank, count, mean_us) "
                    "VALUES (:j, :b, :s, 'dispatch', 'k', 0, 1, 0.0), (:j, :b, :s, 'dispatch', 'k', 1, 1, 2.5)"),
                    {"j": jobs[run_id], "b": backend, "s": size})
        monkeypatch.setattr(migrate, "migrations", lambda: everything)
        assert [m.version for m in migrate.upgrade(engine)] == [m.version for m in everything if m.version > 5]
        with engine.connect() as conn:
            got = {(r.run_id, r.backend, r.local_batch_size): tuple(r)[3:] for r in conn.execute(sa.text(
                f"SELECT run_id, backend, local_batch_size, n_ranks, {KNOBS} FROM nightly_series"))}
            kernels = conn.execute(sa.text("SELECT DISTINCT rank FROM kernel_timing")).scalars().all()
            warning = conn.execute(sa.text("SELECT warning FROM job_summary WHERE run_id = 'upstream'")).scalar()
        engine.dispose()
    assert got == {
        # The seed's rank of 0 µs was a rank without times: absent now. PDL from the environment.
        ("seed", "ALLGATHER", 640): (1, False, True, False, False, False, "profiler"),
        ("our-graph", "TORCH_ALLTOALL", 128): (1, True, False, False, False, False, "cuda_events_spin"),
        ("our-eager", "TORCH_ALLTOALL", 128): (1, False, False, False, False, False, "cuda_events_spin"),
        ("our-cpu", "TORCH_ALLGATHER", 128): (1, False, False, False, False, False, "host_clock"),
        ("upstream", "NVLINK_ONE_SIDED", 256): (1, True, False, True, True, False, "cuda_events"),
        ("upstream", "NVLINK_ONE_SIDED", 128): (1, True, False, True, True, False, "kernel_span"),
        ("upstream", "ALLGATHER", 128): (1, True, False, True, False, False, "kernel_span"),
    }
    assert kernels == [1]  # the 0 µs kernel rows were absent kernels
    assert warning.startswith("CUPTI")


def test_a_null_rank_with_stats_round_trips(engine, data_dir):
    parsed = parse_paths([data_dir / "seed_stdout_iter_stats_kernels.txt"])
    job = parsed.jobs[0]
    timings = tuple(replace(t, stats=None) if (t.op, t.rank) == ("dispatch", 0) else t for t in job.timings)
    store.load(engine, replace(parsed, jobs=(replace(job, timings=timings),)), "nightly-1", NIGHT)
    with engine.connect() as conn:
        raw = conn.execute(sa.text("SELECT mean_us, median_us FROM measurement WHERE op = 'dispatch'")).one()
        series = conn.execute(sa.text(
            "SELECT n_ranks, slowest_rank, slowest_rank_median_us FROM nightly_series WHERE op = 'dispatch'")).one()
    assert raw.mean_us[0] is None and raw.median_us[0] is None and raw.mean_us[1] == 90.25
    assert tuple(series) == (1, 1, 89.5)
