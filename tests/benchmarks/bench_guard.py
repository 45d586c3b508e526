"""What the database watchdog costs: every call of a `GuardedConnection` registers with the
watchdog and unregisters after (`moecomm_tasks.dbguard`). Side by side in one process, on one
server, the same bounds otherwise (connect timeout, keepalives, TCP user timeout, statement and
idle-in-transaction timeouts), with and without the guard:

  * the guard's own work per call, without the database (100,000 registrations), in µs;
  * round trips of `SELECT 1` through SQLAlchemy (10 rounds of 1,000), in µs each;
  * our loader (`store.load`) on nights of the full synthetic matrix of bench_load.py (10,752
    measurement rows a night; the first night, untimed, warms up), in rows per second.

The two variants take turns (round by round, night by night, in alternating order), each in a
database of its own, so that a busy machine slows both alike; each figure is the best round (or
night) and the median, since on a shared machine the best is the one least disturbed.

Usage: python tests/benchmarks/bench_guard.py [--nights 6]
The database server is MOECOMM_DATABASE_URL's (its user must be allowed to create databases)
or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_load import START, night, rows_of  # noqa: E402

from moecomm_tasks import db, store  # noqa: E402
from moecomm_tasks.dbguard import WATCHDOG, Timeouts  # noqa: E402

ROUND_TRIPS, ROUNDS = 1000, 10


def unguarded_engine(url: str) -> sa.Engine:
    """`db.make_engine` without the watchdog: plain psycopg2 connections, the same bounds otherwise."""
    args = {k: v for k, v in Timeouts.from_env().connect_args().items() if k != "connection_factory"}
    return sa.create_engine(url, pool_pre_ping=True, connect_args={**args, "application_name": "moecomm"})


def round_trip_us(conn: sa.Connection) -> float:
    started = time.perf_counter()
    for _ in range(ROUND_TRIPS):
        conn.execute(sa.text("SELECT 1"))
    return (time.perf_counter() - started) / ROUND_TRIPS * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=6, help="nights loaded per variant (the first is a warm-up)")
    args = parser.parse_args()
    nights = [night(i, random.Random(2026 + i)) for i in range(args.nights)]
    server = db.database_url()
    variants = {"without the guard": unguarded_engine, "with the guard": db.make_engine}
    with ExitStack() as stack:
        engines = {name: make(stack.enter_context(db.scratch_database(server, "moecomm_bench")))
                   for name, make in variants.items()}
        trips: dict[str, list[float]] = {name: [] for name in engines}
        loading: dict[str, list[float]] = {name: [] for name in engines}
        conns = {name: stack.enter_context(engine.connect()) for name, engine in engines.items()}
        for turn in range(ROUNDS):
            for name in sorted(engines, reverse=bool(turn % 2)):
                trips[name].append(round_trip_us(conns[name]))
        for index, parsed in enumerate(nights):
            for name in sorted(engines, reverse=bool(index % 2)):
                started = time.perf_counter()
                store.load(engines[name], parsed, f"night-{index:03d}", START + timedelta(days=index))
                if index:
                    loading[name].append(rows_of(parsed) / (time.perf_counter() - started))
        guarded = conns["with the guard"].connection.dbapi_connection
        started = time.perf_counter()
        for _ in range(100_000):
            WATCHDOG.leave(WATCHDOG.enter(guarded))
        own_us = (time.perf_counter() - started) / 100_000 * 1e6
        for conn in conns.values():
            conn.close()
        for engine in engines.values():
            engine.dispose()
    for name in variants:
        print(f"{name}: SELECT 1 round trip best {min(trips[name]):.1f} µs, median {statistics.median(trips[name]):.1f} "
              f"µs ({ROUNDS} x {ROUND_TRIPS}); load best {max(loading[name]):,.0f} rows/s, median "
              f"{statistics.median(loading[name]):,.0f} rows/s ({len(nights) - 1} nights of {rows_of(nights[0]):,} rows)")
    print(f"the guard's own work per call: {own_us:.2f} µs (100,000 registrations, no database)")
    (plain, guarded) = (min(trips[n]) for n in variants)
    (plain_rate, guarded_rate) = (max(loading[n]) for n in variants)
    print(f"guard's cost (best against best): round trip {guarded - plain:+.1f} µs ({guarded / plain:.3f}x); "
          f"load rate {guarded_rate / plain_rate:.3f}x")


if __name__ == "__main__":
    main()
