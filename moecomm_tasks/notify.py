"""The alert digest: one message per DAG run, grouped by probable cause, to Slack, e-mail and a
generic JSON webhook. Each channel is optional and configured from the environment:

* Slack: `MOECOMM_SLACK_CONN_ID` names an Airflow connection of type `slackwebhook` (an incoming
  webhook; its password is the webhook token or the whole URL); sent through the Airflow Slack
  provider's `SlackWebhookNotifier`.
* E-mail: `MOECOMM_SMTP_HOST` (and `MOECOMM_SMTP_PORT`, default 25; `MOECOMM_SMTP_STARTTLS=1`;
  `MOECOMM_SMTP_USER` / `MOECOMM_SMTP_PASSWORD`), `MOECOMM_ALERT_EMAIL_FROM`,
  `MOECOMM_ALERT_EMAIL_TO` (comma-separated).
* Webhook: `MOECOMM_ALERT_WEBHOOK_URL` receives the digest as JSON (POST).

A group is the set of new alerts that share their run range (last good run, first bad run): the
same night broke them, so they probably share a cause, shown with the provenance that changed.
Every alert carries the SQL that shows its series, composed with psycopg2's quoting
(`query.shown_sql`); a kernels alert carries the SQL that shows the two nights' kernels and the
difference (kernels added and removed, launch counts before and after). Names come from
benchmark output, so the Slack message escapes them (no mention, link or formatting can be
smuggled in). Delivery, retried until it succeeds, is the
outbox's (`moecomm_tasks.outbox`); this module builds digests and sends one on one channel.
"""

from __future__ import annotations

import json
import logging
import os
import smtplib
import time
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Callable, Mapping

from psycopg2 import sql

from moecomm_tasks import kernel_checks
from moecomm_tasks.domain import Alert, AlertKind, Channel, Direction
from moecomm_tasks.query import series_condition

log = logging.getLogger(__name__)
TIMEOUT_S = 10


def series_sql(alert: Mapping[str, Any]) -> sql.Composed:
    """The query that shows an alert's series around its change (public view `nightly_series`)."""
    return sql.SQL("SELECT run_id, run_at, excluded, slowest_rank_us, median_us, within_night_stdev_us "
                   "FROM nightly_series WHERE {} ORDER BY run_at;").format(series_condition(alert))


def kernels_sql(alert: Alert) -> sql.Composed:
    """The query that shows a kernels alert's two nights' kernels (public view `kernel_flat`)."""
    where = [sql.SQL("run_id IN ({}, {})").format(sql.Literal(alert.last_good_run_id),
                                                  sql.Literal(alert.first_bad_run_id))]
    for key in ("backend", "profile", "ep_size", "quant_algo", "local_batch_size", "gpu_model"):
        template = "COALESCE({}, '') = {}" if key in ("quant_algo", "gpu_model") else "{} = {}"
        where.append(sql.SQL(template).format(sql.SQL(key), sql.Literal(getattr(alert, key))))  # our own columns
    return sql.SQL("SELECT run_id, phase, kernel, max(count) AS count FROM kernel_flat WHERE {} "
                   "GROUP BY run_id, phase, kernel ORDER BY phase, kernel, run_id;").format(
                       sql.SQL(" AND ").join(where))


@dataclass(frozen=True)
class Digest:
    run_id: str
    groups: list[dict[str, Any]]   # each: last_good_run_id, first_bad_run_id, provenance_diff, alerts

    @property
    def empty(self) -> bool:
        return not self.groups

    def title(self) -> str:
        n = sum(len(g["alerts"]) for g in self.groups)
        regressions = sum(a["direction"] == Direction.REGRESSION for g in self.groups for a in g["alerts"])
        kernels = sum(a.get("kind") == AlertKind.KERNELS for g in self.groups for a in g["alerts"])
        return (f"moecomm {self.run_id}: {n} new alert(s), {regressions} regression(s), "
                + (f"{kernels} kernel change(s), " if kernels else "") + f"{len(self.groups)} probable cause(s)")


def _entry(a: Alert, shown: Callable[[sql.Composable], str]) -> dict[str, Any]:
    """One alert as the digest carries it (the webhook's JSON)."""
    entry = {k: getattr(a, k) for k in ("alert_id", "backend", "profile", "ep_size", "quant_algo",
                                        "local_batch_size", "op", "gpu_model")}
    entry["direction"] = a.direction.value
    if a.kind is AlertKind.KERNELS:
        return {**entry, "kind": a.kind.value, "kernel_diff": a.kernel_diff,
                "difference": kernel_checks.summary(a.kernel_diff or {}), "sql": shown(kernels_sql(a))}
    return {**entry, "change_pct": round(float(a.change_pct), 2), "confidence": round(float(a.confidence), 4),
            "baseline_us": round(float(a.baseline_us), 3), "after_us": round(float(a.after_us), 3),
            "sql": shown(series_sql(a.series))}


