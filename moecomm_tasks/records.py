"""Typed records that the parser yields and the loader stores.

They follow the benchmark contract (`shared/reference/contract.md`): a run header, per-rank
timings of each phase, per-kernel timings, skip lines, worker failures and whatever had to be
dropped, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from moecomm_tasks.knobs import Knobs

OPS = ("dispatch", "combine")
PHASES = ("dispatch", "combine", "other")


@dataclass(frozen=True)
class RunHeader:
    """The run header printed by rank 0 (merged with the launcher header when both are there).

    `extra` keeps every key this version of the schema does not know, as printed (newer upstream
    versions add `cuda_graph`, `pdl`, ...; our worker adds provenance).
    """

    profile: str | None
    ep_size: int | None
    hidden_size: int | None = None
    top_k: int | None = None
    num_experts: int | None = None
    quant_algo: str | None = None
    dtype: str | None = None
    local_batch_sizes: tuple[int, ...] = ()
    experts_per_rank: int | None = None
    max_num_tokens_per_rank: int | None = None
    device_count: int | None = None
    backend: str | None = None
    launcher: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def job_key(self) -> str:
        """The identity of the benchmark configuration this header describes, within a run."""
        parts = [
            f"profile={self.profile}",
            f"ep={self.ep_size}",
            f"quant={self.quant_algo}",
            f"hidden={self.hidden_size}",
            f"topk={self.top_k}",
            f"experts={self.num_experts}",
            f"backend={self.backend or 'ALL'}",
        ]
        return ",".join(parts)


@dataclass(frozen=True, slots=True)
class Stats:
    """One rank's time for one phase, in microseconds; only `mean_us` is always there."""

    mean_us: float
    median_us: float | None = None
    stdev_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None


@dataclass(frozen=True, slots=True)
class Timing:
    """The time of one phase (`op`) on one rank for one (backend, local_batch_size), with the
    knobs it was measured with. `stats` is None for a rank whose value was `null` (not measured):
    the other ranks are kept."""

    backend: str
    local_batch_size: int
    op: str
    rank: int
    stats: Stats | None
    payload_dtype: str | None = None
    knobs: Knobs = Knobs()
    unhonoured: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KernelTiming:
    """One kernel's time on one rank, attributed to a phase (`dispatch`, `combine`, `other`).
    A rank that did not run the kernel (`0.0` or all-zero stats in the output) has none."""

    backend: str
    local_batch_size: int
    phase: str
    kernel: str
    rank: int
    count: int
    stats: Stats


@dataclass(frozen=True)
class Skip:
    """A backend (or one of its sizes, when `local_batch_size` is set) that did not run."""

    backend: str
    local_batch_size: int | None
    reason: str


@dataclass(frozen=True)
class Dropped:
    """Input that was not kept: where it was (`source`, `line`), why, and how it began."""

    source: str
    line: int
    reason: str
    excerpt: str
    job_key: str | None = None


@dataclass(frozen=True)
class WorkerFailure:
    """An uncaught exception reported by a worker rank on stderr."""

    source: str
    rank: int | None
    world_size: int | None
    pid: int | None
    traceback: str


@dataclass(frozen=True)
class ParsedJob:
    """Everything that belongs to one run header (one benchmark configuration)."""

    header: RunHeader | None
    timings: tuple[Timing, ...] = ()
    kernels: tuple[KernelTiming, ...] = ()
    skips: tuple[Skip, ...] = ()
    warning: str | None = None

    @property
    def loadable(self) -> bool:
        return bool(self.timings or self.skips)

    @property
    def measured(self) -> int:
        """Rank values measured (a rank's `null` is not)."""
        return sum(t.stats is not None for t in self.timings)


@dataclass(frozen=True)
class ParsedOutput:
    """The result of reading one benchmark invocation's outputs (stdout, stderr, output file)."""

    jobs: tuple[ParsedJob, ...] = ()
    dropped: tuple[Dropped, ...] = ()
    failures: tuple[WorkerFailure, ...] = ()
    reports_written: tuple[str, ...] = ()
    # Dropped items and worker failures beyond what is kept (limits.MAX_DROPPED_PER_JOB), per job
    # key (None: items that belong to no job, counted against every job).
    omitted: Mapping[str | None, int] = field(default_factory=dict)

    def omitted_for(self, job_key: str) -> int:
        return self.omitted.get(job_key, 0) + self.omitted.get(None, 0)

    @property
    def incomplete(self) -> bool:
        """Something was dropped or failed."""
        return bool(self.dropped or self.failures or self.omitted)

    @property
    def loadable(self) -> bool:
        return any(job.loadable for job in self.jobs)
