"""Read-side queries behind the command line; all of them go through the public views."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from moecomm_tasks.errors import MoecommError


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

    def where(self) -> tuple[str, dict]:
        clauses, params = [], {}
        for name, value in vars(self).items():
            if value is not None:
                clauses.append(f"{name} = :{name}")
                params[name] = value.upper() if name == "backend" else value
        return (" AND ".join(clauses) or "TRUE"), params


def runs(engine: Engine, limit: int = 50) -> list[sa.Row]:
    """The latest runs, newest first, with their job counts and states."""
    sql = sa.text("""
        SELECT run_id, run_at, count(*) AS jobs,
               count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE state = 'partial') AS partial,
               count(*) FILTER (WHERE state = 'failed') AS failed,
               sum(measurements) AS measurements
        FROM job_summary GROUP BY run_id, run_at ORDER BY run_at DESC, run_id DESC LIMIT :limit
    """)
    with engine.connect() as conn:
        return list(conn.execute(sql, {"limit": limit}))


SERIES_KEY = ("backend", "profile", "ep_size", "quant_algo", "local_batch_size", "op", "gpu_model")


def sql_literal(value: object) -> str:
    """An integer, or a quoted SQL string literal."""
    return str(int(value)) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"


def series_where_literal(series: dict, alias: str = "", gpu_model: str | None = None) -> str:
    """A WHERE condition naming one series with literals, for SQL shown to people or handed to
    other tools (not run with parameters here). A null quantization or GPU model compares as ''.
    `gpu_model`, when given, is used as written for the GPU model's value (a placeholder)."""
    clauses = []
    for key in SERIES_KEY:
        if key == "gpu_model" and gpu_model is not None:
            value = gpu_model
        elif key in series:
            value = sql_literal(series[key])
        else:
            continue
        column = f"{alias}{key}"
        clauses.append(f"COALESCE({column}, '') = {value}" if key in ("quant_algo", "gpu_model") else f"{column} = {value}")
    return " AND ".join(clauses)


def trend(engine: Engine, series: SeriesFilter, since: datetime | None = None) -> list[sa.Row]:
    """One series' nightly points, oldest first. Raises when the filter matches several series."""
    where, params = series.where()
    if since is not None:
        where += " AND run_at >= :since"
        params["since"] = since
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"""
            SELECT {', '.join(SERIES_KEY)}, run_id, run_at, excluded, n_ranks, median_us, slowest_rank_us,
                   slowest_rank, within_night_stdev_us
            FROM nightly_series WHERE {where} ORDER BY run_at, run_id
        """), params).all()
    keys = sorted({tuple(row[: len(SERIES_KEY)]) for row in rows}, key=str)
    if len(keys) > 1:
        shown = "\n  ".join(
            ", ".join(f"{k}={v}" for k, v in zip(SERIES_KEY, key) if v is not None) for key in keys[:10]
        )
        raise MoecommError(
            f"{len(keys)} series match; narrow it down (--backend, --profile, --ep-size, --size, "
            f"--op, --quant, --gpu). Some of them:\n  {shown}"
        )
    return [row[len(SERIES_KEY):] for row in rows]


def trend_table(engine: Engine, series: SeriesFilter, last: int = 10) -> tuple[list[str], list[tuple]]:
    """Every matching series against the last `last` runs: (run ids, rows of key + median µs per run)."""
    where, params = series.where()
    with engine.connect() as conn:
        run_ids = [r for (r,) in conn.execute(sa.text(
            "SELECT run_id FROM run WHERE kind = 'nightly' ORDER BY run_at DESC, run_id DESC LIMIT :n"),
            {"n": last})][::-1]
        params["runs"] = run_ids
        rows = conn.execute(sa.text(f"""
            SELECT backend, profile, ep_size, local_batch_size, op, run_id, median_us
            FROM nightly_series WHERE {where} AND run_id = ANY(:runs)
            ORDER BY profile, ep_size, backend, local_batch_size, op
        """), params).all()
    table: dict[tuple, dict[str, float]] = {}
    for backend, profile, ep, size, op, run_id, median in rows:
        table.setdefault((backend, profile, ep, size, op), {})[run_id] = median
    return run_ids, [key + tuple(vals.get(r) for r in run_ids) for key, vals in table.items()]


def compare(engine: Engine, run_a: str, run_b: str) -> list[sa.Row]:
    """Per (backend, profile, EP size, size, op): both runs' median-across-ranks and the speedup.

    `speedup` is A / B: above 1, run B is faster. Series present in only one run are listed with
    the other side empty.
    """
    with engine.connect() as conn:
        known = {r for (r,) in conn.execute(
            sa.text("SELECT run_id FROM run WHERE run_id IN (:a, :b)"), {"a": run_a, "b": run_b})}
        missing = [r for r in (run_a, run_b) if r not in known]
        if missing:
            raise MoecommError(f"no run with id {', '.join(missing)} (see: moecomm runs)")
        return list(conn.execute(sa.text("""
            WITH a AS (SELECT * FROM nightly_series WHERE run_id = :a),
                 b AS (SELECT * FROM nightly_series WHERE run_id = :b)
            SELECT COALESCE(a.backend, b.backend) AS backend,
                   COALESCE(a.profile, b.profile) AS profile,
                   COALESCE(a.ep_size, b.ep_size) AS ep_size,
                   COALESCE(a.local_batch_size, b.local_batch_size) AS local_batch_size,
                   COALESCE(a.op, b.op) AS op,
                   a.median_us AS a_us, b.median_us AS b_us,
                   a.median_us / NULLIF(b.median_us, 0) AS speedup
            FROM a FULL JOIN b
              ON (a.backend, a.profile, a.ep_size, COALESCE(a.quant_algo, ''), a.local_batch_size, a.op)
               = (b.backend, b.profile, b.ep_size, COALESCE(b.quant_algo, ''), b.local_batch_size, b.op)
            ORDER BY profile, ep_size, backend, local_batch_size, op
        """), {"a": run_a, "b": run_b}))
