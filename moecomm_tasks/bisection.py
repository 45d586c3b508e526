"""Bisecting a regression alert over the matrix's catalog of builds.

From an alert (its series, last good run, first bad run), `plan` finds the job that measures the
series and the builds those two runs ran (recorded in their provenance), and takes the catalog's
builds from the one to the other. `run` measures them as `bisection_search` asks: each
repetition is the alert's job launched by the nightly job's own code (`nightly.run_job`) on one
build, stored like any job's under a run of its own (`run.kind = 'bisection'`, quarantined, left
out of the public views and so of the nightly series and the detector). Every build's
repetitions and outcome are stored as soon as they are decided (`bisection_probe`), and the
verdict with the alert (`bisection`, the view `bisection_verdict`).

`eligible` says which of a night's new alerts the nightly DAG hands to the bisection DAG.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from moecomm_tasks import bisection_search as search
from moecomm_tasks import nightly, query
from moecomm_tasks.domain import Confirmation, Direction
from moecomm_tasks.errors import MoecommError
from moecomm_tasks.matrix import Build, Job, Matrix
from moecomm_tasks.names import safe_name
from moecomm_tasks.series import SERIES_KEY

log = logging.getLogger(__name__)


class BisectionError(MoecommError):
    """An alert that cannot be bisected: the message says what is missing."""


@dataclass(frozen=True)
class Plan:
    """What bisecting one alert takes: its series, the job that measures it, the builds."""

    alert_id: int
    series: dict[str, Any]
    change_pct: float
    job: Job
    builds: tuple[Build, ...]  # the good end, the builds between, the bad end; oldest first

    @property
    def inner(self) -> int:
        return len(self.builds) - 2


def is_confirmed(alert: Mapping[str, Any]) -> bool:
    """Whether an alert is a confirmed regression (its job's re-run agreed, moecomm_tasks.confirm),
    which the nightly DAG hands to the bisection DAG."""
    return alert["direction"] == Direction.REGRESSION and alert["confirmation"] == Confirmation.CONFIRMED


def _alert(conn: sa.Connection, alert_id: int) -> sa.Row:
    row = conn.execute(sa.text(f"""
        SELECT alert_id, {', '.join(SERIES_KEY)}, direction, change_pct, last_good_run_id, first_bad_run_id
        FROM alert WHERE alert_id = :id"""), {"id": alert_id}).first()
    if row is None:
        raise BisectionError(f"no alert {alert_id} (see: moecomm alerts list)")
    return row


def _end(conn: sa.Connection, run_id: str, series: Mapping[str, Any]) -> sa.Row:
    """The job of `run_id` that measured `series`, with the build it ran."""
    rows = conn.execute(sa.text("""
        SELECT DISTINCT j.job_key, j.requested_backend, j.profile, j.ep_size, p.build_name
        FROM run r JOIN job j USING (run_pk) JOIN measurement m USING (job_pk) LEFT JOIN provenance p USING (job_pk)
        WHERE r.run_id = :run AND m.backend = :backend AND j.profile = :profile AND j.ep_size = :ep_size
          AND COALESCE(j.quant_algo, '') = :quant_algo AND m.local_batch_size = :local_batch_size AND m.op = :op
          AND COALESCE(p.gpu_model, '') = :gpu_model"""), {"run": run_id, **series}).all()
    if len(rows) != 1:
        raise BisectionError(f"run {run_id} has {len(rows)} jobs that measured the alert's series, not one")
    if rows[0].build_name is None:
        raise BisectionError(f"run {run_id} recorded no build (it ran before the matrix had a catalog of builds, "
                             "[[builds]]): there is nothing to bisect between")
    return rows[0]


def plan(engine: Engine, matrix: Matrix, alert_id: int) -> Plan:
    """Everything bisecting alert `alert_id` takes; raises BisectionError saying what is missing."""
    with engine.connect() as conn:
        alert = _alert(conn, alert_id)
        if alert.direction != Direction.REGRESSION:
            raise BisectionError(f"alert {alert_id} is an improvement: only regressions are bisected")
        series = {k: getattr(alert, k) for k in SERIES_KEY}
        good, bad = _end(conn, alert.last_good_run_id, series), _end(conn, alert.first_bad_run_id, series)
    names = [b.name for b in matrix.builds]
    missing = [n for n in (good.build_name, bad.build_name) if n not in names]
    if missing:
        raise BisectionError(f"builds {missing} (of runs {alert.last_good_run_id}, {alert.first_bad_run_id}) are not "
                             f"in the matrix's catalog ({names})")
    lo, hi = names.index(good.build_name), names.index(bad.build_name)
    if lo == hi:
        raise BisectionError(f"both nights ran build {good.build_name}: the change did not come with a build (see the "
                             "alert's provenance_diff for what else changed)")
    if lo > hi:
        raise BisectionError(f"the catalog does not order the last good build {good.build_name} before the first bad "
                             f"build {bad.build_name}: builds are listed oldest first")
    job = _job(matrix, good.requested_backend or series["backend"], good.profile, good.ep_size, good.build_name)
    return Plan(alert_id, series, float(alert.change_pct), job, tuple(matrix.builds[lo:hi + 1]))


def _job(matrix: Matrix, backend: str, profile: str, ep_size: int, build: str) -> Job:
    """The matrix's job (from the whole matrix, so that it keeps its node queue) on `build`."""
    for job in matrix.jobs(build=build):
        if (job.backend, job.profile, job.ep_size) == (backend, profile, ep_size):
            return job
    raise BisectionError(f"the matrix no longer runs {backend} {profile} EP {ep_size}: there is no job to bisect with")


def route(engine: Engine, matrix: Matrix, alert_id: int, queue: str) -> list[int]:
    """[alert_id] when `queue` is the node queue of the alert's job, else []: the bisection runs
    where the nightly job runs."""
    return [alert_id] if plan(engine, matrix, alert_id).job.queue == queue else []


def eligible(engine: Engine, matrix: Matrix, run_id: str) -> list[int]:
    """The alerts detected by run `run_id` to bisect: confirmed regressions, not bisected yet,
    with builds in the catalog between their last good and first bad run."""
    with engine.connect() as conn:
        alerts = conn.execute(sa.text("""
            SELECT a.alert_id, a.direction, a.confirmation FROM alert a
            WHERE a.detected_run_id = :run AND NOT EXISTS (SELECT 1 FROM bisection b WHERE b.alert_id = a.alert_id)
            ORDER BY a.alert_id"""), {"run": run_id}).all()
    chosen = []
    for alert in alerts:
        if not is_confirmed(alert._mapping):
            continue
        try:
            if plan(engine, matrix, alert.alert_id).inner > 0:
                chosen.append(alert.alert_id)
        except BisectionError as exc:
            log.info("alert %s is not bisected: %s", alert.alert_id, exc)
    return chosen


def _start(engine: Engine, matrix: Matrix, chosen: Plan, requested_by: str) -> int:
    settings = {"test": search.TEST, **matrix.bisection.model_dump()}
    builds = [{"name": b.name, "commit": b.commit, "version": b.version} for b in chosen.builds]
    with engine.begin() as conn:
        # A bisection left running longer than any could take was abandoned (its process died).
        conn.execute(sa.text("""
            UPDATE bisection SET state = 'failed', finished_at = now(),
                   reason = 'abandoned: it did not finish within its time bound (its process ended)'
            WHERE alert_id = :alert AND state = 'running' AND started_at < now() - make_interval(secs => :bound)"""),
            {"alert": chosen.alert_id, "bound": search.time_bound_s(matrix)})
        running = conn.execute(sa.text("SELECT bisection_pk, requested_by, started_at FROM bisection "
                                       "WHERE alert_id = :alert AND state = 'running'"), {"alert": chosen.alert_id}).first()
        if running is not None:
            raise BisectionError(f"alert {chosen.alert_id} is being bisected already (bisection {running.bisection_pk}, "
                                 f"by {running.requested_by}, since {running.started_at:%Y-%m-%d %H:%M} UTC)")
        # The unique index on running bisections settles a race with another process starting now.
        return conn.execute(sa.text("""
            INSERT INTO bisection (alert_id, requested_by, good_build, bad_build, builds, max_probes, settings)
            VALUES (:alert, :by, :good, :bad, CAST(:builds AS jsonb), :max_probes, CAST(:settings AS jsonb))
            RETURNING bisection_pk"""), {
            "alert": chosen.alert_id, "by": requested_by, "good": chosen.builds[0].name,
            "bad": chosen.builds[-1].name, "builds": json.dumps(builds), "settings": json.dumps(settings),
            "max_probes": search.max_probes(len(chosen.builds))}).scalar_one()


def _skips(conn: sa.Connection, run_id: str) -> list[str]:
    return list(conn.execute(sa.text(
        "SELECT s.reason FROM skip s JOIN job j USING (job_pk) JOIN run r USING (run_pk) WHERE r.run_id = :run"),
        {"run": run_id}).scalars())


def _stderr_tail(artifacts: Path, lines: int = 6, limit: int = 600) -> str:
    """The last words of a failed launch (mpirun's or the worker's), on one line."""
    path = artifacts / "stderr.txt"
    if not path.exists():
        return ""
    kept = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if line.strip() and not set(line.strip()) <= {"-", "="}]
    return " ".join(kept[-lines:])[-limit:]


