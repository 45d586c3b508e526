"""The nights detection reads, from `series_night`, and where each series' scan stands (`series_scan`).

A nightly detection tests only the nights it has not tested yet. For that it needs, per series,
the nights since its last tested one and, before them, the nights the tests look back on: at
most `lookback(params)` of them (the baseline's and the noise's windows and the longest window
of a change). A scan resumed on that tail finds what a scan of the whole history finds
(`detect.detect`'s `start` and `first_test`): the baseline's start, when it lies before the tail,
is cut to the tail's first night, which every window of the tail already reaches no further
than. `series_scan` keeps per series the last night tested and the baseline's start, as runs
(not positions, which deleting or excluding a night would shift); migration 0015's triggers
forget a series' scan when a night it tested changes, and that series is read whole again.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import psycopg2.extras
import sqlalchemy as sa

from moecomm_tasks.detect import Params
from moecomm_tasks.series import SERIES_KEY, SeriesKey

# The columns of a night the detector reads (series_night; nightly runs only, not excluded).
NIGHT_COLUMNS = ("run_id", "run_at", "night_us", "slowest_rank", "slowest_rank_median_us", "slowest_rank_min_us",
                 "median_min_log_ratio", "job_key")
VISIBLE = "n.kind = 'nightly' AND NOT n.excluded"


def params_tag(params: Params) -> str:
    """A short fingerprint of the detector's parameters: a scan kept under other ones is not resumed."""
    return hashlib.sha256(json.dumps(asdict(params), sort_keys=True).encode()).hexdigest()[:16]


def lookback(params: Params) -> int:
    """How many tested nights a resumed scan needs before its first untested one."""
    return max(params.baseline_window, params.noise_window) + params.max_window + params.min_baseline


@dataclass
class SeriesHistory:
    """One series' nights as a scan reads them (oldest first), and where the scan resumes:
    `start` (the baseline's first night) and `first_test` (the first night not tested yet),
    as positions in `nights`."""

    series_pk: int
    key: SeriesKey
    nights: list[sa.Row] = field(default_factory=list)
    start: int = 0
    first_test: int = 0
    start_run: tuple | None = None  # the baseline's start as (run_at, run_id); None: the first night


def _key_select(alias: str) -> str:
    return ", ".join(f"{alias}.{k}" for k in SERIES_KEY)


def read(conn: sa.Connection, params: Params, full: bool = False) -> list[SeriesHistory]:
    """The series that have nights not tested yet (every series with `full`), each with the
    nights its scan needs. A series whose kept scan cannot be resumed (none, other parameters,
    or its baseline's start no longer among its nights) is read whole."""
    tag, keep = params_tag(params), lookback(params)
    night_columns = ", ".join(f"n.{c}" for c in NIGHT_COLUMNS)
    series: dict[int, SeriesHistory] = {}
    scans: dict[int, sa.Row] = {}
    if not full:
        for row in conn.execute(sa.text(f"""
                SELECT sc.*, {_key_select('s')} FROM series_scan sc JOIN series s USING (series_pk)
                WHERE sc.params = :tag AND EXISTS (
                    SELECT 1 FROM series_night n WHERE n.series_pk = sc.series_pk AND {VISIBLE}
                      AND (n.run_at, n.run_id) > (sc.tested_run_at, sc.tested_run_id))"""), {"tag": tag}):
            scans[row.series_pk] = row
            series[row.series_pk] = SeriesHistory(row.series_pk, SeriesKey.of(row))
        tails: dict[int, list[sa.Row]] = defaultdict(list)
        for row in conn.execute(sa.text(f"""
                SELECT sc.series_pk, t.* FROM series_scan sc CROSS JOIN LATERAL (
                    (SELECT {night_columns} FROM series_night n
                     WHERE n.series_pk = sc.series_pk AND {VISIBLE}
                       AND (n.run_at, n.run_id) <= (sc.tested_run_at, sc.tested_run_id)
                     ORDER BY n.run_at DESC, n.run_id DESC LIMIT :keep)
                    UNION ALL
                    (SELECT {night_columns} FROM series_night n
                     WHERE n.series_pk = sc.series_pk AND {VISIBLE}
                       AND (n.run_at, n.run_id) > (sc.tested_run_at, sc.tested_run_id))) t
                WHERE sc.series_pk = ANY (:pks)"""), {"keep": keep, "pks": list(scans)}):
            tails[row.series_pk].append(row)
        for pk, rows in tails.items():
            if not _resume(series[pk], scans[pk], sorted(rows, key=lambda n: (n.run_at, n.run_id)), keep):
                del series[pk]  # read whole below
    unscanned = [pk for (pk,) in conn.execute(sa.text("""
        SELECT s.series_pk FROM series s WHERE :full OR NOT EXISTS (
            SELECT 1 FROM series_scan sc WHERE sc.series_pk = s.series_pk AND sc.params = :tag)"""),
        {"full": full, "tag": tag})]
    whole = conn.execute(sa.text(f"""
        SELECT s.series_pk, {_key_select('s')}, {night_columns}
        FROM series s JOIN series_night n USING (series_pk)
        WHERE {VISIBLE} AND s.series_pk = ANY (:pks)
        ORDER BY s.series_pk, n.run_at, n.run_id"""), {"pks": unscanned + [pk for pk in scans if pk not in series]})
    for row in whole:
        if row.series_pk not in series:
            series[row.series_pk] = SeriesHistory(row.series_pk, SeriesKey.of(row))
        series[row.series_pk].nights.append(row)
    return sorted(series.values(), key=lambda h: h.key.astuple())


def _resume(history: SeriesHistory, scan: sa.Row, nights: list[sa.Row], keep: int) -> bool:
    """Place a kept scan in a series' tail of nights; False when it cannot be (its last tested
    night or its baseline's start is no longer among the nights)."""
    runs = [(n.run_at, n.run_id) for n in nights]
    tested = (scan.tested_run_at, scan.tested_run_id)
    if tested not in runs:
        return False
    history.nights, history.first_test = nights, runs.index(tested) + 1
    if scan.start_run_id is None:
        history.start, history.start_run = 0, None
        return True
    start = (scan.start_run_at, scan.start_run_id)
    history.start_run = start
    if start in runs:
        history.start = runs.index(start)
        return True
    # Before the tail: every window of the tail reaches no further back than its first night.
    history.start = 0
    return history.first_test >= keep and start < runs[0]


def save(conn: sa.Connection, params: Params, scanned: list[tuple[SeriesHistory, int | None]]) -> None:
    """Keep where each scanned series stands: its last night is tested, and its baseline starts at
    the night `start` (the first bad night of the last change found), or where it started before
    this scan when `start` is None."""
    rows = []
    for history, start in scanned:
        if not history.nights:
            continue
        last = history.nights[-1]
        begin = (history.nights[start].run_at, history.nights[start].run_id) if start is not None \
            else history.start_run
        rows.append((history.series_pk, params_tag(params), *(begin or (None, None)), last.run_at, last.run_id))
    if not rows:
        return
    cur = conn.connection.cursor()
    try:
        psycopg2.extras.execute_values(cur, """
            INSERT INTO series_scan (series_pk, params, start_run_at, start_run_id, tested_run_at, tested_run_id)
            VALUES %s ON CONFLICT (series_pk) DO UPDATE SET
                params = EXCLUDED.params, start_run_at = EXCLUDED.start_run_at, start_run_id = EXCLUDED.start_run_id,
                tested_run_at = EXCLUDED.tested_run_at, tested_run_id = EXCLUDED.tested_run_id""",
            rows, page_size=1000)
    finally:
        cur.close()
