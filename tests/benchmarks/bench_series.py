"""Series at a year's scale: detection of one new night, the report, the dashboards' queries and a
night's load, each beside the full re-run, on a year of the loader benchmark's matrix.

The year: tests/benchmarks/bench_load.py's matrix (6 backends x 2 profiles x EP 4, 8, 16 x 16
sizes x 2 ops, every rank, --iter_stats; 1,152 series, 10,752 per-rank values a night), 365
nights, stationary (no change in it), in a scratch database on a PostgreSQL with its default
settings. Prints, from one process:

  * loading the last night (`store.load`, which fills `series_night` in its transaction), beside
    the mean load of the year's nights;
  * detecting that one new night (`alerts.run_detection`: the nights not tested yet) beside the
    full re-run (`full=True`: every night of every series), and whether both leave the same
    alerts (the full re-run's run into an empty alert table);
  * the report (`report.write_report`) with its history query alone, beside that query reading
    every series-night as the report did before;
  * every Grafana panel, variable and annotation query (dashboards/*.json, variables set to one
    series of the year), EXPLAIN ANALYZE'd: execution time each (warm), and the plan of the
    slowest with --plans.

Usage: python tests/benchmarks/bench_series.py [--nights 365] [--plans] [--keep-year NAME] [--skip-full] [--profile]
The database server is MOECOMM_DATABASE_URL's (its user must be allowed to create databases) or
the embedded PostgreSQL. With --keep-year NAME, the year's first nights and their first full
detection are built once into the database NAME, kept, and copied by later runs (which then take
minutes, not half an hour); --skip-full leaves out the full re-run and the alerts' comparison.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))

from bench_load import BACKENDS, EP_SIZES, PROFILES, SIZES, START, night  # noqa: E402

from moecomm_tasks import alerts, db, report, store  # noqa: E402
from moecomm_tasks.series import SERIES_KEY  # noqa: E402

GRAFANA = Path(__file__).parents[2] / "sql" / "deploy" / "grafana" / "dashboards"
VARIABLES = {"backend": "NVLINK_ONE_SIDED", "profile": "deepseek_v3", "ep_size": "16", "size": "1024",
             "op": "dispatch", "quant": "FP8_BLOCK_SCALES", "gpu": "NVIDIA H200", "timing_method": "cuda_events",
             "cuda_graph": "false", "pdl": "false", "perfect_router": "false", "payload_in_workspace": "false",
             "low_precision_combine": "false"}
ALERT_COLUMNS = (*SERIES_KEY, "direction", "last_good_run_id", "first_bad_run_id", "detected_run_id",
                 "round(change_pct::numeric, 6)")
# What the report's history query did before series_night: every series-night of the night's
# series up to the night, of which it kept the last 30 per series.
OLD_REPORT_HISTORY = """
    WITH night AS (SELECT run_at FROM run WHERE run_id = :run),
         s AS (SELECT DISTINCT series_pk FROM series_night WHERE run_id = :run)
    SELECT n.* FROM series_night n JOIN s USING (series_pk)
    WHERE n.run_at <= (SELECT run_at FROM night) AND n.kind = 'nightly' AND NOT n.excluded
    ORDER BY n.series_pk, n.run_at, n.run_id"""


def grafana_sql(sql: str, time_from: str, time_to: str) -> str:
    """Grafana's macros and variables, substituted as Grafana does (single values)."""
    import re

    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN '{time_from}' AND '{time_to}'", sql)
    for name in sorted(VARIABLES, key=len, reverse=True):
        sql = sql.replace(f"${name}", VARIABLES[name])
    return sql


def dashboard_queries():
    for path in sorted(GRAFANA.glob("*.json")):
        board = json.loads(path.read_text())
        days = int(board["time"]["from"].removeprefix("now-").removesuffix("d"))
        for var in board["templating"]["list"]:
            yield path.stem, f"variable {var['name']}", var["query"], days
        for annotation in board["annotations"]["list"]:
            yield path.stem, f"annotation {annotation['name']}", annotation["target"]["rawSql"], days
        for panel in board["panels"]:
            for t in panel["targets"]:
                yield path.stem, f"panel {panel['id']} ({panel['type']})", t["rawSql"], days


def alert_set(engine: sa.Engine) -> set[tuple]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text(f"SELECT {', '.join(ALERT_COLUMNS)} FROM alert")).all())


def timed(what, *args, **kwargs):
    started = time.perf_counter()
    result = what(*args, **kwargs)
    return result, time.perf_counter() - started


def build_year(engine: sa.Engine, nights: int, rng: random.Random) -> None:
    """Load the year's first `nights` - 1 nights into `engine`'s (migrated) database and run the
    first full detection, printing what each took."""
    loads = []
    for index in range(nights - 1):
        parsed = night(index, rng)
        loads.append(timed(store.load, engine, parsed, f"night-{index:03d}", START + timedelta(days=index))[1])
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE"))
        conn.commit()
        values = conn.execute(sa.text("SELECT count(*) FROM measurement_flat")).scalar()
    print(f"the year's first {nights - 1} nights loaded ({values:,} per-rank values): "
          f"mean {sum(loads[1:]) / len(loads[1:]):.2f} s a night, max {max(loads[1:]):.2f} s")
    raised, first_full = timed(alerts.run_detection, engine)
    print(f"full detection through night {nights - 1} (sets every series' scan): {first_full:.1f} s, "
          f"{len(raised)} alerts")
    engine.dispose()


