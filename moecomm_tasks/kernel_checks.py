"""Noise-free kernel checks: a change in a series' set of kernels, or in a kernel's launch count,
between two consecutive nights.

With `--kernel_breakdown` a job's output lists, per backend and size, the kernels each phase
launched and how many times (`kernel_timing`). Timings are noisy; the set of kernels and their
counts are not: a kernel that appears, disappears or is launched a different number of times is
a fact about the build, so it is an alert of kind `kernels` on the first night that shows it,
whatever the timing noise, and it needs no confirmation.

A kernel is known by its demangled name: the worker demangles when `cxxfilt` is installed and
prints the raw (mangled) name when not, so one night can say `_ZN8moe_comm...` and the next
`void moe_comm::...(...)`. Both are demangled with libstdc++'s demangler (through `cxxfilt`) and
compared with the spaces that C++ does not need taken out (`> >` and `>>` are one name). The
names as printed are kept beside it in the difference.

A series here is a job's series without the op (the kernels of every phase, `phase` telling
them apart): backend, profile, EP size, quantization, size, GPU model and the knobs. Nights that
have no kernel breakdown for a series, excluded runs and runs other than nightly ones are not
compared; a kernel's count is the largest any rank reported.

What a check reads: every night (`changes()`, `moecomm detect --full`), or the nights from a
given time on and each job's night before them (`changes(since=...)`): `detect` checks the last
`WINDOW_DAYS` days, so that a night costs the same after a year as after a week. A change is
stored once (the alert's unique key), however often it is found again.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import cxxfilt
import sqlalchemy as sa

from moecomm_tasks.series import SERIES_KEY

# The series key of a kernels alert, in the alert table's columns: a series' key but its op,
# which is always `kernels`.
KEY = tuple(k for k in SERIES_KEY if k != "op")
KERNELS_OP = "kernels"
# `detect` checks the nights of this many days before the newest run (a night whose detection
# failed is checked by the next ones); `detect --full` checks every night.
WINDOW_DAYS = 14
WORK_MEM_MB = 64
# Spaces between two characters that are not both part of a word carry no meaning in a C++ name.
_SPACE = re.compile(r"\s+")
_MEANINGLESS_SPACE = re.compile(r"(?<![A-Za-z0-9_]) | (?![A-Za-z0-9_])")


@lru_cache(maxsize=65_536)
def demangle(name: str) -> str:
    """The demangled name (libstdc++'s `__cxa_demangle`); a name that is not mangled, or that the
    demangler cannot read, stays as it is."""
    try:
        return cxxfilt.demangle(name)
    except cxxfilt.InvalidName:
        return name


@lru_cache(maxsize=65_536)
def canonical(name: str) -> str:
    """The name two spellings of one kernel share: demangled, without the spaces C++ ignores."""
    return _MEANINGLESS_SPACE.sub("", _SPACE.sub(" ", demangle(name).strip()))


@dataclass(frozen=True)
class Launches:
    """One kernel of one phase on one night: its demangled name, how many times it was launched
    (the most any rank reported) and its names as printed that night."""

    phase: str
    kernel: str
    count: int
    printed: tuple[str, ...]


def kernel_set(rows: list[tuple[str, str, int]]) -> dict[tuple[str, str], Launches]:
    """(phase, name as printed, count) rows of one series and night -> its kernels by (phase,
    canonical name); spellings of one kernel merge."""
    counts: dict[tuple[str, str], int] = {}
    printed: dict[tuple[str, str], set[str]] = defaultdict(set)
    shown: dict[tuple[str, str], str] = {}
    for phase, name, count in rows:
        key = (phase, canonical(name))
        counts[key] = max(counts.get(key, 0), count)
        printed[key].add(name)
        shown.setdefault(key, demangle(name))
    return {k: Launches(k[0], shown[k], counts[k], tuple(sorted(printed[k]))) for k in counts}


def difference(before: dict[tuple[str, str], Launches],
               after: dict[tuple[str, str], Launches]) -> dict[str, list[dict[str, Any]]] | None:
    """What changed from one night's kernels to the next: kernels added, removed, and launched a
    different number of times (with both counts); None when nothing did. A kernel only spelled
    differently (mangled one night, demangled the next) has not changed."""
    added = [{"phase": a.phase, "kernel": a.kernel, "printed": list(a.printed), "count": a.count}
             for k, a in sorted(after.items()) if k not in before]
    removed = [{"phase": b.phase, "kernel": b.kernel, "printed": list(b.printed), "count": b.count}
               for k, b in sorted(before.items()) if k not in after]
    recounted = [{"phase": b.phase, "kernel": b.kernel, "printed_before": list(b.printed),
                  "printed_after": list(after[k].printed), "count_before": b.count, "count_after": after[k].count}
                 for k, b in sorted(before.items()) if k in after and after[k].count != b.count]
    if not (added or removed or recounted):
        return None
    return {"added": added, "removed": removed, "count_changed": recounted}


@dataclass(frozen=True)
class KernelChange:
    """A series whose kernels changed between two consecutive nights."""

    series: dict[str, Any]
    last_good_run_id: str
    last_good_job_key: str
    first_bad_run_id: str
    first_bad_job_key: str
    diff: dict[str, list[dict[str, Any]]]


# The jobs to read: every nightly, not excluded one; or, with `since`, those of the runs from
# `since` on and, for each of their job keys, the latest earlier one that has a kernel breakdown.
_ALL_JOBS = "SELECT j.job_pk FROM job j JOIN run r USING (run_pk) WHERE r.kind = 'nightly' AND NOT r.excluded"
_JOBS_SINCE = """
    WITH recent AS (SELECT j.job_pk, j.job_key FROM job j JOIN run r USING (run_pk)
                    WHERE r.kind = 'nightly' AND NOT r.excluded AND r.run_at >= :since)
    SELECT job_pk FROM recent
    UNION ALL
    SELECT * FROM (SELECT DISTINCT ON (j.job_key) j.job_pk FROM job j JOIN run r USING (run_pk)
                   WHERE r.kind = 'nightly' AND NOT r.excluded AND r.run_at < :since
                     AND j.job_key IN (SELECT job_key FROM recent)
                     AND EXISTS (SELECT 1 FROM kernel_timing k WHERE k.job_pk = j.job_pk)
                   ORDER BY j.job_key, r.run_at DESC, r.run_id DESC) previous"""


def _jobs(conn: sa.Connection, since: datetime | None) -> tuple[str, dict[str, Any]]:
    """The condition on `kernel_timing.job_pk` that picks the jobs to read, and its parameters.
    With `since`, the jobs are listed first, so that the planner knows how few they are and reads
    them through the primary key rather than the whole table."""
    if since is None:
        return f"job_pk IN ({_ALL_JOBS})", {}
    return "job_pk = ANY(CAST(:jobs AS bigint[]))", {
        "jobs": list(conn.execute(sa.text(_JOBS_SINCE), {"since": since}).scalars())}


Night = tuple[str, str, tuple[tuple[str, str, int], ...]]  # run_id, job_key, (phase, name, count) sorted


def _nights(conn: sa.Connection, since: datetime | None) -> dict[tuple, list[Night]]:
    """Every series' nights with a kernel breakdown, oldest first, each with its kernels as
    printed (phase, name, the largest count any rank reported)."""
    # Grouping by the kernels' names sorts long texts: room for a few weeks of nights in memory
    # (the default 4 MB spills them to disk), for this transaction only.
    conn.execute(sa.text(f"SET LOCAL work_mem = '{WORK_MEM_MB}MB'"))
    jobs, params = _jobs(conn, since)
    rows = conn.execute(sa.text(f"""
        WITH k AS (SELECT job_pk, backend, local_batch_size, phase, kernel, max(count) AS count
                   FROM kernel_timing WHERE {jobs}
                   GROUP BY job_pk, backend, local_batch_size, phase, kernel),
             s AS (SELECT job_pk, backend, local_batch_size,
                          array_agg(phase) AS phases, array_agg(kernel) AS kernels, array_agg(count) AS counts
                   FROM k GROUP BY job_pk, backend, local_batch_size)
        SELECT {', '.join('n.' + k for k in KEY)}, n.run_id, n.run_at, n.job_key, s.phases, s.kernels, s.counts
        FROM s
        -- The series' key as series_night holds it (the same for every op of one backend and size).
        JOIN LATERAL (SELECT * FROM series_night
                      WHERE job_pk = s.job_pk AND backend = s.backend AND local_batch_size = s.local_batch_size
                            AND kind = 'nightly' AND NOT excluded
                      ORDER BY op LIMIT 1) n ON true
        ORDER BY n.run_at, n.run_id, n.job_key"""), params).all()
    nights: dict[tuple, list[Night]] = defaultdict(list)
    for row in rows:
        key = tuple(getattr(row, k) for k in KEY)
        nights[key].append((row.run_id, row.job_key, tuple(sorted(zip(row.phases, row.kernels, row.counts)))))
    return nights


def changes(conn: sa.Connection, since: datetime | None = None) -> list[KernelChange]:
    """Every change of a series' kernels between consecutive nights of the stored history; with
    `since`, only those on nights from `since` on (each compared with the previous night of its
    job that had a kernel breakdown), which reads those nights only."""
    found = []
    for key, nights in _nights(conn, since).items():
        for (good_run, good_job, before), (bad_run, bad_job, after) in zip(nights, nights[1:]):
            if before == after:  # printed alike: nothing to demangle
                continue
            diff = difference(kernel_set(list(before)), kernel_set(list(after)))
            if diff is not None:
                found.append(KernelChange(dict(zip(KEY, key)), good_run, good_job, bad_run, bad_job, diff))
    return found


def window_start(conn: sa.Connection, days: int = WINDOW_DAYS) -> datetime | None:
    """Where the nightly check starts: `days` before the newest nightly run (None: no runs)."""
    return conn.execute(sa.text(
        "SELECT max(run_at) - make_interval(days => :days) FROM run WHERE kind = 'nightly' AND NOT excluded"),
        {"days": days}).scalar()


def summary(diff: dict[str, list[dict[str, Any]]], limit: int = 6) -> list[str]:
    """The difference as lines a person reads (at most `limit` kernels, then how many more): the
    demangled name, and the names as printed where they differ from it."""
    lines = []
    for item in diff.get("added", []):
        lines.append(f"+ {item['phase']} {item['kernel']} x{item['count']}{_printed(item['kernel'], item['printed'])}")
    for item in diff.get("removed", []):
        lines.append(f"- {item['phase']} {item['kernel']} x{item['count']}{_printed(item['kernel'], item['printed'])}")
    for item in diff.get("count_changed", []):
        lines.append(f"~ {item['phase']} {item['kernel']} x{item['count_before']} -> x{item['count_after']}"
                     f"{_printed(item['kernel'], item['printed_before'] + item['printed_after'])}")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more (moecomm alerts list --format json)"]
    return lines


def _printed(kernel: str, names: list[str]) -> str:
    other = sorted(set(names) - {kernel})
    return f" (printed as {', '.join(other)})" if other else ""
