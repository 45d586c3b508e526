"""Loader and query benchmark: a synthetic year of nightly results for a full matrix.

Matrix: 6 backends x 2 profiles x EP 4, 8, 16 x 16 sizes x 2 ops x every rank, one job per
(backend, profile, EP size) and night: 10,752 measurement rows a night, 3.9 million a year.

Prints, from one run (same process, same server):
  * measurement rows (one per rank) per second of our loader (`moecomm_tasks.store.load`, COPY)
    and of a naive row-by-row ORM insert (one INSERT round trip per stored row, a commit per
    job) of the same rows into the same tables, on the same first nights (the very first one,
    untimed, warms each fresh database up), each into a fresh database; and their ratio;
  * our loader's rate over the whole year;
  * the time of one series' year-long trend query (`moecomm_tasks.query.trend`, median of 20);
  * the time of reading the whole nightly series view over the year.

Usage: python tests/benchmarks/bench_load.py [--nights 365] [--naive-nights 11]
The database server is MOECOMM_DATABASE_URL's (its user must be allowed to create databases)
or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from moecomm_tasks import db, query, store
from moecomm_tasks.knobs import FLAGS as KNOB_FLAGS
from moecomm_tasks.records import ParsedJob, ParsedOutput, RunHeader, Stats, Timing

BACKENDS = ("ALLGATHER", "NVLINK_ONE_SIDED", "NVLINK_TWO_SIDED", "DEEPEP", "DEEPEPLOWLATENCY", "NCCL_EP")
PROFILES = {"deepseek_v3": (7168, 8, 256, "FP8_BLOCK_SCALES"), "gpt_oss": (2880, 4, 128, "W4A8_MXFP4_MXFP8")}
EP_SIZES = (4, 8, 16)
SIZES = tuple(128 * i for i in range(1, 17))
START = datetime(2025, 11, 24, 2, 0, tzinfo=timezone.utc)


def night(index: int, rng: random.Random) -> ParsedOutput:
    """One night's jobs with --iter_stats per-rank statistics."""
    jobs = []
    for profile, (hidden, top_k, experts, quant) in PROFILES.items():
        for ep in EP_SIZES:
            for backend in BACKENDS:
                header = RunHeader(profile=profile, ep_size=ep, hidden_size=hidden, top_k=top_k, num_experts=experts,
                                   quant_algo=quant, dtype="torch.bfloat16", local_batch_sizes=SIZES, backend=backend,
                                   extra={"provenance": {"gpu_model": "NVIDIA H200", "gpu_count": ep}})
                timings = []
                for size in SIZES:
                    for op in ("dispatch", "combine"):
                        base = 20.0 + size * hidden * top_k / 4e6 * (1.3 if op == "combine" else 1.0)
                        for rank in range(ep):
                            mean = base * rng.lognormvariate(0, 0.02)
                            timings.append(Timing(backend, size, op, rank, Stats(
                                mean, mean * 0.99, mean * 0.03, mean * 0.95, mean * 1.2), "torch.float8_e4m3fn"))
                jobs.append(ParsedJob(header, tuple(timings)))
    return ParsedOutput(jobs=tuple(jobs))


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "run"
    run_pk: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str]
    run_at: Mapped[datetime]


class Job(Base):
    __tablename__ = "job"
    job_pk: Mapped[int] = mapped_column(primary_key=True)
    run_pk: Mapped[int]
    job_key: Mapped[str]
    profile: Mapped[str]
    ep_size: Mapped[int]
    quant_algo: Mapped[str]
    state: Mapped[str]
    content_sha256: Mapped[str]


class Measurement(Base):
    __tablename__ = "measurement"
    job_pk: Mapped[int] = mapped_column(primary_key=True)
    backend: Mapped[str] = mapped_column(primary_key=True)
    local_batch_size: Mapped[int] = mapped_column(primary_key=True)
    op: Mapped[str] = mapped_column(primary_key=True)
    mean_us: Mapped[list[float]] = mapped_column(ARRAY(sa.Float))
    median_us: Mapped[list[float]] = mapped_column(ARRAY(sa.Float))
    stdev_us: Mapped[list[float]] = mapped_column(ARRAY(sa.Float))
    min_us: Mapped[list[float]] = mapped_column(ARRAY(sa.Float))
    max_us: Mapped[list[float]] = mapped_column(ARRAY(sa.Float))
    payload_dtype: Mapped[str]
    cuda_graph: Mapped[bool]
    pdl: Mapped[bool]
    perfect_router: Mapped[bool]
    payload_in_workspace: Mapped[bool]
    low_precision_combine: Mapped[bool]
    timing_method: Mapped[str]


