"""The `moecomm` command line.

Exit codes: 0 success; 1 `load` kept part of its input and dropped the rest (printed with the
reasons); 2 `load` found nothing loadable and wrote nothing (argparse's usage errors exit 2 too);
3 any other error, a database that is unreachable, dies or stops answering included: one line
that says what failed (and what to do).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import psycopg2
import sqlalchemy as sa
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from moecomm_tasks import display, limits, query
from moecomm_tasks.domain import Alert, AlertKind, AlertState, Confirmation
from moecomm_tasks.errors import MoecommError
from moecomm_tasks.knobs import TIMING_METHODS

EXIT_OK, EXIT_PARTIAL, EXIT_NOTHING, EXIT_ERROR = 0, 1, 2, 3

console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


def _engine():
    from moecomm_tasks import db, migrate

    engine = db.make_engine()
    applied = migrate.ensure_current(engine)
    if applied:
        err_console.print(f"applied {len(applied)} migration(s)")
    return engine


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def _table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a table. Everything in it is shown as text: run ids and names come from the data,
    and a `[/x]` in one would otherwise be read as Rich markup (and fail)."""
    table = Table(title=None if title is None else Text(title), box=box.SIMPLE_HEAD, title_justify="left")
    for column in columns:
        table.add_column(Text(column), justify="left" if column in ("run_id", "backend", "profile", "op", "kernel")
                         else "right")
    for row in rows:
        table.add_row(*(Text(_fmt(v)) for v in row))
    console.print(table)


def _parse_time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise MoecommError(f"--run-at {text!r} is not an ISO-8601 time (e.g. 2026-11-24T02:00:00+00:00)") from exc
    if value.tzinfo is None:
        raise MoecommError(f"--run-at {text!r} has no time zone: add one (e.g. +00:00)")
    return value


def cmd_db(args: argparse.Namespace) -> int:
    from moecomm_tasks import db, migrate
    from moecomm_tasks.embedded import EmbeddedPostgres

    if args.action == "upgrade":
        applied = migrate.upgrade(db.make_engine())
        console.print(f"{len(applied)} migration(s) applied" + "".join(
            f"\n  {m.version:04d}_{m.name}" for m in applied))
    elif args.action == "stop":
        stopped = EmbeddedPostgres.default().stop()
        console.print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
    elif args.action == "status":
        configured = os.environ.get("MOECOMM_DATABASE_URL")
        if configured:
            console.print(f"MOECOMM_DATABASE_URL: {libpq_url(configured)}", markup=False, soft_wrap=True)
            return EXIT_OK
        server = EmbeddedPostgres.default()
        port = server.running_port()
        console.print(f"embedded PostgreSQL in {server.root}: "
                      + (f"running on 127.0.0.1:{port}" if port else "not running"), markup=False)
        if port:
            console.print(f"psql {libpq_url(server.url(port))}", markup=False, soft_wrap=True)
    return EXIT_OK


