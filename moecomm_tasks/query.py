"""Read-side queries behind the command line; all of them go through the public views and the
series' nights (`series`, `series_night`: moecomm_tasks.series)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Mapping, Sequence

import psycopg2
import sqlalchemy as sa
from psycopg2 import sql
from sqlalchemy.engine import Engine

from moecomm_tasks import display
from moecomm_tasks.errors import MoecommError
from moecomm_tasks.knobs import KNOB_FIELDS
from moecomm_tasks.series import SERIES_KEY


@dataclass(frozen=True)
class SeriesFilter:
    """Which series to read; a field left None matches every value."""

    backend: str | None = None
    profile: str | None = None
    ep_size: int | None = None
    local_batch_size: int | None = None
    op: str | None = None
    quant_algo: str | None = None
    gpu_model: str | None = None
    cuda_graph: bool | None = None
    pdl: bool | None = None
    perfect_router: bool | None = None
    payload_in_workspace: bool | None = None
    low_precision_combine: bool | None = None
    timing_method: str | None = None

    def where(self) -> tuple[str, dict]:
        clauses, params = [], {}
        for name, value in vars(self).items():
            if value is not None:
                clauses.append(f"{name} = :{name}")
                params[name] = value.upper() if name == "backend" else value
        return (" AND ".join(clauses) or "TRUE"), params


def runs(engine: Engine, limit: int = 50) -> list[sa.Row]:
    """The latest runs, newest first, with their job counts and states, and whether each is
    excluded from detection (and why)."""
    sql = sa.text("""
        SELECT r.run_id, r.run_at, count(s.job_key) AS jobs,
               count(*) FILTER (WHERE s.state = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE s.state = 'partial') AS partial,
               count(*) FILTER (WHERE s.state = 'failed') AS failed,
               coalesce(sum(s.measurements), 0) AS measurements,
               CASE WHEN r.excluded THEN r.excluded_reason END AS excluded
        FROM run r LEFT JOIN job_summary s USING (run_id)
        GROUP BY r.run_pk ORDER BY r.run_at DESC, r.run_id DESC LIMIT :limit
    """)
    with engine.connect() as conn:
        return list(conn.execute(sql, {"limit": limit}))


def _value(value: Any) -> sql.Composable:
    """A value as SQL for people and other tools. A text holding backslashes is written as
    psycopg2's literals of the parts between them joined by chr(92): with no backslash inside a
    literal, the text reads the same whatever a session's standard_conforming_strings (a
    backslash before a quote would otherwise end the literal in one setting and not in the
    other), and tools that scan SQL for placeholders of their own (Otava's driver, pg8000)
    cannot mistake where a literal ends."""
    if not isinstance(value, str) or "\\" not in value:
        return sql.Literal(value)
    return sql.SQL("({})").format(sql.SQL(" || chr(92) || ").join(sql.Literal(part) for part in value.split("\\")))


def series_condition(series: Mapping[str, Any], alias: str = "",
                     gpu_model: sql.Composable | None = None) -> sql.Composed:
    """A WHERE condition naming one series by its values, for SQL shown to people or handed to
    other tools (write it out with `shown_sql`). A null quantization or GPU model compares as ''.
    `gpu_model`, when given, stands for the GPU model's value as it is (a placeholder)."""
    clauses = []
    for key in SERIES_KEY:
        if key == "gpu_model" and gpu_model is not None:
            value = gpu_model
        elif key in series:
            value = _value(series[key])
        else:
            continue
        column = sql.SQL(f"{alias}{key}")  # our own column names, not data
        template = "COALESCE({}, '') = {}" if key in ("quant_algo", "gpu_model") else "{} = {}"
        clauses.append(sql.SQL(template).format(column, value))
    return sql.SQL(" AND ").join(clauses)


@contextmanager
def shown_sql(engine: Engine) -> Iterator[Callable[[sql.Composable], str]]:
    """A function that writes composed SQL out as text, quoted by psycopg2.

    psycopg2 quotes for the connection it is given; this one is opened with
    `standard_conforming_strings` on, so literals come out as plain '...' with quotes doubled
    (and, from `_value`, no backslash in them): text that reads the same in any session.
    Quoting needs no round trip: the connection only carries the settings."""
    from moecomm_tasks.dbguard import Timeouts

    cargs, cparams = engine.dialect.create_connect_args(engine.url)
    conn = psycopg2.connect(*cargs, **{**cparams, **Timeouts.from_env().connect_args(),
                                       "options": "-c standard_conforming_strings=on",
                                       "application_name": "moecomm"})
    try:
        yield lambda composed: composed.as_string(conn)
    finally:
        conn.close()


def trend(engine: Engine, series: SeriesFilter, since: datetime | None = None) -> list[sa.Row]:
    """One series' nightly points, oldest first, the detector's night value last. Raises when
    the filter matches several series."""
    where, params = series.where()
    params["since"] = since
    key = ", ".join(f"NULLIF(s.{k}, '')" if k in ("quant_algo", "gpu_model") else f"s.{k}" for k in SERIES_KEY)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"""
            SELECT {key}, n.run_id, n.run_at, n.excluded, n.n_ranks, n.median_us, n.slowest_rank_us,
                   n.slowest_rank, n.within_night_stdev_us, n.night_us
            FROM series s JOIN series_night n USING (series_pk)
            WHERE n.kind = 'nightly' AND n.series_pk IN (SELECT series_pk FROM series WHERE {where})
              AND (CAST(:since AS timestamptz) IS NULL OR n.run_at >= :since)
            ORDER BY n.run_at, n.run_id
        """), params).all()
    keys = sorted({tuple(row[: len(SERIES_KEY)]) for row in rows}, key=str)
    if len(keys) > 1:
        shown = "\n  ".join(
            ", ".join(f"{k}={v}" for k, v in zip(SERIES_KEY, key) if v is not None) for key in keys[:10]
        )
        raise MoecommError(
            f"{len(keys)} series match; narrow it down (--backend, --profile, --ep-size, --size, "
            f"--op, --quant, --gpu, --cuda-graph, --pdl, --perfect-router, --payload-in-workspace, "
            f"--low-precision-combine, --timing-method). Some of them:\n  {shown}"
        )
    return [row[len(SERIES_KEY):] for row in rows]


