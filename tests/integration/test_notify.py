"""The alert digest: golden payloads, and delivery to a real local SMTP server (aiosmtpd) and a
real local HTTP server (standing in for Slack's incoming webhook and a generic webhook: no Slack
server can run here). Regenerate the golden files with MOECOMM_UPDATE_GOLDEN=1 after a change
that is meant to alter them, and read the diff.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import socket
from dataclasses import replace
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from moecomm_tasks import notify, query
from moecomm_tasks.domain import Alert, AlertKind, Direction

GOLDEN = Path(__file__).parents[1] / "data" / "golden"


def _alert(alert_id, size, op, change, good="nightly-2026-11-20", bad="nightly-2026-11-21", diff=None):
    return Alert(
        alert_id=alert_id, kind=AlertKind.LEVEL, backend="TORCH_ALLTOALL", profile="deepseek_v3", ep_size=8,
        quant_algo="FP8_BLOCK_SCALES", local_batch_size=size, op=op, gpu_model="NVIDIA H100 80GB HBM3",
        cuda_graph=False, pdl=False, perfect_router=False, payload_in_workspace=False, low_precision_combine=False,
        timing_method="cuda_events",
        direction=Direction.REGRESSION if change > 0 else Direction.IMPROVEMENT, change_pct=change,
        confidence=0.99991234, baseline_us=100.0, after_us=100.0 * (1 + change / 100), last_good_run_id=good,
        first_bad_run_id=bad, provenance_diff=diff or {},
    )


KERNELS_ALERT = replace(
    _alert(10, 1024, "kernels", 0.0, good="nightly-2026-11-18", bad="nightly-2026-11-19"), kind=AlertKind.KERNELS,
    direction=Direction.CHANGE, change_pct=None, confidence=None, baseline_us=None, after_us=None,
    kernel_diff={"added": [{"phase": "combine", "kernel": "void moe::combine<4>(float const*)",
                            "printed": ["_ZN3moe7combineILi4EEEvPKf"], "count": 200}],
                 "removed": [{"phase": "combine", "kernel": "moeA2ACombineKernel", "printed": ["moeA2ACombineKernel"],
                              "count": 200}],
                 "count_changed": [{"phase": "dispatch", "kernel": "moeA2ADispatchKernel",
                                    "printed_before": ["moeA2ADispatchKernel"], "printed_after": ["moeA2ADispatchKernel"],
                                    "count_before": 200, "count_after": 400}]})


ALERTS = [
    _alert(7, 1024, "dispatch", 3.1234, diff={"nccl_version": ["2.27.7", "2.28.9"]}),
    _alert(8, 4096, "combine", 5.5, diff={"nccl_version": ["2.27.7", "2.28.9"]}),
    _alert(9, 128, "dispatch", -4.25, good="nightly-2026-11-18", bad="nightly-2026-11-19"),
]


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MOECOMM_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


@pytest.fixture
def shown(engine):
    with query.shown_sql(engine) as render:
        yield render


def send_digest(digest, env) -> dict[str, str]:
    """Send on every channel configured in `env`; channel -> "sent" or the error."""
    outcome = {}
    for name, send in notify.channels(env).items():
        try:
            send(digest)
            outcome[name] = "sent"
        except Exception as exc:  # noqa: BLE001
            outcome[name] = f"failed: {type(exc).__name__}: {exc}"
    return outcome


def test_digest_groups_by_run_range_and_orders_by_size(shown):
    digest = notify.build_digest("nightly-2026-11-21", ALERTS, shown)
    assert [(g["first_bad_run_id"], [a["alert_id"] for a in g["alerts"]]) for g in digest.groups] == [
        ("nightly-2026-11-21", [8, 7]), ("nightly-2026-11-19", [9])]
    assert digest.groups[0]["provenance_diff"] == {"nccl_version": ["2.27.7", "2.28.9"]}


def test_payloads_match_their_golden_files(shown):
    digest = notify.build_digest("nightly-2026-11-21", ALERTS, shown)
    _golden("digest.txt", notify.render_text(digest))
    _golden("digest_slack.json", json.dumps(notify.render_slack(digest), indent=2) + "\n")
    _golden("digest_webhook.json", json.dumps(notify.render_webhook(digest), indent=2) + "\n")


def test_a_kernels_alert_shows_its_difference(shown):
    digest = notify.build_digest("nightly-2026-11-21", [*ALERTS, KERNELS_ALERT], shown)
    assert digest.title() == ("moecomm nightly-2026-11-21: 4 new alert(s), 2 regression(s), 1 kernel change(s), "
                              "2 probable cause(s)")
    text = notify.render_text(digest)
    assert "  - #10 kernels changed: TORCH_ALLTOALL deepseek_v3 EP8 1024 tokens on NVIDIA H100 80GB HBM3\n" in text
    _golden("digest_kernels.txt", text)
    _golden("digest_kernels_slack.json", json.dumps(notify.render_slack(digest), indent=2) + "\n")
    (entry,) = [a for g in notify.render_webhook(digest)["groups"] for a in g["alerts"] if a["alert_id"] == 10]
    assert entry["kind"] == "kernels" and entry["kernel_diff"] == KERNELS_ALERT.kernel_diff
    assert entry["difference"] == [
        "+ combine void moe::combine<4>(float const*) x200 (printed as _ZN3moe7combineILi4EEEvPKf)",
        "- combine moeA2ACombineKernel x200", "~ dispatch moeA2ADispatchKernel x200 -> x400"]


def test_series_sql_runs_against_the_public_view(engine, shown):
    with engine.connect() as conn:  # an empty history: the query is valid and returns no rows
        assert conn.exec_driver_sql(shown(notify.series_sql(ALERTS[0].series))).all() == []
        assert conn.exec_driver_sql(shown(notify.kernels_sql(KERNELS_ALERT))).all() == []
    assert "op = 'it''s'" in shown(notify.series_sql({**ALERTS[0].series, "op": "it's"}))  # quoted, not injected


def test_slack_text_from_the_data_is_escaped(shown):
    """A name can hold Slack's control sequences: a mention, a link, an entity."""
    hostile = "<!channel> <https://evil.example|click> & <@U123>"
    digest = notify.build_digest("nightly-<!here>", [replace(ALERTS[0], backend=hostile, gpu_model="<b>")], shown)
    message = json.dumps(notify.render_slack(digest))
    for raw in ("<!channel>", "<!here>", "<https://evil.example|click>", "<@U123>", "<b>"):
        assert raw not in message
    assert "&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp; &lt;@U123&gt;" in message
    assert notify.render_slack(digest)["text"].startswith("moecomm nightly-&lt;!here&gt;: 1 new alert(s)")


