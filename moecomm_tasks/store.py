"""Load parsed benchmark output into PostgreSQL: idempotent, atomic per job, in bulk.

Each input (the jobs of one `load` call; one job per nightly task) is loaded in one transaction:
a failure part-way leaves nothing of it behind. The job's content is fingerprinted: reloading the same content under
the same run id changes no row; loading different content for the same job (a re-measurement)
replaces that job's rows whole. Measurements (one row per backend, size and op, the ranks' times
in arrays) go in with binary COPY, kernel timings with CSV COPY; the measurements' insert
trigger (migration 0015) writes their series' nights (`series_night`) in the same transaction.
Concurrent loads of one job serialize on its row, and the one that lost the race runs again
(`_in_transaction`): each of them succeeds, and the last one's content stays.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import struct
import time
from dataclasses import astuple, dataclass, field, fields
from datetime import datetime, timezone
from itertools import repeat
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extras
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from moecomm_tasks import knobs, limits
from moecomm_tasks.dbguard import describe
from moecomm_tasks.domain import JobState
from moecomm_tasks.errors import DatabaseError, LoadError
from moecomm_tasks.records import Dropped, ParsedJob, ParsedOutput, RunHeader, Timing, WorkerFailure

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSACTION_ATTEMPTS = 5

PROVENANCE_COLUMNS = (
    "gpu_model", "gpu_count", "driver_version", "cuda_version", "nccl_version", "torch_version",
    "trtllm_version", "trtllm_commit", "hosts", "build_name", "build_commit", "build_version", "command", "environment",
)
MEASUREMENT_COLUMNS = (
    "job_pk", "backend", "local_batch_size", "op",
    "mean_us", "median_us", "stdev_us", "min_us", "max_us", "payload_dtype",
    *knobs.KNOB_FIELDS, "unhonoured",
)
HEADER_FIELDS = tuple(f.name for f in fields(RunHeader) if f.name != "extra")
KERNEL_COLUMNS = (
    "job_pk", "backend", "local_batch_size", "phase", "kernel", "rank", "count",
    "mean_us", "median_us", "stdev_us", "min_us", "max_us",
)


@dataclass(frozen=True)
class JobOutcome:
    job_key: str
    status: str  # "loaded", "replaced" or "unchanged"
    state: JobState
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


def _state(job: ParsedJob, dropped: Sequence[Dropped], failures: Sequence[WorkerFailure], omitted: int) -> JobState:
    if not dropped and not failures and not omitted:
        return JobState.SUCCEEDED
    return JobState.PARTIAL if job.timings else JobState.FAILED


def _csv_lines(rows: Iterable[Sequence[Any]]) -> list[str]:
    """Each row as one CSV record for COPY (floats as their shortest exact repr, None as empty).

    A record can span lines (a quoted field with a line break), so records are cut per row.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    lines = []
    for row in rows:
        writer.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])
        lines.append(buffer.getvalue())
        buffer.seek(0)
        buffer.truncate()
    return lines


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_FLOAT8 = struct.Struct(">id")  # one array element: its length (8) and its value
_FLOAT8_OID = 701
_TEXT_OID = 25
_TRUE, _FALSE = struct.pack(">ib", 1, 1), struct.pack(">ib", 1, 0)


def _binary_text(value: str | None) -> bytes:
    if value is None:
        return b"\xff\xff\xff\xff"
    data = value.encode()
    return struct.pack(">i", len(data)) + data


def _binary_bool(value: bool) -> bytes:
    return _TRUE if value else _FALSE


def _binary_text_array(values: Sequence[str]) -> bytes:
    """A text[] field in COPY's binary format; NULL when empty."""
    if not values:
        return b"\xff\xff\xff\xff"
    elements = b"".join(_binary_text(v) for v in values)
    body = struct.pack(">iiiii", 1, 0, _TEXT_OID, len(values), 1) + elements
    return struct.pack(">i", len(body)) + body


def _binary_array(values: list[float | None]) -> bytes:
    """A float8[] field in COPY's binary format; NULL when no rank has this statistic."""
    if None in values:
        if all(v is None for v in values):
            return b"\xff\xff\xff\xff"
        elements = b"".join(b"\xff\xff\xff\xff" if v is None else _FLOAT8.pack(8, v) for v in values)
        has_null = 1
    else:
        elements = b"".join(map(_FLOAT8.pack, repeat(8, len(values)), values))
        has_null = 0
    body = struct.pack(">iiiii", 1, has_null, _FLOAT8_OID, len(values), 1) + elements
    return struct.pack(">i", len(body)) + body


