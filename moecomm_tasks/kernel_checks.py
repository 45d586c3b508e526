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
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cxxfilt
import sqlalchemy as sa

from moecomm_tasks.knobs import KNOB_FIELDS

# The series key of a kernels alert, in the alert table's columns; its op is always `kernels`.
KEY = ("backend", "profile", "ep_size", "quant_algo", "local_batch_size", "gpu_model", *KNOB_FIELDS)
KERNELS_OP = "kernels"
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


def _nights(conn: sa.Connection) -> dict[tuple, list[tuple[str, str, dict]]]:
    """Every series' nights with a kernel breakdown, oldest first: (run_id, job_key, kernels)."""
    knobs = ", ".join(f"m.{k}" for k in KNOB_FIELDS)
    rows = conn.execute(sa.text(f"""
        SELECT k.backend, j.profile, j.ep_size, COALESCE(j.quant_algo, '') AS quant_algo, k.local_batch_size,
               COALESCE(p.gpu_model, '') AS gpu_model, {knobs}, r.run_id, r.run_at, j.job_key,
               k.phase, k.kernel, max(k.count) AS count
        FROM kernel_timing k
        JOIN job j USING (job_pk)
        JOIN run r USING (run_pk)
        LEFT JOIN provenance p USING (job_pk)
        -- The knobs are the measurement's: the same for every op of one backend and size.
        JOIN LATERAL (SELECT {', '.join(KNOB_FIELDS)} FROM measurement
                      WHERE job_pk = k.job_pk AND backend = k.backend AND local_batch_size = k.local_batch_size
                      ORDER BY op LIMIT 1) m ON true
        WHERE r.kind = 'nightly' AND NOT r.excluded
        GROUP BY k.backend, j.profile, j.ep_size, j.quant_algo, k.local_batch_size, p.gpu_model, {knobs},
                 r.run_id, r.run_at, j.job_key, k.phase, k.kernel
        ORDER BY r.run_at, r.run_id, j.job_key""")).all()
    grouped: dict[tuple, dict[tuple[str, str], list[tuple[str, str, int]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[tuple(getattr(row, k) for k in KEY)][(row.run_id, row.job_key)].append(
            (row.phase, row.kernel, row.count))
    return {key: [(run, job, kernel_set(kernels)) for (run, job), kernels in nights.items()]
            for key, nights in grouped.items()}


def changes(conn: sa.Connection) -> list[KernelChange]:
    """Every change of a series' kernels between consecutive nights of the stored history."""
    found = []
    for key, nights in _nights(conn).items():
        for (good_run, good_job, before), (bad_run, bad_job, after) in zip(nights, nights[1:]):
            diff = difference(before, after)
            if diff is not None:
                found.append(KernelChange(dict(zip(KEY, key)), good_run, good_job, bad_run, bad_job, diff))
    return found


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