class _Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append((envelope.mail_from, envelope.rcpt_tos, envelope.content))
        return "250 OK"


@pytest.fixture
def smtp_server():
    inbox = _Inbox()
    port = _free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    yield port, inbox.messages
    controller.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_channel_receives_the_digest(smtp_server, http_sink, monkeypatch, shown):
    port, messages = smtp_server
    url, received = http_sink
    # Slack goes through the Airflow provider's notifier and an Airflow connection from the
    # environment; the connection's password is the incoming webhook's whole URL.
    monkeypatch.setenv("AIRFLOW_CONN_MOECOMM_SLACK", json.dumps({"conn_type": "slackwebhook", "password": url + "slack"}))
    env = {"MOECOMM_SLACK_CONN_ID": "moecomm_slack", "MOECOMM_ALERT_WEBHOOK_URL": url + "hook",
           "MOECOMM_SMTP_HOST": "127.0.0.1", "MOECOMM_SMTP_PORT": str(port),
           "MOECOMM_ALERT_EMAIL_FROM": "moecomm@example.org", "MOECOMM_ALERT_EMAIL_TO": "a@example.org, b@example.org"}
    digest = notify.build_digest("nightly-2026-11-21", ALERTS, shown)
    assert send_digest(digest, env) == {"slack": "sent", "email": "sent", "webhook": "sent"}

    (mail_from, rcpt, content), = messages
    message = email.message_from_bytes(content, policy=email.policy.default)
    assert mail_from == "moecomm@example.org" and rcpt == ["a@example.org", "b@example.org"]
    assert message["Subject"] == digest.title()
    assert message.get_content().replace("\r\n", "\n") == notify.render_text(digest)  # SMTP sends CRLF
    slack, hook = (received[0], received[1]) if "blocks" in received[0] else (received[1], received[0])
    assert slack["text"] == digest.title() and slack["blocks"] == notify.render_slack(digest)["blocks"]
    assert hook == notify.render_webhook(digest)


def test_only_configured_channels_are_used():
    assert notify.channels({}) == {}
    assert set(notify.channels({"MOECOMM_SMTP_HOST": "127.0.0.1"})) == set()  # no recipients: no e-mail
    assert set(notify.channels({"MOECOMM_ALERT_WEBHOOK_URL": "http://127.0.0.1:1/", "MOECOMM_SLACK_CONN_ID": "s",
                                "MOECOMM_SMTP_HOST": "h", "MOECOMM_ALERT_EMAIL_TO": "a@b"})) == {
        "slack", "email", "webhook"}


def test_a_failing_channel_raises(shown):
    env = {"MOECOMM_SMTP_HOST": "127.0.0.1", "MOECOMM_SMTP_PORT": str(_free_port()),
           "MOECOMM_ALERT_EMAIL_TO": "a@example.org"}
    with pytest.raises(ConnectionRefusedError):
        notify.channels(env)["email"](notify.build_digest("nightly-2026-11-21", ALERTS, shown))