def have_year(name: str, nights: int) -> bool:
    """Whether the database `name` holds the year's first `nights` - 1 nights, detected; if it does
    not exist, create and migrate it (empty) for `build_year`."""
    from moecomm_tasks import migrate

    admin = sa.create_engine(db.database_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
        if not exists:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    engine = db.make_engine(make_url(db.database_url()).set(database=name).render_as_string(hide_password=False))
    migrate.upgrade(engine)
    with engine.connect() as conn:
        loaded = conn.execute(sa.text("SELECT count(*) FROM run")).scalar()
        scanned = conn.execute(sa.text("SELECT count(*) FROM series_scan")).scalar()
    engine.dispose()
    if exists and (loaded, bool(scanned)) != (nights - 1, True):
        raise SystemExit(f"database {name} holds {loaded} nights, not the {nights - 1} of a year's build: "
                         "drop it or name another")
    return bool(exists)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--plans", action="store_true", help="print the plan of each query over 20 ms")
    parser.add_argument("--keep-year", metavar="NAME", help="build the year's first nights once into database NAME "
                                                            "and keep it; later runs copy it")
    parser.add_argument("--skip-full", action="store_true", help="leave out the full re-run")
    parser.add_argument("--profile", action="store_true",
                        help="profile the night's detection and the report (the report's is printed past its "
                             "target anyway)")
    args = parser.parse_args()
    if not 30 <= args.nights <= 3650:
        parser.error("--nights: 30 to 3650")
    rng = random.Random(2026)
    print(f"matrix: {len(BACKENDS)} backends x {len(PROFILES)} profiles x EP {EP_SIZES} x {len(SIZES)} sizes x 2 ops "
          f"= {len(BACKENDS) * len(PROFILES) * len(EP_SIZES) * len(SIZES) * 2:,} series, {args.nights} nights")
    if args.keep_year and not have_year(args.keep_year, args.nights):
        build_year(db.make_engine(make_url(db.database_url()).set(database=args.keep_year)
                                  .render_as_string(hide_password=False)), args.nights, rng)
    elif args.keep_year:
        for index in range(args.nights - 1):  # the same random draws as the build
            night(index, rng)
        print(f"the year's first {args.nights - 1} nights and their full detection: kept in {args.keep_year}")
    with db.scratch_database(db.database_url(), "moecomm_bench_series", template=args.keep_year) as url:
        engine = db.make_engine(url)
        if not args.keep_year:
            build_year(engine, args.nights, rng)

        last = f"night-{args.nights - 1:03d}"
        _, load_s = timed(store.load, engine, night(args.nights - 1, rng), last, START + timedelta(days=args.nights - 1))
        print(f"loading one night (1,152 series, series_night filled in its transaction): {load_s:.2f} s "
              "(target < 1 s)")

        # Timed without a profiler (which slows Python down several times); --profile profiles it.
        profile = cProfile.Profile()
        if args.profile:
            profile.enable()
        new, one_night = timed(alerts.run_detection, engine)
        profile.disable()
        nightly = alert_set(engine)
        if args.skip_full:
            print(f"detecting one new night: {one_night:.2f} s ({len(new)} new alerts; target <= 10 s) | "
                  "full re-run: skipped (--skip-full)")
        else:
            with engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM alert"))
            _, full_s = timed(alerts.run_detection, engine, full=True)
            rerun = alert_set(engine)
            print(f"detecting one new night: {one_night:.2f} s ({len(new)} new alerts; target <= 10 s) | "
                  f"full re-run: {full_s:.1f} s")
            print(f"same alerts: {nightly == rerun} ({len(nightly)} after the nightly detection, {len(rerun)} after "
                  f"the full re-run; only in nightly {len(nightly - rerun)}, only in the full re-run "
                  f"{len(rerun - nightly)})")
        if args.profile:
            print("(detection timed under the profiler)")
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("cumulative").print_stats(12)
            print(out.getvalue())

        with engine.connect() as conn:
            _, old_history = timed(lambda: conn.execute(sa.text(OLD_REPORT_HISTORY), {"run": last}).all())
            rows = None
            history, new_history = timed(report._history, conn, last)
            rows = sum(len(points) for points in history.values())
        with tempfile.TemporaryDirectory() as out:
            _, report_s = timed(report.write_report, engine, out, last)
        print(f"the report: {report_s:.2f} s (target <= 5 s); its history query {new_history:.2f} s ({rows:,} points: "
              f"each series' last {report.HISTORY_NIGHTS}) | every series-night up to the night, as before: "
              f"{old_history:.2f} s")
        if report_s > 5 or args.profile:  # once more, profiled (this process only, not its workers)
            profile = cProfile.Profile()
            with tempfile.TemporaryDirectory() as out:
                profile.enable()
                report.write_report(engine, out, last)
                profile.disable()
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(12)
            print(out.getvalue())

        end = START + timedelta(days=args.nights - 1, hours=1)
        print("dashboard queries (EXPLAIN ANALYZE, execution time of a warm second run; target <= 100 ms each):")
        worst = 0.0
        with engine.connect() as conn:
            for board, where, sql, days in dashboard_queries():
                text = grafana_sql(sql, (end - timedelta(days=days)).isoformat(), end.isoformat()).replace(":", r"\:")
                for _ in range(2):
                    plan = conn.execute(sa.text(f"EXPLAIN (ANALYZE, FORMAT JSON) {text}")).scalar()
                    result = conn.execute(sa.text(text)).all()
                ms = plan[0]["Execution Time"] + plan[0]["Planning Time"]
                worst = max(worst, ms)
                print(f"  {board:16} {where:34} {ms:8.1f} ms  {len(result):6} rows")
                if args.plans and ms > 20:
                    conn.execute(sa.text("SELECT 1"))
                    explained = conn.execute(sa.text(f"EXPLAIN (ANALYZE, COSTS OFF) {text}")).scalars().all()
                    print("    " + "\n    ".join(explained))
        print(f"slowest dashboard query: {worst:.1f} ms")
        engine.dispose()


if __name__ == "__main__":
    main()
