"""The bodies of the nightly DAG's tasks: plan, run one job, analyze, report.

Each mapped `run_benchmark` task launches its job, keeps stdout, stderr and the output file on
disk, parses them and loads whatever was measured under the DAG run's id, with the job's state:
a crashed or timed-out job is recorded as failed (with its dropped objects, worker tracebacks
and the error), so the final tasks can read every outcome from the database. Benchmark failures
raise `BenchmarkFailed` (not worth a retry); infrastructure failures (`LaunchError`, `LoadError`,
`DatabaseError`: a database that is down, dies or stops answering, bounded as every connection
is by `moecomm_tasks.dbguard`) propagate as they are, and the task's retries try again. A
database whose migrations are not this moecomm's (`SchemaMismatch`) is refused, not retried.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from moecomm_tasks import launch, parse, provenance, store
from moecomm_tasks.bench.args import build_parser, resolve
from moecomm_tasks.domain import JobState
from moecomm_tasks.errors import MoecommError
from moecomm_tasks.matrix import Job, Matrix
from moecomm_tasks.names import safe_name
from moecomm_tasks.records import ParsedJob, ParsedOutput, RunHeader

log = logging.getLogger(__name__)


class BenchmarkFailed(MoecommError):
    """The benchmark itself failed (crashed, hung, failed its correctness check): recorded, not retried."""


def artifacts_root() -> Path:
    """`MOECOMM_ARTIFACTS`, else `moecomm/` under Airflow's log folder."""
    configured = os.environ.get("MOECOMM_ARTIFACTS")
    if configured:
        return Path(configured)
    logs = os.environ.get("AIRFLOW__LOGGING__BASE_LOG_FOLDER") or str(
        Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser() / "logs")
    return Path(logs) / "moecomm"


def report_dir(run_id: str) -> Path:
    """Where the `report` task writes a run's HTML report: `MOECOMM_REPORT_DIR/<run id>`, else
    `reports/<run id>` under the artifacts folder."""
    root = Path(os.environ["MOECOMM_REPORT_DIR"]) if os.environ.get("MOECOMM_REPORT_DIR") else artifacts_root() / "reports"
    return root / safe_name(run_id)


def plan(matrix: Matrix, params: dict[str, Any] | None) -> dict[str, list[dict[str, Any]]]:
    """The night's jobs, grouped by the node queue each is routed to (every queue present)."""
    params = params or {}
    jobs = matrix.jobs(params.get("backends") or None, params.get("profiles") or None,
                       params.get("ep_sizes") or None, build=params.get("build") or None)
    grouped: dict[str, list[dict[str, Any]]] = {queue: [] for queue in matrix.queues}
    for job in jobs:
        grouped[job.queue].append(job.model_dump())
    return grouped


def expected_header(program: list[str], job: Job) -> RunHeader:
    """The run header the benchmark would have printed, from its own command line (for a job that
    died before printing one)."""
    # parse_known_args: an upstream script may take flags our worker does not know.
    args, _unknown = build_parser().parse_known_args(program[program.index("--ep_size"):])
    shape = resolve(args, job.ep_size)
    return RunHeader(
        profile=args.profile, ep_size=job.ep_size, hidden_size=shape.hidden_size, top_k=shape.top_k,
        num_experts=shape.num_experts, quant_algo=shape.quant_algo, dtype="torch.bfloat16",
        local_batch_sizes=shape.local_batch_sizes, backend=args.backend,
    )


