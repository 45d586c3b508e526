"""A late night: a nightly run that has not finished by its deadline is reported.

The DAG carries an Airflow 3 deadline alert: `deadline_s` (the matrix's) after a run was queued,
if the run has not ended, the scheduler hands `report_late_run` to the executor, which runs it on
a worker of the default queue. It logs the run's jobs recorded so far (from the results database)
and posts them as JSON to `MOECOMM_FAILURE_WEBHOOK_URL` when set (the channel that hears of failed
runs; 10 s timeout, 3 tries). A run that ends in time is never reported; a late run is reported
once, while it still runs, and again by the failure notifier if it then fails.

Environment: `MOECOMM_FAILURE_WEBHOOK_URL`.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from typing import Any

from airflow.sdk import DeadlineAlert, DeadlineReference, SyncCallback

from moecomm_tasks.notify import post_json

log = logging.getLogger(__name__)
TRIES = 3


def deadline_alert(deadline_s: int) -> DeadlineAlert:
    """The nightly DAG's deadline: the run must end within `deadline_s` of being queued."""
    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(seconds=deadline_s),
                         callback=SyncCallback(report_late_run, kwargs={"deadline_s": deadline_s}),
                         name="moecomm-late-night")


def report_late_run(context: dict[str, Any], deadline_s: int) -> None:
    """Say that a run is late, and how far its jobs got. `context` is what Airflow gives deadline
    callbacks: the run (`dag_run`, as JSON) and the deadline (`deadline.deadline_time`)."""
    from moecomm_tasks import db, nightly

    run = context.get("dag_run") or {}
    run_id = run.get("dag_run_id") or run.get("run_id") or "?"
    try:
        summary = nightly.run_summary(db.make_engine(), run_id)
    except Exception as exc:  # the report must still go out when the database is down
        summary = {"run_id": run_id, "error": f"results database unavailable: {exc}"}
    deadline = (context.get("deadline") or {}).get("deadline_time")
    text = (f"{run.get('dag_id', 'moe_comm_nightly')} run {run_id} has not finished {deadline_s} s after it was "
            f"queued (deadline {deadline}); state {run.get('state')}; jobs recorded so far: {summary.get('states')}")
    log.error("%s: %s", text, json.dumps(summary, default=str))
    url = os.environ.get("MOECOMM_FAILURE_WEBHOOK_URL")
    if url:
        post_json(url, {"text": text, "late": True, "deadline": deadline, "summary": summary}, tries=TRIES)