def knob_label(row: object) -> str:
    """The knobs of a series in a few characters: its timing method, then graph, pdl, perfect
    router (pr), payload in workspace (piw) and low-precision combine (lpc) where on."""
    on = [short for short, name in (("graph", "cuda_graph"), ("pdl", "pdl"), ("pr", "perfect_router"),
                                    ("piw", "payload_in_workspace"), ("lpc", "low_precision_combine"))
          if getattr(row, name)]
    return " ".join([row.timing_method, *on])


@dataclass(frozen=True)
class Cell:
    """One series' value on one night (median µs across ranks), its within-night spread, and
    whether it moved beyond the noise from the series' night before (`display`)."""

    value_us: float | None
    spread_us: float | None = None
    beyond_noise: bool | None = None


@dataclass(frozen=True)
class TrendGroup:
    """Series whose last nights are the same runs: one table, a column per run (oldest first) and
    a row per series (key + knobs + one Cell per run)."""

    run_ids: tuple[str, ...]
    rows: list[tuple]


def spread_columns(table: str = "", prefix: str = "") -> str:
    """What a night's spread (`display.spread_us`) is made of, as SQL columns of `table` (an alias,
    or none) named `prefix`half_rank_range_us and `prefix`within_night_stdev_us: half the ranks'
    range (with more than one rank) and the iterations' standard deviation."""
    t = f"{table}." if table else ""
    return (f"CASE WHEN {t}n_ranks > 1 THEN ({t}slowest_rank_us - {t}fastest_rank_us) / 2 END "
            f"AS {prefix}half_rank_range_us, {t}within_night_stdev_us AS {prefix}within_night_stdev_us")


def trend_table(engine: Engine, series: SeriesFilter, last: int = 10,
                runs: Sequence[str] | None = None) -> list[TrendGroup]:
    """Every matching series against its own last `last` nights (of `runs` only, when given), not
    the last runs of the whole database: another job's or another machine's nights never push a
    series out of its table. Series whose last nights are the same runs share a table; each cell
    carries its spread and whether it moved beyond the noise from that series' night before."""
    where, params = series.where()
    if runs is not None:
        where += " AND run_id = ANY(:runs)"
        params["runs"] = list(runs)
    with engine.connect() as conn:
        # First which nights: each series' last `last` + 1 (one more to judge the first column's move);
        # then those nights' values.
        wanted = [r for (r,) in conn.execute(sa.text(f"""
            SELECT DISTINCT run_id FROM (
                SELECT run_id, row_number() OVER (PARTITION BY series_pk ORDER BY run_at DESC, run_id DESC) AS age
                FROM nightly_series WHERE {where}) n
            WHERE age <= :n + 1"""), {**params, "n": last})]
        rows = conn.execute(sa.text(f"""
            SELECT backend, profile, ep_size, local_batch_size, op, COALESCE(quant_algo, '') AS quant_algo,
                   COALESCE(gpu_model, '') AS gpu_model, {', '.join(KNOB_FIELDS)}, run_id, run_at, median_us,
                   {spread_columns()}
            FROM nightly_series WHERE {where} AND run_id = ANY(:wanted)
            ORDER BY profile, ep_size, backend, local_batch_size, op, quant_algo, gpu_model,
                     {', '.join(KNOB_FIELDS)}, run_at, run_id
        """), {**params, "wanted": wanted}).all()
    nights: dict[tuple, list[sa.Row]] = {}
    for row in rows:
        nights.setdefault((row.backend, row.profile, row.ep_size, row.local_batch_size, row.op, knob_label(row),
                           row.quant_algo, row.gpu_model), []).append(row)
    # A night wanted by another series may be older than this series' own last ones: keep its own.
    nights = {key: points[-(last + 1):] for key, points in nights.items()}
    groups: dict[tuple[str, ...], list[tuple]] = {}
    for series_key, points in nights.items():
        shown = points[-last:] if last else []
        if not shown:
            continue
        cells = []
        for index, point in enumerate(points[len(points) - len(shown):], start=len(points) - len(shown)):
            spread = display.spread_us(point.half_rank_range_us, point.within_night_stdev_us)
            before = points[index - 1] if index > 0 else None
            moved = None if before is None else display.beyond_noise(
                point.median_us, spread, before.median_us,
                display.spread_us(before.half_rank_range_us, before.within_night_stdev_us))
            cells.append(Cell(point.median_us, spread, moved))
        groups.setdefault(tuple(p.run_id for p in shown), []).append(series_key + tuple(cells))
    return [TrendGroup(run_ids, members) for run_ids, members in groups.items()]


