"""Compare two benchmark output files directly, with no database.

Each file is anything `moecomm load` reads (an `--output_file`, or a captured stdout), of any
upstream version or of our worker; it goes through the same parser. Per (backend, tokens)
measured in both, one statistic (`--stat`, default median) of one rank (`--rank`, default 0):

* by phase: dispatch and combine, A µs, B µs and A / B (above 1: B is faster);
* with `kernels=True`, the table of upstream's `compare_moe_comm.py`: each kernel of the phases
  (dispatch kernels, then combine kernels) and then the dispatch and combine totals.

With per-iteration statistics (`--iter_stats`) a difference is marked as within the runs' own noise
when it is smaller than twice the standard error of the difference: for the median, each side's
standard error comes from the spread of its faster iterations (`detect.median_stderr`, as the
detector uses), for the mean from its standard deviation; min and max carry no such estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from moecomm_tasks import display
from moecomm_tasks.detect import median_stderr
from moecomm_tasks.errors import MoecommError
from moecomm_tasks.records import OPS, ParsedOutput, Stats

STATS = ("mean", "median", "min", "max")
# Iterations behind a phase's statistics when the header does not say (upstream's default).
DEFAULT_ITERATIONS = 200
# A difference below this many standard errors of the difference is within the runs' noise.
NOISE_Z = 2.0
# The `item` of a phase's total (kernel names are never empty).
TOTAL = ""


@dataclass(frozen=True)
class Side:
    """One file's value of one row: the statistic, and its standard error where one is known."""

    value: float
    stderr: float | None = None
    spread: float | None = None  # the iterations' standard deviation, as shown beside the value


@dataclass(frozen=True)
class Row:
    backend: str
    local_batch_size: int
    item: str  # a kernel's name, or TOTAL for the phase's total
    phase: str
    a: Side | None
    b: Side | None

    @property
    def ratio(self) -> float | None:
        if self.a is None or self.b is None or self.b.value <= 0:
            return None
        return self.a.value / self.b.value

    @property
    def within_noise(self) -> bool | None:
        """True when |A - B| is within NOISE_Z standard errors; None when either has no estimate."""
        if self.a is None or self.b is None or self.a.stderr is None or self.b.stderr is None:
            return None
        return abs(self.a.value - self.b.value) <= NOISE_Z * math.hypot(self.a.stderr, self.b.stderr)


def _side(stats: Stats, stat: str, iterations: int) -> Side | None:
    value = getattr(stats, f"{stat}_us")
    if value is None:
        return None
    stderr = None
    if stat == "median" and stats.min_us is not None:
        stderr = float(median_stderr([value], [stats.min_us], max(iterations, 2))[0])
    elif stat == "mean" and stats.stdev_us is not None:
        stderr = stats.stdev_us / math.sqrt(max(iterations, 1))
    return Side(value, stderr, stats.stdev_us)


def _read(path: Path) -> ParsedOutput:
    from moecomm_tasks import parse

    if not path.is_file():
        raise MoecommError(f"{path} is not a file")
    parsed = parse.parse_paths([path])
    if not any(job.timings for job in parsed.jobs):
        raise MoecommError(f"{path}: no result object with a run header to compare")
    return parsed


def _values(parsed: ParsedOutput, rank: int, stat: str) -> dict[tuple, Side]:
    """(backend, tokens, phase, item) -> the side's value, over every job of one file."""
    found: dict[tuple, Side] = {}
    for job in parsed.jobs:
        extra = job.header.extra if job.header else {}
        iterations = extra.get("iters") if isinstance(extra.get("iters"), int) else DEFAULT_ITERATIONS
        for t in job.timings:
            if t.rank == rank and (side := _side(t.stats, stat, iterations)) is not None:
                found[(t.backend, t.local_batch_size, t.op, TOTAL)] = side
        for k in job.kernels:
            if k.rank == rank and k.phase in OPS and (side := _side(k.stats, stat, k.count or iterations)) is not None:
                found[(k.backend, k.local_batch_size, k.phase, k.kernel)] = side
    return found


def compare_files(path_a: Path, path_b: Path, *, stat: str = "median", rank: int = 0,
                  kernels: bool = False) -> list[Row]:
    """Rows for every (backend, tokens) measured in both files; see the module docstring."""
    if stat not in STATS:
        raise MoecommError(f"--stat must be one of {', '.join(STATS)}")
    a = _values(_read(path_a), rank, stat)
    b = _values(_read(path_b), rank, stat)
    both = sorted({key[:2] for key in a if key[3] == TOTAL} & {key[:2] for key in b if key[3] == TOTAL})
    if not both:
        raise MoecommError(f"no backend and token count measured (rank {rank}) in both files")
    rows: list[Row] = []
    for backend, size in both:
        for phase in OPS:
            names = sorted({key[3] for key in (*a, *b) if key[:3] == (backend, size, phase) and key[3] != TOTAL})
            for name in (*(names if kernels else ()), TOTAL):
                rows.append(Row(backend, size, name, phase, a.get((backend, size, phase, name)),
                                b.get((backend, size, phase, name))))
    return rows


# Kernel names can run to hundreds of characters (mangled C++ templates); a table shows this many.
NAME_CHARS = 64


def table_rows(rows: Iterable[Row]) -> list[tuple]:
    """Rows as the CLI prints them: backend, tokens, phase, kernel (or "total"), A µs and B µs
    (each ± its iterations' standard deviation where known), A / B (marked when beyond the noise),
    noise."""
    out = []
    for row in rows:
        noise = {True: "within noise", False: "beyond noise", None: ""}[row.within_noise]
        name = row.item if len(row.item) <= NAME_CHARS else row.item[: NAME_CHARS - 1] + "…"
        ratio = None if row.ratio is None else f"{row.ratio:.2f}" + (display.MARK if row.within_noise is False else "")
        out.append((row.backend, row.local_batch_size, row.phase, name or "total",
                    display.with_spread(row.a.value, row.a.spread) if row.a else None,
                    display.with_spread(row.b.value, row.b.spread) if row.b else None, ratio, noise))
    return out