@dataclass(frozen=True)
class JobOutcome:
    job: str
    state: JobState
    measurements: int
    error: str | None
    artifacts: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (XCom): the state as its string."""
        return {**self.__dict__, "state": self.state.value}


def run_job(matrix: Matrix, job: Job, *, run_id: str, run_at: datetime, engine: Engine,
            artifacts_in: Path | None = None) -> JobOutcome:
    """Launch, keep the outputs, parse, load. Raises BenchmarkFailed after recording a failed job.

    The outputs go to `<artifacts_in>/<run id>/<job>/` (default: `artifacts_root()`)."""
    artifacts = (artifacts_in or artifacts_root()) / safe_name(run_id) / safe_name(job.name)
    spec = launch.build(matrix, job, artifacts)
    log.info("launching %s: %s", job.name, spec.argv)
    result = launch.run(spec)
    # Read as streams, in bounded memory, whatever the benchmark printed (moecomm_tasks.limits).
    parsed = parse.parse_paths([path for path in (spec.stdout, spec.stderr, spec.output_file) if path.is_file()])
    error = None
    if result.timed_out:
        error = f"timed out after {job.timeout_s} s; "
        if spec.slurm_job_name:
            error += f"Slurm job {spec.slurm_job_name} cancelled ({result.cancel_problem or 'ended'}); "
        error += f"all {result.leftover_killed} processes of the launch were killed"
    elif result.returncode != 0:
        error = f"the benchmark exited with status {result.returncode}"
        if result.launcher_error:
            error += f" ({result.launcher_error})"
    if not parsed.jobs:
        parsed = ParsedOutput(jobs=(ParsedJob(expected_header(spec.program, job)),), dropped=parsed.dropped,
                              failures=parsed.failures, reports_written=parsed.reports_written,
                              omitted=parsed.omitted)
    measured = sum(j.measured for j in parsed.jobs)
    state = None
    if error:
        state = JobState.PARTIAL if measured else JobState.FAILED
    script = ((job.build.script if job.build else None) or matrix.benchmark.script
              if matrix.benchmark.kind == "upstream" else None)
    host = provenance.host_provenance(Path(script) if script else None)
    launched = {"command": spec.argv, "environment": spec.knobs, "launcher": matrix.launcher.kind,
                "queue": job.queue, "artifacts": str(artifacts),
                "build_name": job.build.name if job.build else None,
                "build_commit": job.build.commit if job.build else None,
                "build_version": job.build.version if job.build else None}
    states = []
    for parsed_job in parsed.jobs:
        reported = dict(parsed_job.header.extra.get("provenance") or {})
        merged = provenance.merge(host, reported, launched)
        loaded = store.load(engine, ParsedOutput(jobs=(parsed_job,), dropped=parsed.dropped, failures=parsed.failures,
                                                 omitted=parsed.omitted),
                            run_id, run_at, provenance=merged, state=state, error=error)
        states += [j.state for j in loaded.jobs]
    final = (JobState.FAILED if JobState.FAILED in states else JobState.PARTIAL if JobState.PARTIAL in states
             else JobState.SUCCEEDED)
    outcome = JobOutcome(job.name, final, measured, error, str(artifacts))
    if error or final is JobState.FAILED:
        raise BenchmarkFailed(f"{job.name}: {error or 'nothing was measured'} (outputs in {artifacts})")
    return outcome


def analyze(engine: Engine, run_id: str, matrix: Matrix) -> dict[str, Any]:
    """The `analyze` task: first send the alert digests earlier runs could not deliver, then detect.
    The new alerts are candidates that `confirm` judges after their jobs ran again; with
    confirmation off (`matrix.confirmation.max_jobs = 0`) they are queued at once on every
    configured channel (one digest titled with the run id) and sent. Kernels alerts are queued at
    once either way (they need no confirmation) and, with confirmation on, sent by `confirm` in
    the same digest. A channel that fails is recorded in the outbox and tried again by the next
    run (or `moecomm detect --notify`)."""
    from moecomm_tasks import alerts, notify, outbox

    earlier = outbox.deliver_due(engine)
    confirming = matrix.confirmation.max_jobs > 0
    new_alerts = alerts.run_detection(engine, deliver_to=list(notify.channels()), digest=run_id, confirm=confirming)
    # With confirmation on, what detection queued (kernels alerts: exact, so confirmed at once)
    # goes out with the alerts `confirm` confirms, as the night's one digest.
    notified = earlier if confirming else {**earlier, **outbox.deliver_due(engine)}
    return {**run_summary(engine, run_id), "new_alerts": [a.as_json() for a in new_alerts], "notified": notified}


def confirm(engine: Engine, run_id: str, matrix: Matrix) -> dict[str, Any]:
    """The `confirm` task: judge the candidates by their jobs' re-runs (`recheck__<queue>`), queue
    the confirmed ones on every configured channel under the run's digest, and send."""
    from moecomm_tasks import confirm as confirmation, notify, outbox

    decisions = confirmation.decide(engine, matrix, run_id, list(notify.channels()), run_id)
    return {"decided": confirmation.summary(decisions), "notified": outbox.deliver_due(engine),
            "alerts": [{"alert_id": d.alert_id, "confirmation": d.confirmation.value, "note": d.note}
                       for d in decisions]}