class _Prober:
    """Measures builds for the search: one bisection run per repetition, stored as it goes."""

    def __init__(self, engine: Engine, matrix: Matrix, chosen: Plan, bisection_id: int, artifacts: Path):
        self.engine, self.matrix, self.plan, self.bisection_id, self.artifacts = (
            engine, matrix, chosen, bisection_id, artifacts)
        self.runs: dict[str, list[tuple[str, float | None]]] = {}
        self.seq = 0

    def measure(self, build: str, count: int) -> list[float]:
        values = []
        for _ in range(count):
            runs = self.runs.setdefault(build, [])
            run_id = f"bisect-{self.plan.alert_id}-{self.bisection_id}-{build}-{len(runs) + 1}"
            with self.engine.begin() as conn:
                conn.execute(sa.text("""
                    INSERT INTO run (run_id, run_at, kind, excluded, excluded_reason)
                    VALUES (:run, :at, 'bisection', true, :why)"""), {
                    "run": run_id, "at": datetime.now(timezone.utc),
                    "why": f"bisection run (bisection {self.bisection_id} of alert {self.plan.alert_id})"})
            job = _job(self.matrix, self.plan.job.backend, self.plan.job.profile, self.plan.job.ep_size, build)
            try:
                nightly.run_job(self.matrix, job, run_id=run_id, run_at=datetime.now(timezone.utc),
                                engine=self.engine, artifacts_in=self.artifacts)
            except nightly.BenchmarkFailed as exc:
                runs.append((run_id, None))
                tail = _stderr_tail(self.artifacts / safe_name(run_id) / safe_name(job.name))
                raise search.BuildFailed(f"{exc}" + (f"; stderr: {tail}" if tail else "")) from exc
            with self.engine.connect() as conn:
                value, skips = query.night_value(conn, run_id, self.plan.series), _skips(conn, run_id)
            runs.append((run_id, value))
            if value is None:
                raise search.BuildFailed(f"run {run_id} measured nothing for {self.plan.series['backend']} at "
                                         f"{self.plan.series['local_batch_size']} tokens ({self.plan.series['op']})"
                                         + (f"; skipped: {'; '.join(skips)}" if skips else ""))
            values.append(value)
        return values

    def record(self, item: search.Measured) -> None:
        build = next(b for b in self.plan.builds if b.name == item.build)
        runs = self.runs.get(item.build, [])
        self.seq += 1
        with self.engine.begin() as conn:
            conn.execute(sa.text("""
                INSERT INTO bisection_probe (bisection_pk, seq, build_name, build_commit, build_version, role, outcome,
                                             run_ids, values_us, p_slower_than_good, p_faster_than_bad, position, error)
                VALUES (:b, :seq, :name, :commit, :version, :role, :outcome, :runs, :values, :p_bad, :p_good,
                        :position, :error)"""), {
                "b": self.bisection_id, "seq": self.seq, "name": build.name, "commit": build.commit,
                "version": build.version, "role": item.role, "outcome": item.outcome, "runs": [r for r, _ in runs],
                "values": [v for _, v in runs], "p_bad": item.p_slower_than_good, "p_good": item.p_faster_than_bad,
                "position": item.position, "error": item.error})
            if item.role == "probe":
                conn.execute(sa.text("UPDATE bisection SET probes = probes + 1 WHERE bisection_pk = :b"),
                             {"b": self.bisection_id})