def _measurement_rows(timings: Iterable[Timing], provenance: Mapping[str, Any]) -> list[bytes]:
    """One binary COPY tuple per (backend, size, op), without its leading job key; each
    statistic an array indexed by rank (a rank that was not measured is a null element), then
    the knobs (completed from `provenance`, see `knobs.complete`)."""
    groups: dict[tuple, list[Timing]] = {}
    for t in timings:
        groups.setdefault((t.backend, t.local_batch_size, t.op), []).append(t)
    rows = []
    for (backend, size, op), ranks in groups.items():
        ranks.sort(key=lambda t: t.rank)
        if [t.rank for t in ranks] != list(range(len(ranks))):
            raise LoadError(f"{backend} @ {size} {op}: ranks {[t.rank for t in ranks]} are not 0..{len(ranks) - 1}")
        if not 0 < size <= limits.MAX_LOCAL_BATCH_SIZE:
            raise LoadError(f"{backend} @ {size} {op}: local_batch_size beyond 1..{limits.MAX_LOCAL_BATCH_SIZE}")
        stats = [t.stats for t in ranks]
        knob = knobs.complete(ranks[0].knobs, provenance)
        columns = [_binary_array([None if s is None else getattr(s, name) for s in stats])
                   for name in ("mean_us", "median_us", "stdev_us", "min_us", "max_us")]
        rows.append(
            _binary_text(backend) + struct.pack(">ii", 4, size) + _binary_text(op) + b"".join(columns)
            + _binary_text(ranks[0].payload_dtype)
            + b"".join(_binary_bool(getattr(knob, f)) for f in knobs.FLAGS) + _binary_text(knob.timing_method)
            + _binary_text_array(ranks[0].unhonoured)
        )
    return rows


def _copy_binary(cur: Any, table: str, columns: Sequence[str], tuples: Iterable[bytes]) -> None:
    """COPY tuples in PostgreSQL's binary format into `table`."""
    data = b"".join(tuples)
    if data:
        cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT binary)",
                        io.BytesIO(_COPY_HEADER + data + _COPY_TRAILER))


def _copy(cur: Any, table: str, columns: Sequence[str], lines: list[str]) -> None:
    """COPY CSV records into `table`."""
    if lines:
        cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv)", io.StringIO("".join(lines)))


@dataclass
class _PreparedJob:
    """One job's rows, formatted for COPY, and its fingerprint."""

    job: ParsedJob
    key: str
    state: JobState
    error: str | None
    sha: str
    measurement_rows: list[bytes]
    kernel_lines: list[str]
    dropped: Sequence[Dropped]
    failures: Sequence[WorkerFailure]
    provenance: Mapping[str, Any]
    header_json: str
    omitted: int

    def outcome(self, status: str) -> JobOutcome:
        return JobOutcome(self.key, status, self.state, self.job.measured, len(self.job.kernels), len(self.job.skips))


def _prepare(job: ParsedJob, dropped: Sequence[Dropped], failures: Sequence[WorkerFailure],
             provenance: Mapping[str, Any], state: JobState | None, error: str | None, omitted: int) -> _PreparedJob:
    header = job.header
    assert header is not None
    state = JobState(state) if state else _state(job, dropped, failures, omitted)
    measurement_rows = _measurement_rows(job.timings, provenance)
    kernel_lines = _csv_lines(
        (k.backend, k.local_batch_size, k.phase, k.kernel, k.rank, k.count, k.stats.mean_us,
         k.stats.median_us, k.stats.stdev_us, k.stats.min_us, k.stats.max_us)
        for k in job.kernels
    )
    header_json = json.dumps(_header_dict(header), sort_keys=True, default=str)
    fingerprint = hashlib.sha256(header_json.encode())
    fingerprint.update(json.dumps(
        [[astuple(s) for s in job.skips], [astuple(d) for d in dropped], [astuple(f) for f in failures],
         provenance, state, error, job.warning, omitted],
        sort_keys=True, default=str,
    ).encode())
    fingerprint.update(b"".join(measurement_rows))
    fingerprint.update(b"--kernels--\n")
    fingerprint.update("".join(kernel_lines).encode())
    return _PreparedJob(job, header.job_key(), state, error, fingerprint.hexdigest(), measurement_rows,
                        kernel_lines, dropped, failures, provenance, header_json, omitted)