def build_digest(run_id: str, alerts: Sequence[Alert], shown: Callable[[sql.Composable], str]) -> Digest:
    """Group new alerts by their run range; `shown` writes each alert's SQL out
    (`query.shown_sql`). Within a group: regressions first, the largest first, kernel changes last."""
    grouped: dict[tuple[str, str], list[Alert]] = defaultdict(list)
    for alert in alerts:
        grouped[(alert.last_good_run_id, alert.first_bad_run_id)].append(alert)
    groups = []
    for (good, bad), members in sorted(grouped.items(), key=lambda item: (-len(item[1]), item[0])):
        members = sorted(members, key=lambda a: (a.kind is AlertKind.KERNELS, a.direction is not Direction.REGRESSION,
                                                 -abs(a.change_pct or 0.0)))
        diff: dict[str, Any] = {}
        for a in members:
            diff.update(a.provenance_diff or {})
        groups.append({"last_good_run_id": good, "first_bad_run_id": bad, "provenance_diff": diff,
                       "alerts": [_entry(a, shown) for a in members]})
    return Digest(run_id, groups)


def _where(a: dict[str, Any]) -> str:
    return (f"{a['backend']} {a['profile']} EP{a['ep_size']} {a['local_batch_size']} tokens"
            + (f" on {a['gpu_model']}" if a["gpu_model"] else ""))


def _line(a: dict[str, Any]) -> str:
    if a.get("kind") == AlertKind.KERNELS:
        return f"kernels changed: {_where(a)}: " + "; ".join(a["difference"])
    return (f"{a['direction']} {a['change_pct']:+.2f}% ({a['baseline_us']:.1f} -> {a['after_us']:.1f} us, "
            f"confidence {a['confidence']:.4f}): {a['backend']} {a['profile']} EP{a['ep_size']} "
            f"{a['local_batch_size']} tokens {a['op']}" + (f" on {a['gpu_model']}" if a["gpu_model"] else ""))


def _cause(group: dict[str, Any]) -> str:
    diff = group["provenance_diff"]
    changed = ", ".join(f"{k}: {v[0]} -> {v[1]}" for k, v in sorted(diff.items())) if diff else "no provenance change"
    return f"Between {group['last_good_run_id']} (last good) and {group['first_bad_run_id']} (first bad): {changed}"


def render_text(digest: Digest) -> str:
    """The e-mail body."""
    out = [digest.title(), ""]
    for group in digest.groups:
        out.append(_cause(group))
        for a in group["alerts"]:
            if a.get("kind") == AlertKind.KERNELS:
                out += [f"  - #{a['alert_id']} kernels changed: {_where(a)}"]
                out += [f"      {line}" for line in a["difference"]]
            else:
                out.append(f"  - #{a['alert_id']} {_line(a)}")
            out.append(f"    {a['sql']}")
        out.append("")
    out.append("Manage: moecomm alerts list | ack ID | resolve ID | mute ID")
    return "\n".join(out) + "\n"


