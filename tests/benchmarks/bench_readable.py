"""What the readable views cost at a year's scale: `table` choosing each series' own last nights,
detect's count of the series too short to test, and the report's spreads.

The year is the loader benchmark's (`bench_load.night`: 6 backends x 2 profiles x EP 4, 8, 16 x 16
sizes x 2 ops, --iter_stats, 1,152 series, 420,480 series-nights over 365 nights), loaded into a
scratch database. Prints, in one process against one server, each figure beside the one it
replaces or sits beside:
  * `table` for one backend, profile and EP size (32 series), `--last 10`: the earlier query (the
    last 10 runs of the whole database, then those runs' rows) and the per-series one
    (`query.trend_table`); and the per-series one with no filter (all 1,152 series);
  * detect's count of too-short series (`alerts.too_short`) beside a plain read of the whole
    `nightly_series` view (what detection's history read costs today);
  * the report's spreads of the last 8 nights (`report._spreads`; the rest of the report is the
    series helper's and not timed here).
Each time is the median of `--repeat` runs.

Usage: python tests/benchmarks/bench_readable.py [--nights 365] [--repeat 5]
The database server is MOECOMM_DATABASE_URL's (its user must be allowed to create databases)
or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))
from bench_load import START, night  # noqa: E402

from moecomm_tasks import alerts, db, query, report, store  # noqa: E402
from moecomm_tasks.knobs import KNOB_FIELDS  # noqa: E402


def earlier_table(engine: sa.Engine, series: query.SeriesFilter, last: int) -> int:
    """The query `table` ran before: the last `last` runs of the database, then their rows."""
    where, params = series.where()
    with engine.connect() as conn:
        run_ids = [r for (r,) in conn.execute(sa.text(
            "SELECT run_id FROM run WHERE kind = 'nightly' ORDER BY run_at DESC, run_id DESC LIMIT :n"), {"n": last})]
        rows = conn.execute(sa.text(f"""
            SELECT backend, profile, ep_size, local_batch_size, op, run_id, median_us, {', '.join(KNOB_FIELDS)}
            FROM nightly_series WHERE {where} AND run_id = ANY(:runs)"""), {**params, "runs": run_ids}).all()
    return len(rows)


def timed(repeat: int, work) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(2026)
    with db.scratch_database(db.database_url(), "moecomm_bench") as url:
        engine = db.make_engine(url)
        started = time.perf_counter()
        for index in range(args.nights):
            store.load(engine, night(index, rng), f"scheduled__{(START + timedelta(days=index)).isoformat()}",
                       START + timedelta(days=index))
        with engine.connect() as conn:
            conn.execute(sa.text("ANALYZE"))
            conn.commit()
            points = conn.execute(sa.text("SELECT count(*) FROM nightly_series")).scalar()
        print(f"{args.nights} nights loaded ({points:,} series-nights) in {time.perf_counter() - started:.0f} s")

        one = query.SeriesFilter(backend="NVLINK_ONE_SIDED", profile="deepseek_v3", ep_size=16)
        old, rows = timed(args.repeat, lambda: earlier_table(engine, one, 10))
        new, groups = timed(args.repeat, lambda: query.trend_table(engine, one, 10))
        print(f"table, one backend/profile/EP (--last 10): earlier query (last 10 runs of the database) "
              f"{old * 1000:.0f} ms ({rows} rows); per series {new * 1000:.0f} ms "
              f"({sum(len(g.rows) for g in groups)} series, {len(groups)} table(s))")
        every, groups = timed(args.repeat, lambda: query.trend_table(engine, query.SeriesFilter(), 10))
        print(f"table, every series (--last 10): per series {every * 1000:.0f} ms "
              f"({sum(len(g.rows) for g in groups)} series)")

        def whole_view() -> int:
            with engine.connect() as conn:
                return len(conn.execute(sa.text("SELECT * FROM nightly_series WHERE NOT excluded")).all())

        short, missing = timed(args.repeat, lambda: alerts.too_short(engine))
        view, _ = timed(min(args.repeat, 3), whole_view)
        print(f"detect's too-short count: {short * 1000:.0f} ms ({sum(missing.values())} series short); "
              f"reading the whole nightly_series view: {view * 1000:.0f} ms")

        with engine.connect() as conn:
            last_runs = [r for (r,) in conn.execute(sa.text(
                "SELECT run_id FROM run ORDER BY run_at DESC LIMIT :n"), {"n": report.BASELINE_NIGHTS + 1})]

        def spreads() -> int:
            with engine.connect() as conn:
                return len(report._spreads(conn, last_runs))

        spread_s, count = timed(args.repeat, spreads)
        print(f"report: its spreads of the last {len(last_runs)} nights {spread_s * 1000:.0f} ms ({count:,} values)")
        engine.dispose()


if __name__ == "__main__":
    main()