def _provenance_row(job_pk: int, provenance: Mapping[str, Any]) -> tuple:
    known = [provenance.get(c) for c in PROVENANCE_COLUMNS]
    environment = known[-1] or {}
    extra = {k: v for k, v in provenance.items() if k not in PROVENANCE_COLUMNS}
    return (job_pk, *known[:-1], json.dumps(environment), json.dumps(extra, default=str))


def _header_dict(header: RunHeader) -> dict[str, Any]:
    """The header as stored in job.header: its fields, with the extra keys beside them."""
    fields = {name: getattr(header, name) for name in HEADER_FIELDS}
    fields.update(header.extra)
    return fields


def _job_row(run_pk: int, prepared: _PreparedJob) -> tuple:
    header = prepared.job.header
    return (run_pk, prepared.key, header.profile, header.ep_size, header.quant_algo, header.hidden_size,
            header.top_k, header.num_experts, header.dtype, header.backend, prepared.state.value, prepared.error,
            prepared.header_json, prepared.sha, prepared.job.warning, prepared.omitted)


def _write(cur: Any, run_pk: int, prepared: list[_PreparedJob]) -> list[JobOutcome]:
    """Write the jobs of one input in the open transaction; jobs whose content is unchanged are left alone."""
    cur.execute(
        "SELECT job_key, job_pk, content_sha256 FROM job WHERE run_pk = %s AND job_key = ANY(%s) FOR UPDATE",
        (run_pk, [p.key for p in prepared]),
    )
    existing = {key: (pk, sha) for key, pk, sha in cur.fetchall()}
    unchanged = {p.key for p in prepared if p.key in existing and existing[p.key][1] == p.sha}
    to_write = [p for p in prepared if p.key not in unchanged]
    replaced = [existing[p.key][0] for p in to_write if p.key in existing]
    if replaced:
        cur.execute("DELETE FROM job WHERE job_pk = ANY(%s)", (replaced,))
    job_pks: dict[str, int] = {}
    if to_write:
        inserted = psycopg2.extras.execute_values(
            cur,
            """INSERT INTO job (run_pk, job_key, profile, ep_size, quant_algo, hidden_size, top_k, num_experts,
                                dtype, requested_backend, state, error, header, content_sha256, warning,
                                dropped_omitted)
               VALUES %s ON CONFLICT ON CONSTRAINT job_run_key DO NOTHING RETURNING job_key, job_pk""",
            [_job_row(run_pk, p) for p in to_write], fetch=True, page_size=len(to_write),
        )
        job_pks = dict(inserted)
        raced = [p.key for p in to_write if p.key not in job_pks]
        if raced:
            raise _ConcurrentJob(raced[0])
    # The provenance first: it holds the GPU model, part of the series key that the measurements'
    # insert trigger writes into `series_night` (migration 0015).
    provenance = [_provenance_row(job_pks[p.key], p.provenance) for p in to_write if p.provenance]
    if provenance:
        psycopg2.extras.execute_values(
            cur, f"INSERT INTO provenance (job_pk, {', '.join(PROVENANCE_COLUMNS)}, extra) VALUES %s", provenance,
            page_size=1000)
    field_count = struct.pack(">h", len(MEASUREMENT_COLUMNS))
    _copy_binary(cur, "measurement", MEASUREMENT_COLUMNS, (
        field_count + struct.pack(">iq", 8, job_pks[p.key]) + row for p in to_write for row in p.measurement_rows
    ))
    _copy(cur, "kernel_timing", KERNEL_COLUMNS,
          [f"{job_pks[p.key]},{line}" for p in to_write for line in p.kernel_lines])
    skips = [(job_pks[p.key], s.backend, s.local_batch_size, s.reason) for p in to_write for s in p.job.skips]
    failures = [
        row for p in to_write for row in (
            [(job_pks[p.key], seq, "dropped", d.source, d.line, None, d.reason, d.excerpt)
             for seq, d in enumerate(p.dropped)]
            + [(job_pks[p.key], len(p.dropped) + seq, "worker", f.source, None, f.rank,
                f"rank {f.rank} raised an uncaught exception", f.traceback[-4000:])
               for seq, f in enumerate(p.failures)]
        )
    ]
    for sql, rows in (
        ("INSERT INTO skip (job_pk, backend, local_batch_size, reason) VALUES %s", skips),
        ("INSERT INTO failure (job_pk, seq, kind, source, line, rank, reason, excerpt) VALUES %s", failures),
    ):
        if rows:
            psycopg2.extras.execute_values(cur, sql, rows, page_size=1000)
    return [p.outcome("unchanged" if p.key in unchanged else "replaced" if p.key in existing else "loaded")
            for p in prepared]