def compare(engine: Engine, run_a: str, run_b: str) -> list[sa.Row]:
    """Per series (backend, profile, EP size, size, op, knobs): both runs' median-across-ranks, the
    speedup, and what each night's spread is made of (`display.spread_us`: half its ranks' range,
    its iterations' stdev).

    `speedup` is A / B: above 1, run B is faster. Series present in only one run are listed with
    the other side empty.
    """
    with engine.connect() as conn:
        known = {r for (r,) in conn.execute(
            sa.text("SELECT run_id FROM run WHERE run_id IN (:a, :b)"), {"a": run_a, "b": run_b})}
        missing = [r for r in (run_a, run_b) if r not in known]
        if missing:
            raise MoecommError(f"no run with id {', '.join(missing)} (see: moecomm runs)")
        return list(conn.execute(sa.text(f"""
            WITH a AS (SELECT * FROM nightly_series WHERE run_id = :a),
                 b AS (SELECT * FROM nightly_series WHERE run_id = :b)
            SELECT COALESCE(a.backend, b.backend) AS backend,
                   COALESCE(a.profile, b.profile) AS profile,
                   COALESCE(a.ep_size, b.ep_size) AS ep_size,
                   COALESCE(a.local_batch_size, b.local_batch_size) AS local_batch_size,
                   COALESCE(a.op, b.op) AS op,
                   COALESCE(a.timing_method, b.timing_method) AS timing_method,
                   COALESCE(a.cuda_graph, b.cuda_graph) AS cuda_graph, COALESCE(a.pdl, b.pdl) AS pdl,
                   COALESCE(a.perfect_router, b.perfect_router) AS perfect_router,
                   COALESCE(a.payload_in_workspace, b.payload_in_workspace) AS payload_in_workspace,
                   COALESCE(a.low_precision_combine, b.low_precision_combine) AS low_precision_combine,
                   a.median_us AS a_us, b.median_us AS b_us,
                   a.median_us / NULLIF(b.median_us, 0) AS speedup,
                   {spread_columns("a", "a_")}, {spread_columns("b", "b_")}
            FROM a FULL JOIN b
              ON (a.backend, a.profile, a.ep_size, COALESCE(a.quant_algo, ''), a.local_batch_size, a.op,
                  a.cuda_graph, a.pdl, a.perfect_router, a.payload_in_workspace, a.low_precision_combine,
                  a.timing_method)
               = (b.backend, b.profile, b.ep_size, COALESCE(b.quant_algo, ''), b.local_batch_size, b.op,
                  b.cuda_graph, b.pdl, b.perfect_router, b.payload_in_workspace, b.low_precision_combine,
                  b.timing_method)
            ORDER BY profile, ep_size, backend, local_batch_size, op, timing_method
        """), {"a": run_a, "b": run_b}))


def night_value(conn: sa.Connection, run_id: str, series: Mapping[str, Any]) -> float | None:
    """One run's value of one series (`series_night.night_us`: the slowest rank's median iteration
    time, its mean without --iter_stats), whatever the run's kind: it also reads the runs the
    views leave out (bisection and confirmation runs). `series` holds the series key's fields
    (an alert row does); the GPU model is not compared."""
    compared = [k for k in SERIES_KEY if k != "gpu_model"]
    return conn.execute(sa.text(f"""
        SELECT night_us FROM series_night
        WHERE run_id = :run AND {' AND '.join(f"{k} = :{k}" for k in compared)}
        LIMIT 1"""), {"run": run_id, **{k: series[k] for k in compared},
                      "quant_algo": series["quant_algo"] or ""}).scalar()
