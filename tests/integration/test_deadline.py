"""The late-night report (moecomm_tasks.deadline) called as Airflow calls a deadline callback: with
the run and the deadline in its context. The services test shows Airflow calling it for a late run."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from moecomm_tasks import deadline, store
from moecomm_tasks.records import ParsedJob, ParsedOutput, RunHeader

pytestmark = pytest.mark.integration
RUN_ID = "scheduled__2026-11-20T02:00:00+00:00"
CONTEXT = {"dag_run": {"dag_id": "moe_comm_nightly", "dag_run_id": RUN_ID, "state": "running"},
           "deadline": {"id": "x", "deadline_time": "2026-11-20T08:00:00+00:00"}}


def test_a_late_run_is_reported_with_its_jobs_so_far(engine, database_url, http_sink, monkeypatch):
    url, received = http_sink
    header = RunHeader(profile="gpt_oss", ep_size=2, backend="TORCH_ALLTOALL", local_batch_sizes=(16,))
    store.load(engine, ParsedOutput(jobs=(ParsedJob(header),)), RUN_ID, datetime(2026, 11, 20, 2, tzinfo=timezone.utc),
               state="failed", error="timed out")
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    monkeypatch.setenv("MOECOMM_FAILURE_WEBHOOK_URL", url)
    deadline.report_late_run(context=CONTEXT, deadline_s=21600)
    (body,) = received
    assert body["late"] is True and body["deadline"] == "2026-11-20T08:00:00+00:00"
    assert body["text"].startswith(f"moe_comm_nightly run {RUN_ID} has not finished 21600 s after it was queued")
    assert body["summary"]["states"] == {"failed": 1} and "{'failed': 1}" in body["text"]


def test_a_late_run_is_reported_when_the_database_is_down(http_sink, monkeypatch):
    url, received = http_sink
    monkeypatch.setenv("MOECOMM_DATABASE_URL", "postgresql+psycopg2://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("MOECOMM_FAILURE_WEBHOOK_URL", url)
    deadline.report_late_run(context=CONTEXT, deadline_s=60)
    (body,) = received
    assert "results database unavailable" in body["summary"]["error"] and RUN_ID in body["text"]


def test_the_alert_fires_after_the_matrix_deadline():
    alert = deadline.deadline_alert(900)
    assert alert.interval.total_seconds() == 900 and alert.callback.kwargs == {"deadline_s": 900}
    assert type(alert.reference).__name__ == "DagRunQueuedAtDeadline"