def _finish(engine: Engine, bisection_id: int, chosen: Plan, verdict: search.Verdict) -> None:
    commits = {b.name: b.commit or b.version for b in chosen.builds}
    with engine.begin() as conn:
        conn.execute(sa.text("""
            UPDATE bisection SET state = :state, last_good_build = :good, first_bad_build = :bad,
                   last_good_commit = :good_commit, first_bad_commit = :bad_commit, probes = :probes,
                   reason = :reason, finished_at = now()
            WHERE bisection_pk = :b"""), {
            "state": verdict.state, "good": verdict.last_good, "bad": verdict.first_bad,
            "good_commit": commits[verdict.last_good], "bad_commit": commits[verdict.first_bad],
            "probes": verdict.probes, "reason": verdict.reason, "b": bisection_id})


def _fail(engine: Engine, bisection_id: int, reason: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE bisection SET state = 'failed', reason = :reason, finished_at = now() "
                             "WHERE bisection_pk = :b AND state = 'running'"), {"reason": reason, "b": bisection_id})


@dataclass(frozen=True)
class Outcome:
    bisection_id: int
    alert_id: int
    state: str
    last_good_build: str | None
    first_bad_build: str | None
    probes: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(engine: Engine, matrix: Matrix, alert_id: int, requested_by: str,
        artifacts_in: Path | None = None) -> Outcome:
    """Bisect alert `alert_id` and store the verdict. A build that fails to run ends it "failed";
    an error of the infrastructure (the database, the launcher itself) is stored as "failed" with
    its message, then raised."""
    chosen = plan(engine, matrix, alert_id)
    try:
        bisection_id = _start(engine, matrix, chosen, requested_by)
    except sa.exc.IntegrityError as exc:
        raise BisectionError(f"alert {alert_id} is being bisected already (another process started it just now)") from exc
    log.info("bisection %s of alert %s over %s", bisection_id, alert_id, [b.label for b in chosen.builds])
    prober = _Prober(engine, matrix, chosen, bisection_id, (artifacts_in or nightly.artifacts_root()) / "bisections")
    settings = search.Settings(**matrix.bisection.model_dump())
    try:
        verdict = search.bisect([b.name for b in chosen.builds], prober.measure, chosen.change_pct, settings,
                                on_measured=prober.record)
    except Exception as exc:
        _fail(engine, bisection_id, f"the bisection could not go on: {type(exc).__name__}: {exc}")
        raise
    _finish(engine, bisection_id, chosen, verdict)
    return Outcome(bisection_id, alert_id, verdict.state, verdict.last_good, verdict.first_bad, verdict.probes,
                   verdict.reason)


