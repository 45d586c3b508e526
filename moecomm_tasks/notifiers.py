"""Airflow notifiers (the only module here that imports Airflow; the DAG uses it).

`RunFailureNotifier`: the DAG-level failure notifier. It logs which jobs failed, read from the
results database, and posts the same summary as JSON to `MOECOMM_FAILURE_WEBHOOK_URL` when set
(10 s timeout, 3 tries).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from airflow.sdk import BaseNotifier

from moecomm_tasks.notify import post_json

log = logging.getLogger(__name__)
TRIES = 3


class RunFailureNotifier(BaseNotifier):
    """Says that a nightly run failed, and which jobs, from the database."""

    def render_template_fields(self, context: dict[str, Any], jinja_env: Any = None) -> None:
        # Nothing here is templated. Rendering would ask the DAG for its template environment,
        # which the serialized DAG that dag.test() hands to callbacks lacks (Airflow 3.3).
        if self.template_fields:
            super().render_template_fields(context, jinja_env)

    def notify(self, context: dict[str, Any]) -> None:
        from moecomm_tasks import db, nightly

        run_id = context["dag_run"].run_id
        try:
            summary = nightly.run_summary(db.make_engine(), run_id)
        except Exception as exc:  # the notifier must still say something when the database is down
            summary = {"run_id": run_id, "error": f"results database unavailable: {exc}"}
        summary["dag_id"] = context["dag"].dag_id
        log.error("moe_comm_nightly run %s failed: %s", run_id, json.dumps(summary, default=str))
        url = os.environ.get("MOECOMM_FAILURE_WEBHOOK_URL")
        if url:
            post_json(url, {"text": f"moe_comm_nightly run {run_id} failed", "summary": summary}, tries=TRIES)
