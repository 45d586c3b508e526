"""Confirmation before anyone is paged: re-run the job of every new alert, keep what agrees.

Detection marks a new alert a *candidate*. Its job (backend, profile, EP size of the matrix) is
run again — in the nightly DAG, after `analyze`, as mapped tasks on the job's own node queue, at
most `matrix.confirmation.max_jobs` jobs a night (oldest candidates first; the rest wait for the
next night); by `moecomm confirm`, one after the other in this process. The re-runs of one night
are one *confirmation* run (`run.kind`), quarantined and left out of the views and the detector,
like a bisection run.

The rule: the re-run's value of the series (the detector's night value: the slowest
rank's median, its mean without --iter_stats) is placed between the alert's baseline (0) and its
level after the change (1) on a log scale; the alert is *confirmed* when that position is at
least `matrix.confirmation.agree` (default 0.5: the re-run is nearer the new level than the old),
else *unconfirmed*. A one-night slowdown that has gone by the re-run is not confirmed; a lasting
one is. Only confirmed alerts are queued in the delivery outbox; unconfirmed ones are kept, with
what the re-run measured, and shown by `moecomm alerts`. A candidate whose job is not in the
matrix, or whose re-run measured nothing for its series (the job failed), is unconfirmed with
the reason.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from moecomm_tasks import nightly, outbox, query
from moecomm_tasks.domain import Confirmation
from moecomm_tasks.matrix import Job, Matrix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recheck:
    """One job to run again, and the candidate alerts its re-run decides."""

    job: Job
    alert_ids: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    rechecks: tuple[Recheck, ...]
    # Candidates whose job is not in the matrix: they cannot be re-run.
    orphans: tuple[int, ...]


@dataclass(frozen=True)
class Decision:
    alert_id: int
    confirmation: Confirmation
    value_us: float | None
    position: float | None
    note: str


def recheck_run_id(run_id: str) -> str:
    """The confirmation run that holds the re-runs of run `run_id`."""
    return f"{run_id[:180]}-recheck"


def position(value: float, baseline: float, after: float) -> float:
    """Where `value` lies from `baseline` (0) to `after` (1), on a log scale."""
    return math.log(value / baseline) / math.log(after / baseline)


def plan(engine: Engine, matrix: Matrix, only: Collection[int] | None = None) -> Plan:
    """Which jobs to re-run for the candidates (or those of them in `only`), oldest alert first, at
    most `max_jobs` jobs."""
    with engine.connect() as conn:
        candidates = conn.execute(sa.text("""
            SELECT alert_id, backend, profile, ep_size FROM alert
            WHERE confirmation = 'candidate' ORDER BY alert_id""")).all()
    if only is not None:
        candidates = [c for c in candidates if c.alert_id in only]
    jobs = {(j.backend, j.profile, j.ep_size): j for j in matrix.jobs()}
    chosen: dict[tuple, list[int]] = {}
    orphans = []
    for alert in candidates:
        key = (alert.backend, alert.profile, alert.ep_size)
        if key not in jobs:
            orphans.append(alert.alert_id)
        elif key in chosen or len(chosen) < matrix.confirmation.max_jobs:
            chosen.setdefault(key, []).append(alert.alert_id)
    return Plan(tuple(Recheck(jobs[key], tuple(ids)) for key, ids in chosen.items()), tuple(orphans))


def jobs_for_queue(engine: Engine, matrix: Matrix, queue: str) -> list[dict[str, Any]]:
    """The jobs to re-run on one node queue (the nightly DAG maps a task over them)."""
    return [r.job.model_dump() for r in plan(engine, matrix).rechecks if r.job.queue == queue]


def rerun(engine: Engine, matrix: Matrix, job: Job, run_id: str, run_at: datetime,
          artifacts_in: Path | None = None) -> nightly.JobOutcome:
    """Run `job` again under the confirmation run of `run_id`; raises as `nightly.run_job` does."""
    recheck = recheck_run_id(run_id)
    with engine.begin() as conn:
        conn.execute(sa.text("""
            INSERT INTO run (run_id, run_at, kind, excluded, excluded_reason)
            VALUES (:run, :at, 'confirmation', true, :why)
            ON CONFLICT ON CONSTRAINT run_run_id_key DO NOTHING"""),
            {"run": recheck, "at": run_at, "why": f"re-runs that confirm the alerts of run {run_id}"})
    return nightly.run_job(matrix, job, run_id=recheck, run_at=run_at, engine=engine, artifacts_in=artifacts_in)


def decide(engine: Engine, matrix: Matrix, run_id: str, deliver_to: Sequence[str] = (),
           digest: str = "", only: Collection[int] | None = None) -> list[Decision]:
    """Judge the candidates of this night's plan by the re-runs stored under `run_id`'s
    confirmation run; queue the confirmed ones on `deliver_to` under `digest`, in the same
    transaction. Candidates the plan left for later stay candidates."""
    chosen = plan(engine, matrix, only)
    recheck = recheck_run_id(run_id)
    decisions = []
    with engine.begin() as conn:
        for alert_id in chosen.orphans:
            decisions.append(Decision(alert_id, Confirmation.UNCONFIRMED, None, None,
                                      "its job is not in the matrix: it cannot be run again"))
        for item in chosen.rechecks:
            for alert_id in item.alert_ids:
                alert = conn.execute(sa.text("SELECT * FROM alert WHERE alert_id = :a"), {"a": alert_id}).one()
                series = dict(alert._mapping)
                value = query.night_value(conn, recheck, series)
                if value is None:
                    decisions.append(Decision(alert_id, Confirmation.UNCONFIRMED, None, None,
                                              f"the re-run of {item.job.name} (run {recheck}) measured nothing "
                                              "for this series: it failed or was skipped"))
                    continue
                where = position(value, alert.baseline_us, alert.after_us)
                confirmed = where >= matrix.confirmation.agree
                decisions.append(Decision(
                    alert_id, Confirmation.CONFIRMED if confirmed else Confirmation.UNCONFIRMED, value, where,
                    f"re-run {value:.2f} µs: {where:.2f} of the way from the baseline {alert.baseline_us:.2f} "
                    f"to {alert.after_us:.2f} µs ({'at least' if confirmed else 'less than'} "
                    f"{matrix.confirmation.agree})"))
        for d in decisions:
            conn.execute(sa.text("""
                UPDATE alert SET confirmation = :c, confirm_run_id = :run, confirm_value_us = :v,
                       confirm_position = :p, confirm_note = :note, confirmed_at = now(), updated_at = now()
                WHERE alert_id = :a AND confirmation = 'candidate'"""),
                {"c": d.confirmation.value, "run": recheck if d.value_us is not None else None, "v": d.value_us,
                 "p": d.position, "note": d.note, "a": d.alert_id})
        outbox.enqueue(conn, [d.alert_id for d in decisions if d.confirmation is Confirmation.CONFIRMED],
                       deliver_to, digest)
    return decisions


def run_all(engine: Engine, matrix: Matrix, run_id: str, run_at: datetime, deliver_to: Sequence[str] = (),
            digest: str = "", artifacts_in: Path | None = None, only: Collection[int] | None = None) -> list[Decision]:
    """`moecomm confirm`: re-run the planned jobs one after the other here, then decide."""
    for item in plan(engine, matrix, only).rechecks:
        try:
            rerun(engine, matrix, item.job, run_id, run_at, artifacts_in)
        except nightly.BenchmarkFailed as exc:  # decided as "measured nothing", with the run's record
            log.warning("re-run of %s failed: %s", item.job.name, exc)
    return decide(engine, matrix, run_id, deliver_to, digest, only)


def summary(decisions: Iterable[Decision]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d.confirmation.value] = counts.get(d.confirmation.value, 0) + 1
    return counts