def finish_unfinished(engine: Engine, requested_by: str) -> list[int]:
    """Mark the bisections that `requested_by` (a DAG run) left running as failed; return them."""
    with engine.begin() as conn:
        return list(conn.execute(sa.text("""
            UPDATE bisection SET state = 'failed', finished_at = now(),
                   reason = 'the bisection task ended before a verdict (its log says why)'
            WHERE requested_by = :by AND state = 'running' RETURNING bisection_pk"""), {"by": requested_by}).scalars())


def latest(engine: Engine, alert_id: int, requested_by: str | None = None) -> sa.Row | None:
    """The alert's latest bisection (of `requested_by`, when given), from `bisection_verdict`."""
    with engine.connect() as conn:
        return conn.execute(sa.text("""
            SELECT v.*, a.detected_run_id, a.direction, a.baseline_us, a.after_us, b.settings, b.builds, b.notified
            FROM bisection_verdict v JOIN alert a ON a.alert_id = v.alert_id JOIN bisection b ON b.bisection_pk = v.bisection_id
            WHERE v.alert_id = :alert AND (CAST(:by AS text) IS NULL OR v.requested_by = :by)
            ORDER BY v.bisection_id DESC LIMIT 1"""), {"alert": alert_id, "by": requested_by}).first()


def probes(engine: Engine, bisection_id: int) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT * FROM bisection_probe WHERE bisection_pk = :b ORDER BY seq"), {"b": bisection_id}))


def record_notified(engine: Engine, bisection_id: int, outcome: Mapping[str, str]) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE bisection SET notified = CAST(:n AS jsonb) WHERE bisection_pk = :b"),
                     {"n": json.dumps(dict(outcome)), "b": bisection_id})