def load(
    engine: Engine,
    parsed: ParsedOutput,
    run_id: str,
    run_at: datetime | None = None,
    provenance: Mapping[str, Any] | None = None,
    state: JobState | None = None,
    error: str | None = None,
) -> LoadResult:
    """Load every job of `parsed` under `run_id`, in one transaction.

    `provenance` (keys of the provenance table; others are kept in its `extra`) is merged over
    what the run header carries under `provenance`. `state` and `error` override the job state
    derived from the input (the DAG records launch failures this way).
    Raises `LoadError` when the database refuses the input, `DatabaseError` when the database
    fails (unreachable, gone or stalled mid-load); either way nothing of it was written.
    """
    try:
        limits.run_id(run_id)
    except limits.Invalid as exc:
        raise LoadError(str(exc)) from None
    run_at = run_at or datetime.now(timezone.utc)
    if run_at.tzinfo is None:
        raise LoadError(f"run time {run_at.isoformat()} has no time zone: give one (e.g. +00:00)")
    prepared = []
    for job in parsed.jobs:
        key = job.header.job_key()
        job_provenance = dict(job.header.extra.get("provenance") or {})
        job_provenance.update(provenance or {})
        dropped = [d for d in parsed.dropped if d.job_key in (key, None)]
        prepared.append(_prepare(job, dropped, parsed.failures, job_provenance, state, error,
                                 parsed.omitted_for(key)))

    def write(cur: Any) -> list[JobOutcome]:
        cur.execute(
            "INSERT INTO run (run_id, run_at) VALUES (%s, %s) ON CONFLICT ON CONSTRAINT run_run_id_key DO NOTHING",
            (run_id, run_at),
        )
        cur.execute("SELECT run_pk FROM run WHERE run_id = %s", (run_id,))
        return _write(cur, cur.fetchone()[0], prepared)

    try:
        outcomes = _in_transaction(engine, write)
    except _ConcurrentJob as exc:
        raise LoadError(f"job {exc} of run {run_id} kept being replaced by concurrent loads ({TRANSACTION_ATTEMPTS} "
                        "attempts); nothing of this input was written: retry") from exc
    except (psycopg2.OperationalError, psycopg2.InterfaceError, DBAPIError) as exc:  # DBAPIError: connecting
        log.info("load of run %s failed: %s", run_id, exc)
        raise DatabaseError(f"run {run_id} was not loaded: {describe(exc)}; a load is all or nothing: "
                            "run it again") from exc
    except (psycopg2.Error, LoadError, ValueError) as exc:
        log.info("load of run %s failed: %s", run_id, exc)
        if isinstance(exc, LoadError):
            raise
        raise LoadError(f"the database refused run {run_id}'s input (nothing of it was written): "
                        f"{' '.join(str(exc).split())}") from exc
    return LoadResult(run_id, tuple(outcomes), parsed.dropped, parsed.failures)


class _ConcurrentJob(Exception):
    """A job of this input was inserted by another process after this transaction looked for it."""


def _discard(raw: Any) -> None:
    """Roll back a failed transaction; when that fails too (the connection is gone), drop the
    connection instead, so the error that caused it is the one reported."""
    try:
        raw.rollback()
    except Exception as exc:  # noqa: BLE001 (any failure here is secondary to the first error)
        log.info("rollback failed (%s: %s); the connection is discarded", type(exc).__name__, exc)
        raw.invalidate()


def _in_transaction(engine: Engine, work: Callable[[Any], T]) -> T:
    """Run `work(cursor)` in one transaction and commit it.

    A transaction that lost a race with a concurrent load of the same job (`_ConcurrentJob`), or
    that the server rolled back to break a deadlock or a serialization conflict, runs again, up to
    TRANSACTION_ATTEMPTS times, after a short random pause: concurrent replaces of one job all
    succeed, one after the other. Anything else is raised as it came."""
    attempt = 1
    while True:
        raw = engine.raw_connection()
        try:
            with raw.cursor() as cur:
                result = work(cur)
            raw.commit()
            return result
        except Exception as exc:
            _discard(raw)
            if attempt == TRANSACTION_ATTEMPTS or not isinstance(
                    exc, (_ConcurrentJob, psycopg2.errors.TransactionRollbackError)):
                raise
            log.info("load transaction %d/%d lost a race (%s); trying again", attempt, TRANSACTION_ATTEMPTS, exc)
        finally:
            raw.close()
        time.sleep(random.uniform(0.05, 0.25) * attempt)
        attempt += 1
