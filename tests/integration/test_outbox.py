"""The alert-delivery outbox against a real HTTP endpoint that fails and then recovers
(tests/faults.py): a digest that could not be delivered is kept and sent at the next attempt,
exactly once; retries back off and are bounded; two senders never send one row twice."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from faults import FlakyWebhook

from moecomm_tasks import alerts, nightly, outbox
from moecomm_tasks.cli import main
from moecomm_tasks.matrix import parse_matrix

pytestmark = pytest.mark.integration


@pytest.fixture
def webhook(request):
    hook = FlakyWebhook(**getattr(request, "param", {"failures": 1}))
    yield hook
    hook.close()


def delivery_rows(engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT alert_id, channel, digest, attempts, last_error, delivered_at, next_attempt_at > now() AS later "
            "FROM alert_delivery ORDER BY delivery_pk")).all()


def test_a_webhook_down_at_night_gets_the_digest_at_the_next_attempt(engine, weeks_of_nights, webhook, database_url,
                                                                     monkeypatch, capsys):
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    monkeypatch.setenv("MOECOMM_ALERT_WEBHOOK_URL", webhook.url)
    monkeypatch.setenv("MOECOMM_DELIVERY_RETRY_S", "1")
    assert main(["detect", "--unconfirmed", "--notify", "night-27"]) == 0
    err = capsys.readouterr().err
    assert "notification webhook night-27: failed (attempt 1 of 8): HTTPError: HTTP Error 503" in err
    assert webhook.requests == 1 and webhook.received == []
    (row,) = delivery_rows(engine)
    assert (row.channel, row.digest, row.attempts, row.delivered_at, row.later) == ("webhook", "night-27", 1, None, True)
    assert "503" in row.last_error
    assert main(["alerts", "deliveries"]) == 0
    listed = capsys.readouterr().out
    assert "pending" in listed and "HTTP Error 503" in listed

    # Not due yet (backing off): nothing is tried.
    assert main(["detect", "--unconfirmed", "--notify", "night-28"]) == 0
    assert "notifications: nothing new, nothing sent" in capsys.readouterr().err and webhook.requests == 1
    # Due: the next `detect --notify` first sends what is pending; the digest arrives once.
    time.sleep(1.1)
    assert main(["detect", "--unconfirmed", "--notify", "night-29"]) == 0
    assert "notification webhook night-27: sent (1 alerts)" in capsys.readouterr().err
    (digest,) = webhook.received
    assert digest["run_id"] == "night-27" and digest["title"].startswith("moecomm night-27: 1 new alert(s)")
    (alert,) = digest["groups"][0]["alerts"]
    assert (alert["backend"], alert["op"], alert["local_batch_size"]) == ("TORCH_ALLTOALL", "combine", 1024)
    (row,) = delivery_rows(engine)
    assert row.attempts == 2 and row.delivered_at is not None and row.last_error is None
    assert main(["detect", "--unconfirmed", "--notify", "night-30"]) == 0 and webhook.requests == 2  # never twice
    assert main(["alerts", "deliveries"]) == 0 and "delivered" in capsys.readouterr().out


def test_the_nightly_analyze_task_first_sends_what_earlier_runs_could_not(engine, weeks_of_nights, webhook,
                                                                          monkeypatch):
    monkeypatch.setenv("MOECOMM_ALERT_WEBHOOK_URL", webhook.url)
    monkeypatch.setenv("MOECOMM_DELIVERY_RETRY_S", "0")
    unconfirmed = parse_matrix({"backends": ["TORCH_ALLTOALL"], "profiles": ["deepseek_v3"], "ep_sizes": [2],
                                "confirmation": {"max_jobs": 0}})  # alerts sent without re-running their jobs
    first = nightly.analyze(engine, "night-27", unconfirmed)
    assert len(first["new_alerts"]) == 1 and first["notified"]["webhook night-27"].startswith("failed (attempt 1")
    second = nightly.analyze(engine, "night-28", unconfirmed)  # the next night: nothing new, the pending digest goes out
    assert second["new_alerts"] == [] and second["notified"] == {"webhook night-27": "sent (1 alerts)"}
    assert [d["run_id"] for d in webhook.received] == ["night-27"]
    assert nightly.analyze(engine, "night-29", unconfirmed)["notified"] == {} and webhook.requests == 2


@pytest.mark.parametrize("webhook", [{"failures": 100}], indirect=True)
def test_retries_back_off_and_are_bounded(engine, weeks_of_nights, webhook):
    env = {"MOECOMM_ALERT_WEBHOOK_URL": webhook.url, "MOECOMM_DELIVERY_RETRY_S": "300",
           "MOECOMM_DELIVERY_MAX_ATTEMPTS": "3"}
    alerts.run_detection(engine, deliver_to=["webhook"], digest="night-27")
    with engine.connect() as conn:
        start = conn.execute(sa.text("SELECT now()")).scalar()
    tried = []
    for minutes in (0, 1, 6, 10, 16, 60 * 24):  # due at 0, then 5 min later, then 10 min after that
        outcome = outbox.deliver_due(engine, env, now=start + timedelta(minutes=minutes))
        tried += [minutes] if outcome else []
    assert tried == [0, 6, 16] and webhook.requests == 3 and webhook.received == []
    (row,) = outbox.deliveries(engine, env)
    assert row.state == "given up" and row.attempts == 3 and row.next_attempt is None
    assert "HTTP Error 503" in row.last_error


@pytest.mark.parametrize("webhook", [{"failures": 0, "delay_s": 1.0}], indirect=True)
def test_two_senders_at_once_send_each_digest_once(engine, weeks_of_nights, webhook):
    env = {"MOECOMM_ALERT_WEBHOOK_URL": webhook.url}
    raised = alerts.run_detection(engine, deliver_to=["webhook"], digest="night-27")
    with engine.begin() as conn:  # queued once per alert and channel, whoever asks again
        assert outbox.enqueue(conn, [a.alert_id for a in raised], ["webhook"], "night-27") == 0
    outcomes = []
    senders = [threading.Thread(target=lambda: outcomes.append(outbox.deliver_due(engine, env))) for _ in range(2)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(30)
    assert sorted(map(len, outcomes)) == [0, 1] and webhook.requests == 1 and len(webhook.received) == 1