def slack_escape(text: str) -> str:
    """Text from the data as Slack shows it literally: `&`, `<` and `>` escaped, so that no
    `<!channel>`, `<@user>` or `<https://...|link>` in a name acts as one."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_slack(digest: Digest) -> dict[str, Any]:
    """Slack message: a text fallback and Block Kit blocks, one section per probable cause."""
    title = slack_escape(digest.title())
    blocks: list[dict[str, Any]] = [{"type": "header", "text": {"type": "plain_text", "text": title[:150]}}]
    for group in digest.groups:
        lines = [f"*{slack_escape(_cause(group))}*"] + [
            f"• #{a['alert_id']} {slack_escape(_line(a))}\n```{slack_escape(a['sql'])}```" for a in group["alerts"]]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:3000]}})
    return {"text": title, "blocks": blocks}


def render_webhook(digest: Digest) -> dict[str, Any]:
    return {"run_id": digest.run_id, "title": digest.title(), "groups": digest.groups}


def send_slack(digest: Digest, conn_id: str) -> None:
    from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

    message = render_slack(digest)
    SlackWebhookNotifier(slack_webhook_conn_id=conn_id, text=message["text"], blocks=message["blocks"],
                         unfurl_links=False, unfurl_media=False, timeout=TIMEOUT_S).notify({})


def send_email(digest: Digest, env: dict[str, str]) -> None:
    _send_mail(digest.title(), render_text(digest), env)


def _send_mail(subject: str, body: str, env: dict[str, str]) -> None:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = env.get("MOECOMM_ALERT_EMAIL_FROM", "moecomm@localhost")
    message["To"] = env["MOECOMM_ALERT_EMAIL_TO"]
    message.set_content(body)
    with smtplib.SMTP(env["MOECOMM_SMTP_HOST"], int(env.get("MOECOMM_SMTP_PORT", "25")), timeout=TIMEOUT_S) as smtp:
        if env.get("MOECOMM_SMTP_STARTTLS") == "1":
            smtp.starttls()
        if env.get("MOECOMM_SMTP_USER"):
            smtp.login(env["MOECOMM_SMTP_USER"], env.get("MOECOMM_SMTP_PASSWORD", ""))
        smtp.send_message(message)


def post_json(url: str, payload: dict[str, Any], tries: int = 1) -> None:
    """POST `payload` as JSON to `url` with a timeout, up to `tries` times (backing off 2, 4, ...
    s between them); raises the last error."""
    body = json.dumps(payload, default=str).encode()
    for attempt in range(1, tries + 1):
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 (operator-configured URL)
                response.read()
            return
        except OSError:
            if attempt == tries:
                raise
            time.sleep(2 ** attempt)


def send_webhook(digest: Digest, url: str) -> None:
    post_json(url, render_webhook(digest))


def channels(env: Mapping[str, str] | None = None) -> dict[Channel, Callable[[Digest], None]]:
    """The channels configured in `env` (default: the environment), each a function that sends
    a digest and raises when that fails."""
    env = dict(os.environ if env is None else env)
    configured: dict[Channel, Callable[[Digest], None]] = {}
    if env.get("MOECOMM_SLACK_CONN_ID"):
        configured[Channel.SLACK] = lambda digest: send_slack(digest, env["MOECOMM_SLACK_CONN_ID"])
    if env.get("MOECOMM_SMTP_HOST") and env.get("MOECOMM_ALERT_EMAIL_TO"):
        configured[Channel.EMAIL] = lambda digest: send_email(digest, env)
    if env.get("MOECOMM_ALERT_WEBHOOK_URL"):
        configured[Channel.WEBHOOK] = lambda digest: send_webhook(digest, env["MOECOMM_ALERT_WEBHOOK_URL"])
    return configured


@dataclass(frozen=True)
class FollowUp:
    """A message that follows an alert's digest (a bisection's verdict): its title, its plain-text
    body (e-mail, and Slack in a code block) and its JSON (the webhook)."""

    title: str
    text: str
    payload: dict[str, Any]


def send_followup(message: FollowUp, env: dict[str, str] | None = None) -> dict[Channel, str]:
    """Send a follow-up on every channel configured for the digest; returns channel -> "sent" or
    the error (one channel failing does not stop the others)."""
    env = dict(os.environ if env is None else env)
    channels = {}
    if env.get("MOECOMM_SLACK_CONN_ID"):
        def slack() -> None:
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

            # Names come from benchmark output: escaped so that no mention or link can act as one.
            body = slack_escape(message.text)
            SlackWebhookNotifier(slack_webhook_conn_id=env["MOECOMM_SLACK_CONN_ID"], text=message.title, blocks=[
                {"type": "header", "text": {"type": "plain_text", "text": message.title[:150]}},
                {"type": "section", "text": {"type": "mrkdwn", "text": f"```{body[:2900]}```"}}],
                timeout=TIMEOUT_S).notify({})
        channels[Channel.SLACK] = slack
    if env.get("MOECOMM_SMTP_HOST") and env.get("MOECOMM_ALERT_EMAIL_TO"):
        channels[Channel.EMAIL] = lambda: _send_mail(message.title, message.text, env)
    if env.get("MOECOMM_ALERT_WEBHOOK_URL"):
        channels[Channel.WEBHOOK] = lambda: post_json(env["MOECOMM_ALERT_WEBHOOK_URL"], message.payload)
    outcome = {}
    for name, send in channels.items():
        try:
            send()
            outcome[name] = "sent"
        except Exception as exc:  # noqa: BLE001 (a channel's failure is reported, not raised)
            log.warning("follow-up %r: %s failed: %s: %s", message.title, name, type(exc).__name__, exc)
            outcome[name] = f"failed: {type(exc).__name__}: {exc}"
    return outcome