def run_summary(engine: Engine, run_id: str) -> dict[str, Any]:
    """How the run's jobs ended, read from the database (not from the tasks' XComs)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT job_key, state, error, measurements FROM job_summary WHERE run_id = :r ORDER BY job_key"),
            {"r": run_id}).all()
    states: dict[str, int] = {}
    for row in rows:
        states[row.state] = states.get(row.state, 0) + 1
    return {"run_id": run_id, "jobs": len(rows), "states": states,
            "failed": [{"job": r.job_key, "error": r.error} for r in rows if r.state != JobState.SUCCEEDED]}


def night_table(engine: Engine, run_id: str) -> list[sa.Row]:
    """The night's results: per (profile, EP size, backend, size), dispatch and combine µs
    (median across ranks)."""
    with engine.connect() as conn:
        return list(conn.execute(sa.text("""
            SELECT profile, ep_size, backend, local_batch_size,
                   max(median_us) FILTER (WHERE op = 'dispatch') AS dispatch_us,
                   max(median_us) FILTER (WHERE op = 'combine') AS combine_us
            FROM nightly_series WHERE run_id = :r
            GROUP BY profile, ep_size, backend, local_batch_size
            ORDER BY profile, ep_size, backend, local_batch_size
        """), {"r": run_id}))


def report_text(engine: Engine, run_id: str) -> str:
    """The night's results as a plain-text table (the `report` task's log and XCom)."""
    rows = night_table(engine, run_id)
    lines = [f"run {run_id}: {len(rows)} (profile, EP size, backend, size) points",
             f"{'profile':<12} {'ep':>3} {'backend':<18} {'tokens':>7} {'dispatch µs':>12} {'combine µs':>11}"]
    for r in rows:
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"{r.profile:<12} {r.ep_size:>3} {r.backend:<18} {r.local_batch_size:>7} "
                     f"{fmt(r.dispatch_us):>12} {fmt(r.combine_us):>11}")
    return "\n".join(lines)


def verdict(engine: Engine, run_id: str, planned: list[list[dict[str, Any]]]) -> None:
    """Raise BenchmarkFailed unless every planned job of the run is recorded as succeeded."""
    with engine.connect() as conn:
        recorded = conn.execute(sa.text(
            "SELECT requested_backend, profile, ep_size, state FROM job_summary WHERE run_id = :r"), {"r": run_id}).all()
    states = {(r.requested_backend, r.profile, r.ep_size): r.state for r in recorded}
    missing, failed = [], []
    for job in (j for queue_jobs in planned for j in (queue_jobs or [])):
        state = states.get((job["backend"], job["profile"], job["ep_size"]))
        if state is None:
            missing.append(Job(**job).name)
        elif state != JobState.SUCCEEDED:
            failed.append(f"{Job(**job).name} ({state})")
    if missing or failed:
        raise BenchmarkFailed(f"run {run_id}: {len(failed)} jobs did not succeed: {failed}; "
                              f"{len(missing)} have no record (their task failed before loading): {missing}")
