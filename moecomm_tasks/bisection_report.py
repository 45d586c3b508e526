"""What people see of a bisection: its verdict as text (the CLI, e-mail, Slack) and JSON (the
webhook), sent as a follow-up to the alert's digest, and the short form `moecomm alerts list`
shows."""

from __future__ import annotations

import math
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from moecomm_tasks import bisection, notify


def short(state: str | None, first_bad: str | None, commit_range: str | None) -> str:
    """One cell: `culprit b5 (c4..c5)`, `inconclusive`, `failed`, `running`."""
    if state is None:
        return "-"
    if state == "culprit":
        return f"culprit {first_bad}" + (f" ({commit_range})" if commit_range else "")
    return state


def _median(values: Sequence[float | None]) -> float | None:
    known = sorted(v for v in values if v is not None)
    if not known:
        return None
    mid = len(known) // 2
    return known[mid] if len(known) % 2 else (known[mid - 1] + known[mid]) / 2


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def evidence(probes: Sequence[sa.Row]) -> list[dict[str, Any]]:
    """Each build measured, in order: its role, outcome, repetitions and what the test said."""
    return [{
        "build": p.build_name, "commit": p.build_commit, "version": p.build_version, "role": p.role,
        "outcome": p.outcome, "run_ids": list(p.run_ids), "values_us": list(p.values_us),
        "median_us": _median(p.values_us), "p_slower_than_good": p.p_slower_than_good,
        "p_faster_than_bad": p.p_faster_than_bad, "position": p.position, "error": p.error,
    } for p in probes]


def title(verdict: sa.Row) -> str:
    head = f"moecomm {verdict.detected_run_id}, alert #{verdict.alert_id}: "
    if verdict.state == "culprit":
        return head + f"first bad build {verdict.first_bad_build}" + (
            f" ({verdict.commit_range})" if verdict.commit_range else "")
    return head + f"bisection {verdict.state}"


def text(verdict: sa.Row, probes: Sequence[sa.Row]) -> str:
    """The verdict and its evidence as plain text."""
    settings = verdict.settings or {}
    gpu = f" on {verdict.gpu_model}" if verdict.gpu_model else ""
    lines = [
        f"Alert #{verdict.alert_id}: regression {verdict.change_pct:+.2f}% {verdict.backend} {verdict.profile} "
        f"EP{verdict.ep_size} {verdict.local_batch_size} tokens {verdict.op}{gpu}",
        f"  last good run {verdict.last_good_run_id} ({verdict.good_build}), first bad run "
        f"{verdict.first_bad_run_id} ({verdict.bad_build}); detected by {verdict.detected_run_id}",
        f"Bisection #{verdict.bisection_id} over {len(verdict.builds)} builds: {verdict.state}",
    ]
    if verdict.state == "culprit":
        lines.append(f"  first bad build: {verdict.first_bad_build}; last good: {verdict.last_good_build}"
                     + (f"; commits: git log {verdict.commit_range}" if verdict.commit_range else ""))
    elif verdict.state != "running":
        lines.append(f"  the first bad build is after {verdict.last_good_build}, at or before {verdict.first_bad_build}")
    lines += [f"  {verdict.reason or 'running'}",
              f"Probes: {verdict.probes} of at most {verdict.max_probes}, {settings.get('repetitions')} to "
              f"{settings.get('max_repetitions')} repetitions a build",
              f"Test: {settings.get('test', '')}, alpha {settings.get('alpha')}; p slower: than the good end, "
              "p faster: than the bad end, position: 0 at the good end's level, 1 at the bad end's",
              f"  {'build':<16} {'role':<9} {'outcome':<10} {'reps':>4} {'median µs':>11} {'p slower':>9} "
              f"{'p faster':>9} {'position':>8}"]
    for item in evidence(probes):
        lines.append(f"  {item['build']:<16} {item['role']:<9} {item['outcome']:<10} {len(item['values_us']):>4} "
                     f"{_fmt(item['median_us'], '.2f'):>11} {_fmt(item['p_slower_than_good'], '.2g'):>9} "
                     f"{_fmt(item['p_faster_than_bad'], '.2g'):>9} {_fmt(item['position'], '.2f'):>8}")
        if item["error"]:
            lines.append(f"    {item['error']}")
    lines += ["SQL: SELECT * FROM bisection_verdict WHERE alert_id = "
              f"{verdict.alert_id}; SELECT * FROM bisection_probe WHERE bisection_pk = {verdict.bisection_id} ORDER BY seq;"]
    return "\n".join(lines) + "\n"


def payload(verdict: sa.Row, probes: Sequence[sa.Row]) -> dict[str, Any]:
    """The verdict as the webhook receives it."""
    keys = ("bisection_id", "alert_id", "backend", "profile", "ep_size", "quant_algo", "local_batch_size", "op",
            "gpu_model", "change_pct", "last_good_run_id", "first_bad_run_id", "detected_run_id", "state",
            "good_build", "bad_build", "last_good_build", "first_bad_build", "commit_range", "probes", "max_probes",
            "reason")
    return {"kind": "bisection", "title": title(verdict), **{k: getattr(verdict, k) for k in keys},
            "settings": verdict.settings, "evidence": evidence(probes)}


def follow_up(engine: Engine, alert_id: int, requested_by: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """After a bisection DAG run (whatever became of its tasks): mark what it left running as
    failed, then send the verdict as a follow-up to the alert's digest and keep what was sent."""
    bisection.finish_unfinished(engine, requested_by)
    verdict = bisection.latest(engine, alert_id, requested_by)
    if verdict is None:
        return {"alert_id": alert_id, "bisection_id": None, "notified": {},
                "reason": "no bisection ran (the plan task's log says why)"}
    found = bisection.probes(engine, verdict.bisection_id)
    sent = notify.send_followup(notify.FollowUp(title(verdict), text(verdict, found), payload(verdict, found)), env)
    bisection.record_notified(engine, verdict.bisection_id, sent)
    return {"alert_id": alert_id, "bisection_id": verdict.bisection_id, "state": verdict.state,
            "first_bad_build": verdict.first_bad_build, "notified": sent}