def libpq_url(url: str) -> str:
    """`url` (a SQLAlchemy URL, `postgresql+psycopg2://...`) as a libpq connection URI, the form
    `psql`, `pg_dump` and other PostgreSQL tools take (they refuse the `+driver` part)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise MoecommError(f"MOECOMM_DATABASE_URL is not a SQLAlchemy URL: {exc}") from None
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def load_paths(paths: Sequence[Path], run_id: str, run_at: datetime | None, progress: bool) -> int:
    """Parse and load `paths` under `run_id`; print what happened; return the exit code."""
    from moecomm_tasks import parse, store

    try:
        limits.run_id(run_id)
    except limits.Invalid as exc:
        raise MoecommError(str(exc)) from None
    folders = [str(p) for p in paths if p.is_dir()]
    if folders:
        raise MoecommError(f"{', '.join(folders)}: a folder, not a file: give the files in it "
                           "(e.g. the job's stdout, stderr and output file)")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MoecommError(f"no such file: {', '.join(missing)}")
    try:
        with err_console.status(f"reading {len(paths)} file(s)") if progress else contextlib.nullcontext():
            parsed = parse.parse_paths(paths)
    except OSError as exc:
        raise MoecommError(f"cannot read {exc.filename}: {exc.strerror}") from None
    for dropped in parsed.dropped:
        err_console.print(f"dropped: {dropped.source}:{dropped.line}: {dropped.reason}", markup=False)
    for key, count in parsed.omitted.items():
        err_console.print(f"dropped: {count} more item(s){'' if key is None else ' of job ' + key} not listed "
                          f"(at most {limits.MAX_DROPPED_PER_JOB} are listed and kept per job; the count is "
                          "stored with the job)", markup=False)
    for failure in parsed.failures:
        last = failure.traceback.strip().splitlines()[-1] if failure.traceback.strip() else ""
        err_console.print(f"worker failure: {failure.source}: rank {failure.rank}: {last}", markup=False)
    if not parsed.loadable:
        err_console.print("nothing loadable found: no result object or skip line with a run header; "
                          "nothing was written")
        return EXIT_NOTHING
    result = store.load(_engine(), parsed, run_id, run_at)
    for job in result.jobs:
        console.print(f"{job.status}: run {run_id} job {job.job_key}: {job.measurements} measurements, "
                      f"{job.kernels} kernel timings, {job.skips} skips ({job.state})", markup=False)
    return EXIT_PARTIAL if parsed.incomplete else EXIT_OK


def cmd_load(args: argparse.Namespace) -> int:
    run_at = _parse_time(args.run_at) if args.run_at else None
    return load_paths(args.paths, args.run_id, run_at, progress=err_console.is_terminal and len(args.paths) > 1)


def cmd_runs(args: argparse.Namespace) -> int:
    from moecomm_tasks import alerts, runs

    if args.action == "delete":
        if not args.run_id:
            raise MoecommError("usage: moecomm runs delete RUN_ID --yes")
        engine = _engine()
        contents = runs.contents(engine, args.run_id)
        if not args.yes:
            console.print(f"run {args.run_id} holds {contents}; nothing was deleted: add --yes to delete it "
                          "(or `moecomm runs exclude` keeps it out of detection without deleting it)", markup=False)
            return EXIT_ERROR
        runs.delete(engine, args.run_id)
        console.print(f"run {args.run_id} deleted: {contents}", markup=False)
        return EXIT_OK
    if args.action in ("exclude", "include"):
        if not args.run_id or (args.action == "exclude" and not args.reason):
            raise MoecommError("usage: moecomm runs exclude RUN_ID --reason TEXT | moecomm runs include RUN_ID")
        alerts.set_excluded(_engine(), args.run_id, args.reason if args.action == "exclude" else None)
        console.print(f"run {args.run_id}: " + (f"excluded ({args.reason})" if args.action == "exclude" else "included"))
        return EXIT_OK
    rows = query.runs(_engine(), args.limit)
    _table(None, ["run_id", "run_at", "jobs", "succeeded", "partial", "failed", "measurements", "excluded"], rows)
    return EXIT_OK


def _series(args: argparse.Namespace) -> query.SeriesFilter:
    return query.SeriesFilter(
        backend=args.backend, profile=args.profile, ep_size=args.ep_size, local_batch_size=args.size,
        op=args.op, quant_algo=args.quant, gpu_model=args.gpu, cuda_graph=args.cuda_graph, pdl=args.pdl,
        perfect_router=args.perfect_router, payload_in_workspace=args.payload_in_workspace,
        low_precision_combine=args.low_precision_combine, timing_method=args.timing_method,
    )


def cmd_trend(args: argparse.Namespace) -> int:
    rows = query.trend(_engine(), _series(args))
    if not rows:
        raise MoecommError("no series matches (see: moecomm runs, and the views in the README)")
    _table(None, ["run_id", "run_at", "excluded", "ranks", "median µs", "slowest µs", "slowest rank",
                  "within-night stdev µs", "night µs (detector)"], rows)
    return EXIT_OK


NOISE_LEGEND = (f"±: the night's spread (half its ranks' range, or its iterations' stdev if larger); "
                f"{display.MARK}: moved by more than its and the night before's spreads together")
# At most this many tables (groups of series with the same last nights) are printed.
MAX_TREND_TABLES = 20


def print_trend_table(engine, series: query.SeriesFilter, last: int, runs: Sequence[str] | None = None) -> None:
    """Each matching series against its own last `last` nights; one table per set of nights."""
    if last < 1:
        raise MoecommError("--last must be 1 or more (nights per series)")
    groups = query.trend_table(engine, series, last, runs)
    if not groups:
        raise MoecommError("no series matches (see: moecomm runs, and the views in the README)")
    for group in groups[:MAX_TREND_TABLES]:
        headers = display.short_run_ids(group.run_ids)
        # The quantization and GPU model get columns only where the table's series differ in them.
        varying = [i for i, name in ((6, "quant"), (7, "gpu")) if len({row[i] for row in group.rows}) > 1]
        shared = ", ".join(f"{name} {group.rows[0][i]}" for i, name in ((6, "quant"), (7, "gpu"))
                           if i not in varying and group.rows[0][i])
        title = (f"median µs across ranks, last {len(group.run_ids)} night(s) of {len(group.rows)} series"
                 + (f" ({shared})" if shared else "")
                 + (f"; runs {headers.dropped}" if headers.dropped else "") + f"\n{NOISE_LEGEND}")
        _table(title, ["backend", "profile", "ep", "size", "op", "knobs",
                       *({6: "quant", 7: "gpu"}[i] for i in varying), *headers.labels],
               [(*row[:6], *(row[i] for i in varying),
                 *(display.with_spread(c.value_us, c.spread_us, c.beyond_noise) for c in row[8:]))
                for row in group.rows])
    if len(groups) > MAX_TREND_TABLES:
        err_console.print(f"{len(groups) - MAX_TREND_TABLES} more table(s) of series with other nights not shown: "
                          "narrow it down (--backend, --profile, --gpu, ...)")


def cmd_table(args: argparse.Namespace) -> int:
    print_trend_table(_engine(), _series(args), args.last)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    if Path(args.run_a).is_file() and Path(args.run_b).is_file():
        from moecomm_tasks import compare

        stat, rank = args.stat or "median", 0 if args.rank is None else args.rank
        rows = compare.compare_files(Path(args.run_a), Path(args.run_b), stat=stat, rank=rank, kernels=args.kernels)
        _table(f"A = {args.run_a}, B = {args.run_b}; {stat} of rank {rank}; A / B above 1: B is faster\n"
               f"±: the iterations' standard deviation; {display.MARK}: beyond the noise (more than twice the "
               "standard error of the difference)",
               ["backend", "tokens", "op", "kernel", "A µs", "B µs", "A / B", "noise"], compare.table_rows(rows))
        return EXIT_OK
    if args.kernels or args.stat or args.rank is not None:
        raise MoecommError("--kernels, --stat and --rank compare two output files; for two runs in the database "
                           "see kernel_flat and measurement_flat (README: The SQL interface)")
    rows = query.compare(_engine(), args.run_a, args.run_b)
    shown = []
    for r in rows:
        spread_a = display.spread_us(r.a_half_rank_range_us, r.a_within_night_stdev_us)
        spread_b = display.spread_us(r.b_half_rank_range_us, r.b_within_night_stdev_us)
        moved = display.beyond_noise(r.a_us, spread_a, r.b_us, spread_b)
        shown.append((r.backend, r.profile, r.ep_size, r.local_batch_size, r.op, query.knob_label(r),
                      display.with_spread(r.a_us, spread_a), display.with_spread(r.b_us, spread_b),
                      None if r.speedup is None else f"{r.speedup:.2f}" + (display.MARK if moved else "")))
    _table(f"A = {args.run_a}, B = {args.run_b}; speedup = A / B (above 1: B is faster); µs are the median "
           f"across ranks\n{NOISE_LEGEND.replace('the night before', 'the other run')}",
           ["backend", "profile", "ep", "size", "op", "knobs", "A µs", "B µs", "speedup"], shown)
    return EXIT_OK


def cmd_detect(args: argparse.Namespace) -> int:
    from moecomm_tasks import alerts, notify, outbox

    engine = _engine()
    if args.notify:  # first what earlier runs could not deliver
        _print_deliveries(outbox.deliver_due(engine))
    channels = list(notify.channels()) if args.notify else []
    raised = alerts.run_detection(engine, deliver_to=channels, digest=args.notify or "", confirm=not args.unconfirmed,
                                  full=args.full)
    candidates = sum(a.confirmation is Confirmation.CANDIDATE for a in raised)
    if candidates:
        err_console.print(f"{candidates} new alert(s) are candidates: `moecomm confirm` runs their jobs again and "
                          "sends those that the re-run confirms (the nightly DAG does this itself)")
    if args.notify:
        _print_deliveries(outbox.deliver_due(engine), empty="nothing new, nothing sent" if channels
                          else "no channel configured (README, Configuration)")
    _print_too_short(alerts.too_short(engine))
    if args.format == "json":
        print(json.dumps([a.as_json() for a in raised], indent=2, default=str))
    else:
        _table(f"{len(raised)} new alert(s)", ["alert_id", "direction", "change %", "confidence", "backend", "profile", "ep",
                                                "size", "op", "last good", "first bad", "confirmation"],
               [(a.alert_id, a.direction, a.change_pct, a.confidence, a.backend, a.profile, a.ep_size,
                 a.local_batch_size, a.op, a.last_good_run_id, a.first_bad_run_id, a.confirmation) for a in raised])
        _print_kernel_changes(raised)
    return EXIT_OK


def _print_kernel_changes(listed: Sequence[Alert]) -> None:
    """Under a table of alerts, what each kernels alert found changed."""
    from moecomm_tasks.kernel_checks import summary

    for alert in listed:
        if alert.kind is AlertKind.KERNELS:
            console.print(f"#{alert.alert_id} kernels {alert.backend} {alert.profile} EP{alert.ep_size} "
                          f"{alert.local_batch_size} tokens, {alert.last_good_run_id} -> {alert.first_bad_run_id}:",
                          markup=False, soft_wrap=True)
            for line in summary(alert.kernel_diff or {}):
                console.print(f"  {line}", markup=False, soft_wrap=True)


def _print_too_short(missing: dict[int, int]) -> None:
    """Say how many series detection could not test yet, and how many nights they still need."""
    from moecomm_tasks.detect import nights_before_testing

    if not missing:
        return
    groups = sorted(missing.items())
    shown = ", ".join(f"{series} need {nights} more" for nights, series in groups[:4])
    more = f", {sum(s for _, s in groups[4:])} need more than {groups[3][0]}" if len(groups) > 4 else ""
    err_console.print(f"{sum(missing.values())} series are too short to test yet (a series is tested once it has "
                      f"{nights_before_testing()} nights): {shown}{more} night(s)", markup=False, soft_wrap=True)


def _print_deliveries(outcome: dict[str, str], empty: str | None = None) -> None:
    for target, result in outcome.items():
        err_console.print(f"notification {target}: {result}", markup=False, soft_wrap=True)
    if not outcome and empty:
        err_console.print(f"notifications: {empty}", markup=False)


def cmd_alerts(args: argparse.Namespace) -> int:
    from moecomm_tasks import alerts, outbox

    engine = _engine()
    if args.action == "deliveries":
        _table(None, ["id", "alert_id", "channel", "digest", "state", "attempts", "next attempt", "delivered",
                      "last error"], outbox.deliveries(engine))
        return EXIT_OK
    if args.action == "list":
        from moecomm_tasks.bisection_report import short

        listed = alerts.list_alerts(engine, args.state and AlertState(args.state))
        if args.format == "json":
            print(json.dumps([a.as_json() for a in listed], indent=2, default=str))
            return EXIT_OK
        _table(None, ["alert_id", "state", "direction", "change %", "confidence", "backend", "profile", "ep", "size", "op",
                      "gpu", "last good", "first bad", "note", "confirmation", "bisection"],
               [(a.alert_id, a.state, a.direction, a.change_pct, a.confidence, a.backend, a.profile, a.ep_size,
                 a.local_batch_size, a.op, a.gpu_model, a.last_good_run_id, a.first_bad_run_id, a.state_note,
                 a.confirmation, short(a.bisection_state, a.first_bad_build, a.commit_range)) for a in listed])
        _print_kernel_changes(listed)
        return EXIT_OK
    if args.alert_id is None:
        raise MoecommError(f"moecomm alerts {args.action} needs an alert id")
    state = {"ack": AlertState.ACKNOWLEDGED, "resolve": AlertState.RESOLVED, "mute": AlertState.MUTED}[args.action]
    alerts.set_state(engine, args.alert_id, state, args.note)
    console.print(f"alert {args.alert_id}: {state}")
    return EXIT_OK


def cmd_confirm(args: argparse.Namespace) -> int:
    from moecomm_tasks import confirm, notify, outbox
    from moecomm_tasks.matrix import load_matrix

    engine, matrix = _engine(), load_matrix(args.matrix)
    now = datetime.now(timezone.utc)
    run_id = args.run_id or f"confirm-{now:%Y%m%dT%H%M%S}"
    channels = list(notify.channels()) if args.notify else []
    decisions = confirm.run_all(engine, matrix, run_id, now, channels, args.notify or run_id)
    _table(f"{len(decisions)} candidate(s) decided (re-runs under run {confirm.recheck_run_id(run_id)})",
           ["alert_id", "confirmation", "re-run µs", "position", "note"],
           [(d.alert_id, d.confirmation.value, d.value_us, d.position, d.note) for d in decisions])
    if args.notify:
        _print_deliveries(outbox.deliver_due(engine), empty="nothing confirmed, nothing sent" if channels
                          else "no channel configured (README, Configuration)")
    return EXIT_OK


def cmd_bisect(args: argparse.Namespace) -> int:
    from moecomm_tasks import bisect_command

    return bisect_command.run(args)


def cmd_report(args: argparse.Namespace) -> int:
    from moecomm_tasks import report

    page = report.write_report(_engine(), args.out, args.run_id)
    console.print(f"report: {page}", markup=False)
    return EXIT_OK


def cmd_otava_config(args: argparse.Namespace) -> int:
    from moecomm_tasks import otava

    text = otava.config_yaml(_engine())
    if args.out:
        Path(args.out).write_text(text)
        console.print(f"Otava configuration: {args.out}", markup=False)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from moecomm_tasks import demo

    return demo.regression(args) if args.regression else demo.run(args)


def cmd_samples(args: argparse.Namespace) -> int:
    from moecomm_tasks import demo

    return demo.load_samples(args)


def _add_series_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend")
    parser.add_argument("--profile")
    parser.add_argument("--ep-size", type=int)
    parser.add_argument("--size", type=int, help="local_batch_size (tokens per rank)")
    parser.add_argument("--op", choices=["dispatch", "combine"])
    parser.add_argument("--quant", help="quantization algorithm, e.g. FP8_BLOCK_SCALES")
    parser.add_argument("--gpu", help="GPU model")
    for knob, what in (("cuda-graph", "replayed from a CUDA graph"), ("pdl", "with PDL"),
                       ("perfect-router", "with the perfect router"),
                       ("payload-in-workspace", "with the expert output in the workspace"),
                       ("low-precision-combine", "with low-precision combine")):
        parser.add_argument(f"--{knob}", type=_yes_no, metavar="true|false", help=f"measured {what} or not")
    parser.add_argument("--timing-method", choices=TIMING_METHODS)


def _yes_no(text: str) -> bool:
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    if text.lower() in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _count(text: str) -> int:
    """A non-negative integer (a --limit or --last)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moecomm", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("db", help="the database: upgrade (apply migrations), stop or status of the embedded server "
                                  "(status prints a URL for psql)")
    p.add_argument("action", choices=["upgrade", "stop", "status"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("load", help="load benchmark outputs (stdout, stderr, --output_file) under a run id")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--run-id", required=True)
    p.add_argument("--run-at", help="ISO-8601 time with a zone (default: now)")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("runs", help="list runs, newest first (with why a run is excluded); exclude (quarantine) "
                                    "a run from detection, include it again, or delete it")
    p.add_argument("action", nargs="?", choices=["list", "exclude", "include", "delete"], default="list")
    p.add_argument("run_id", nargs="?")
    p.add_argument("--reason", help="with exclude: why the run is not to be trusted")
    p.add_argument("--yes", action="store_true", help="with delete: really delete (without it, say what would go)")
    p.add_argument("--limit", type=_count, default=50)
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("trend", help="one series' history")
    _add_series_options(p)
    p.set_defaults(func=cmd_trend)

    p = sub.add_parser("table", help="every matching series against its own last nights, each value ± its "
                                     "within-night spread, * where it moved beyond it")
    _add_series_options(p)
    p.add_argument("--last", type=_count, default=10, help="nights per series (default 10)")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("compare", help="A/B table of two runs, or of two benchmark output files (each value ± "
                                       "its spread, * where they differ beyond it)")
    p.add_argument("run_a", help="a run id, or an output file (then run_b is one too)")
    p.add_argument("run_b")
    p.add_argument("--kernels", action="store_true", help="files: also each kernel of the phases")
    p.add_argument("--stat", choices=["mean", "median", "min", "max"], help="files: the statistic (default median)")
    p.add_argument("--rank", type=int, help="files: the rank (default 0)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("detect", help="detect changes in the stored history; print the new alerts (and how many "
                                      "series are still too short to test)")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--unconfirmed", action="store_true",
                   help="store the new alerts as confirmed without re-running their jobs (and send them with --notify)")
    p.add_argument("--notify", metavar="TITLE", help="send the new alerts as one digest under this title (a run id) "
                                                     "to the channels configured in the environment (see README)")
    p.add_argument("--full", action="store_true",
                   help="test every night of every series again, not only the nights not tested yet, and check "
                        "the kernels of every stored night, not only the last 14 days' (the same alerts; "
                        "none is raised twice)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("alerts", help="list alerts, or acknowledge, resolve or mute one; or list the alert "
                                      "digests' deliveries (outbox)")
    p.add_argument("action", choices=["list", "ack", "resolve", "mute", "deliveries"])
    p.add_argument("alert_id", nargs="?", type=int)
    p.add_argument("--state", choices=[s.value for s in AlertState], help="with list: only this state")
    p.add_argument("--format", choices=["table", "json"], default="table", help="with list: a table or JSON")
    p.add_argument("--note", help="with ack, resolve or mute: why")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("confirm", help="run the jobs of the candidate alerts again here and confirm those the "
                                       "re-run agrees with (the nightly DAG does this itself)")
    p.add_argument("--matrix", help="a matrix file or a shipped matrix's name (default: MOECOMM_MATRIX, else cpu)")
    p.add_argument("--run-id", help="the run the re-runs belong to (default: confirm-<now>); they are stored "
                                    "under <run id>-recheck")
    p.add_argument("--notify", metavar="TITLE", help="send the confirmed alerts as one digest under this title")
    p.set_defaults(func=cmd_confirm)

    p = sub.add_parser("bisect", help="bisect a regression alert over the matrix's builds: the bisection DAG, "
                                      "once, in this process; then its verdict (see README: Bisection)")
    p.add_argument("alert_id", type=int, help="the alert (moecomm alerts list)")
    p.add_argument("--matrix", help="a matrix file or a shipped matrix's name (default: MOECOMM_MATRIX, else cpu)")
    p.add_argument("--airflow-home", help="default: $MOECOMM_HOME/airflow")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=cmd_bisect)

    p = sub.add_parser("report", help="write the HTML report of a run (index.html and SVG plots) into a folder")
    p.add_argument("--out", required=True, help="the folder (created if needed)")
    p.add_argument("--run-id", help="default: the latest run")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("otava-config", help="write an Apache Otava configuration with one test per series")
    p.add_argument("--out", help="a file (default: stdout)")
    p.set_defaults(func=cmd_otava_config)

    p = sub.add_parser("demo", help="the main job: the nightly DAG once, on this machine (see README)")
    p.add_argument("--matrix", help="a matrix file or a shipped matrix's name (default: MOECOMM_MATRIX, else cpu)")
    p.add_argument("--logical-date", help="ISO-8601 time with a zone; the same one reruns the same DAG run")
    p.add_argument("--airflow-home", help="default: $MOECOMM_HOME/airflow")
    p.add_argument("--regression", action="store_true",
                   help="instead: measure 25 real nights, the last 4 made slower by --extra_combine_passes, and "
                        "show the detector's alert (about 2 minutes)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("samples", help="load the recorded H100 runs shipped with moecomm and print their trends")
    p.set_defaults(func=cmd_samples)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except MoecommError as exc:
        err_console.print(f"moecomm: error: {exc}", markup=False, soft_wrap=True)
        return EXIT_ERROR
    except (sa.exc.SQLAlchemyError, psycopg2.Error) as exc:
        from moecomm_tasks.dbguard import describe

        err_console.print(f"moecomm: error: {describe(exc)}", markup=False, soft_wrap=True)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
