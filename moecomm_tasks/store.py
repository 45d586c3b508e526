"""Load parsed benchmark output into PostgreSQL: idempotent, atomic per job, in bulk.

Each job (one benchmark configuration of a run) is loaded in one transaction: a failure part-way
leaves nothing of it behind. The job's content is fingerprinted: reloading the same content under
the same run id changes no row; loading different content for the same job (a re-measurement)
replaces that job's rows whole. Measurements and kernel timings go in with COPY.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

import psycopg2
import psycopg2.extras
from sqlalchemy.engine import Engine

from moecomm_tasks.errors import LoadError
from moecomm_tasks.records import Dropped, ParsedJob, ParsedOutput, WorkerFailure

log = logging.getLogger(__name__)

PROVENANCE_COLUMNS = (
    "gpu_model", "gpu_count", "driver_version", "cuda_version", "nccl_version", "torch_version",
    "trtllm_version", "trtllm_commit", "hosts", "command", "environment",
)
MEASUREMENT_COLUMNS = (
    "job_pk", "backend", "local_batch_size", "op", "rank",
    "mean_us", "median_us", "stdev_us", "min_us", "max_us", "payload_dtype",
)
KERNEL_COLUMNS = (
    "job_pk", "backend", "local_batch_size", "phase", "kernel", "rank", "count",
    "mean_us", "median_us", "stdev_us", "min_us", "max_us",
)


@dataclass(frozen=True)
class JobOutcome:
    job_key: str
    status: str  # "loaded", "replaced" or "unchanged"
    state: str
    measurements: int
    kernels: int
    skips: int


@dataclass(frozen=True)
class LoadResult:
    run_id: str
    jobs: tuple[JobOutcome, ...] = ()
    dropped: tuple[Dropped, ...] = field(default_factory=tuple)
    failures: tuple[WorkerFailure, ...] = field(default_factory=tuple)

    @property
    def measurements(self) -> int:
        return sum(j.measurements for j in self.jobs)


def _state(job: ParsedJob, dropped: Sequence[Dropped], failures: Sequence[WorkerFailure]) -> str:
    if not dropped and not failures:
        return "succeeded"
    return "partial" if job.timings else "failed"


def _fingerprint(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _copy(cur: Any, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    count = 0
    for row in rows:
        writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])
        count += 1
    if count:
        buffer.seek(0)
        cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", buffer)
    return count


def _provenance_row(job_pk: int, provenance: Mapping[str, Any]) -> tuple:
    known = [provenance.get(c) for c in PROVENANCE_COLUMNS]
    environment = known[-1] or {}
    extra = {k: v for k, v in provenance.items() if k not in PROVENANCE_COLUMNS}
    return (job_pk, *known[:-1], json.dumps(environment), json.dumps(extra, default=str))


def _load_job(
    cur: Any,
    run_pk: int,
    job: ParsedJob,
    dropped: Sequence[Dropped],
    failures: Sequence[WorkerFailure],
    provenance: Mapping[str, Any],
    state: str | None,
    error: str | None,
) -> JobOutcome:
    header = job.header
    assert header is not None
    key = header.job_key()
    state = state or _state(job, dropped, failures)
    sha = _fingerprint(
        asdict(header), [asdict(t) for t in job.timings], [asdict(k) for k in job.kernels],
        [asdict(s) for s in job.skips], [asdict(d) for d in dropped],
        [asdict(f) for f in failures], provenance, state, error,
    )
    cur.execute(
        "SELECT job_pk, content_sha256 FROM job WHERE run_pk = %s AND job_key = %s FOR UPDATE",
        (run_pk, key),
    )
    existing = cur.fetchone()
    counts = (len(job.timings), len(job.kernels), len(job.skips))
    if existing and existing[1] == sha:
        return JobOutcome(key, "unchanged", state, *counts)
    if existing:
        cur.execute("DELETE FROM job WHERE job_pk = %s", (existing[0],))
    header_json = {k: v for k, v in asdict(header).items() if k != "extra"}
    header_json.update(header.extra)
    cur.execute(
        """INSERT INTO job (run_pk, job_key, profile, ep_size, quant_algo, hidden_size, top_k,
                            num_experts, dtype, requested_backend, state, error, header, content_sha256)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           ON CONFLICT ON CONSTRAINT job_run_key DO NOTHING
           RETURNING job_pk""",
        (run_pk, key, header.profile, header.ep_size, header.quant_algo, header.hidden_size,
         header.top_k, header.num_experts, header.dtype, header.backend, state, error,
         json.dumps(header_json, default=str), sha),
    )
    row = cur.fetchone()
    if row is None:
        raise LoadError(f"job {key} of this run was loaded by another process at the same time; retry")
    job_pk = row[0]
    _copy(cur, "measurement", MEASUREMENT_COLUMNS, (
        (job_pk, t.backend, t.local_batch_size, t.op, t.rank, t.stats.mean_us, t.stats.median_us,
         t.stats.stdev_us, t.stats.min_us, t.stats.max_us, t.payload_dtype)
        for t in job.timings
    ))
    _copy(cur, "kernel_timing", KERNEL_COLUMNS, (
        (job_pk, k.backend, k.local_batch_size, k.phase, k.kernel, k.rank, k.count, k.stats.mean_us,
         k.stats.median_us, k.stats.stdev_us, k.stats.min_us, k.stats.max_us)
        for k in job.kernels
    ))
    psycopg2.extras.execute_values(
        cur, "INSERT INTO skip (job_pk, backend, local_batch_size, reason) VALUES %s",
        [(job_pk, s.backend, s.local_batch_size, s.reason) for s in job.skips],
    )
    failure_rows = [
        (job_pk, seq, "dropped", d.source, d.line, None, d.reason, d.excerpt)
        for seq, d in enumerate(dropped)
    ] + [
        (job_pk, len(dropped) + seq, "worker", f.source, None, f.rank,
         f"rank {f.rank} raised an uncaught exception", f.traceback[-4000:])
        for seq, f in enumerate(failures)
    ]
    psycopg2.extras.execute_values(
        cur, "INSERT INTO failure (job_pk, seq, kind, source, line, rank, reason, excerpt) VALUES %s",
        failure_rows,
    )
    if provenance:
        cur.execute(
            f"INSERT INTO provenance (job_pk, {', '.join(PROVENANCE_COLUMNS)}, extra) "
            f"VALUES ({', '.join(['%s'] * (len(PROVENANCE_COLUMNS) + 2))})",
            _provenance_row(job_pk, provenance),
        )
    return JobOutcome(key, "replaced" if existing else "loaded", state, *counts)


def load(
    engine: Engine,
    parsed: ParsedOutput,
    run_id: str,
    run_at: datetime | None = None,
    provenance: Mapping[str, Any] | None = None,
    state: str | None = None,
    error: str | None = None,
) -> LoadResult:
    """Load every job of `parsed` under `run_id`, one transaction per job.

    `provenance` (keys of the provenance table; others are kept in its `extra`) is merged over
    what the run header carries under `provenance`. `state` and `error` override the job state
    derived from the input (the DAG records launch failures this way).
    Raises `LoadError` when the database refuses the input; jobs loaded before it stay loaded.
    """
    if not run_id or not run_id.strip():
        raise LoadError("a run id is required (--run-id)")
    run_at = run_at or datetime.now(timezone.utc)
    if run_at.tzinfo is None:
        raise LoadError(f"run time {run_at.isoformat()} has no time zone: give one (e.g. +00:00)")
    outcomes = []
    raw = engine.raw_connection()
    try:
        for job in parsed.jobs:
            key = job.header.job_key()
            dropped = [d for d in parsed.dropped if d.job_key in (key, None)]
            job_provenance = dict(job.header.extra.get("provenance") or {})
            job_provenance.update(provenance or {})
            try:
                with raw.cursor() as cur:
                    cur.execute(
                        "INSERT INTO run (run_id, run_at) VALUES (%s, %s) "
                        "ON CONFLICT ON CONSTRAINT run_run_id_key DO NOTHING",
                        (run_id, run_at),
                    )
                    cur.execute("SELECT run_pk FROM run WHERE run_id = %s", (run_id,))
                    run_pk = cur.fetchone()[0]
                    outcomes.append(_load_job(
                        cur, run_pk, job, dropped, parsed.failures, job_provenance, state, error
                    ))
                raw.commit()
            except psycopg2.Error as exc:
                raw.rollback()
                log.error("load of job %s under run %s failed: %s", key, run_id, exc)
                raise LoadError(
                    f"the database refused job {key} of run {run_id} (nothing of it was written): "
                    f"{str(exc).strip()}"
                ) from exc
    finally:
        raw.close()
    return LoadResult(run_id, tuple(outcomes), parsed.dropped, parsed.failures)