def naive_load(engine: sa.Engine, parsed: ParsedOutput, run_id: str, run_at: datetime) -> None:
    """The naive path: ORM objects, one INSERT round trip per stored row, a commit per job.

    It stores exactly what our loader stores (a row per backend, size and op, ranks in arrays).
    """
    with Session(engine) as session:
        run = Run(run_id=run_id, run_at=run_at)
        session.add(run)
        session.commit()
        for job in parsed.jobs:
            h = job.header
            row = Job(run_pk=run.run_pk, job_key=h.job_key(), profile=h.profile, ep_size=h.ep_size,
                      quant_algo=h.quant_algo, state="succeeded", content_sha256="")
            session.add(row)
            session.flush()
            groups: dict[tuple, list[Timing]] = {}
            for t in job.timings:
                groups.setdefault((t.backend, t.local_batch_size, t.op), []).append(t)
            for (backend, size, op), ranks in groups.items():
                ranks.sort(key=lambda t: t.rank)
                session.add(Measurement(
                    job_pk=row.job_pk, backend=backend, local_batch_size=size, op=op,
                    mean_us=[t.stats.mean_us for t in ranks], median_us=[t.stats.median_us for t in ranks],
                    stdev_us=[t.stats.stdev_us for t in ranks], min_us=[t.stats.min_us for t in ranks],
                    max_us=[t.stats.max_us for t in ranks], payload_dtype=ranks[0].payload_dtype,
                    **{f: bool(getattr(ranks[0].knobs, f)) for f in KNOB_FLAGS},
                    timing_method=ranks[0].knobs.timing_method))
                session.flush()
            session.commit()


def rows_of(parsed: ParsedOutput) -> int:
    return sum(len(j.timings) for j in parsed.jobs)


def timed_loads(engine: sa.Engine, nights: list[ParsedOutput], loader) -> float:
    """Rows per second of `loader` over `nights` but the first, which warms up the fresh database
    and the connection (generation excluded)."""
    elapsed = 0.0
    for index, parsed in enumerate(nights):
        started = time.perf_counter()
        loader(engine, parsed, f"night-{index:03d}", START + timedelta(days=index))
        if index:
            elapsed += time.perf_counter() - started
    return sum(rows_of(n) for n in nights[1:]) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--naive-nights", type=int, default=11, help="nights in the side-by-side comparison (the first is a warm-up)")
    args = parser.parse_args()
    rng = random.Random(2026)
    server = db.database_url()
    first = [night(i, rng) for i in range(args.naive_nights)]
    print(f"matrix: {len(BACKENDS)} backends x {len(PROFILES)} profiles x EP {EP_SIZES} x {len(SIZES)} sizes x 2 ops "
          f"x every rank = {rows_of(first[0]):,} measurement rows a night")

    with db.scratch_database(server, "moecomm_bench") as url:
        engine = db.make_engine(url)
        naive = timed_loads(engine, first, naive_load)
        engine.dispose()
    with db.scratch_database(server, "moecomm_bench") as url:
        engine = db.make_engine(url)
        ours_same = timed_loads(engine, first, store.load)
        engine.dispose()
    print(f"same {rows_of(first[0]) * (len(first) - 1):,} rows ({len(first) - 1} nights after a warm-up one): naive ORM row by row "
          f"{naive:,.0f} rows/s; moecomm load {ours_same:,.0f} rows/s; ratio {ours_same / naive:.1f}x")

    with db.scratch_database(server, "moecomm_bench") as url:
        engine = db.make_engine(url)
        elapsed, total = 0.0, 0
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        for index in range(args.nights):
            parsed = night(index, rng)
            started = time.perf_counter()
            store.load(engine, parsed, f"night-{index:03d}", START + timedelta(days=index))
            elapsed += time.perf_counter() - started
            total += rows_of(parsed)
        print(f"a year: {args.nights} nights, {total:,} measurement rows loaded at {total / elapsed:,.0f} rows/s "
              f"({elapsed:.1f} s)")
        with engine.connect() as conn:
            conn.execute(sa.text("ANALYZE"))
            conn.commit()
        series = query.SeriesFilter(backend="NVLINK_ONE_SIDED", profile="deepseek_v3", ep_size=16,
                                    local_batch_size=1024, op="dispatch")
        points = query.trend(engine, series)
        times = []
        for _ in range(20):
            started = time.perf_counter()
            query.trend(engine, series)
            times.append((time.perf_counter() - started) * 1000)
        print(f"one series' trend over the year ({len(points)} nights): median {statistics.median(times):.1f} ms, "
              f"max {max(times):.1f} ms (20 runs)")
        started = time.perf_counter()
        with engine.connect() as conn:
            count = len(conn.execute(sa.text("SELECT * FROM nightly_series")).all())
        print(f"the nightly series view over the year: {count:,} points in {time.perf_counter() - started:.2f} s")
        engine.dispose()


if __name__ == "__main__":
    main()
