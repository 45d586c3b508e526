"""Detection over the stored history, and the alerts' lifecycle (open, acknowledged, resolved,
muted). Reads the series' nights (`series_night`, through `moecomm_tasks.history`); writes the
`alert` table, where each series' scan stands (`series_scan`) and, in the same transaction, the
new alerts' deliveries (`moecomm_tasks.outbox`).

Alerts are `moecomm_tasks.domain.Alert`s: level alerts (a change point in a series' night
values) and kernels alerts (a series' set of kernels or their launch counts changed between two
nights: `moecomm_tasks.kernel_checks`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from moecomm_tasks.detect import Params, SeriesInput, detect_group, median_stderr, nights_before_testing
from moecomm_tasks.domain import Alert, AlertKind, AlertState, Confirmation, Direction
from moecomm_tasks import history, kernel_checks, outbox
from moecomm_tasks.errors import MoecommError
from moecomm_tasks.series import SERIES_KEY as SERIES

PROVENANCE_FIELDS = ("gpu_model", "driver_version", "cuda_version", "nccl_version", "torch_version",
                     "trtllm_version", "trtllm_commit", "build_name", "build_commit", "build_version")


def _known(values: Iterable[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _provenance(conn: sa.Connection, run_id: str, job_key: str) -> dict[str, Any]:
    row = conn.execute(sa.text(f"""
        SELECT {', '.join(PROVENANCE_FIELDS)} FROM provenance_flat WHERE run_id = :run AND job_key = :key"""),
        {"run": run_id, "key": job_key}).first()
    return dict(row._mapping) if row else {}


def _provenance_diff(conn: sa.Connection, good: tuple[str, str], bad: tuple[str, str]) -> dict[str, list]:
    """What differs in provenance between two jobs, each (run id, job key): field -> [before, after]."""
    before, after = _provenance(conn, *good), _provenance(conn, *bad)
    return {f: [before.get(f), after.get(f)] for f in PROVENANCE_FIELDS if before.get(f) != after.get(f)}


def _input(series: history.SeriesHistory) -> SeriesInput:
    """A series' nights as the detector reads them: the slowest rank's median (its mean without
    --iter_stats); with --iter_stats, that median's standard error (~200 iterations) and the
    night's shape."""
    nights = series.nights
    return SeriesInput(
        values=[n.night_us for n in nights],
        stderr=median_stderr(_known(n.slowest_rank_median_us for n in nights),
                             _known(n.slowest_rank_min_us for n in nights)),
        shape=_known(n.median_min_log_ratio for n in nights),
        runs=[n.run_id for n in nights], start=series.start, first_test=series.first_test)


def run_detection(engine: Engine, params: Params = Params(), deliver_to: Sequence[str] = (),
                  digest: str = "", confirm: bool = False, full: bool = False) -> list[Alert]:
    """Detect changes in the series' nights not tested yet and in the series' kernels; store the
    new ones; return them (level alerts oldest first, then kernels alerts). With `full`, every
    night of every series is tested again and every stored night's kernels are checked (the same
    alerts, none raised twice); without, kernel checks read the nights of the last
    `kernel_checks.WINDOW_DAYS` days.

    The series of one job (same key but the token count and the op) are detected together
    (`detect.detect_group`). With `confirm`, the new level alerts are candidates, sent only once
    a re-run of their job agrees (moecomm_tasks.confirm); without, they count as confirmed as they
    are. Kernels alerts are exact: they are confirmed as they are. Confirmed new alerts are
    queued in the outbox on the channels `deliver_to` under the digest title `digest`, in the
    transaction that stores them."""
    confirmation = Confirmation.CANDIDATE if confirm else Confirmation.CONFIRMED
    raised: list[Alert] = []
    with engine.begin() as conn:
        groups: dict[tuple, dict] = defaultdict(dict)
        for series in history.read(conn, params, full):
            groups[series.key.job][series.key] = series
        scanned = []
        for members in groups.values():
            found = detect_group({key: _input(series) for key, series in members.items()}, params)
            for key, series in members.items():
                changes = found[key]
                scanned.append((series, changes[-1].first_bad if changes else None))
                raised.extend(_store(conn, key.astuple(), series.nights, changes, confirmation))
        history.save(conn, params, scanned)
        raised += _raise_kernel_changes(conn, None if full else kernel_checks.window_start(conn))
        outbox.enqueue(conn, [a.alert_id for a in raised if a.confirmation is Confirmation.CONFIRMED],
                       deliver_to, digest)
    return raised


def _store(conn: sa.Connection, key: tuple, nights: list, changes: list,
           confirmation: Confirmation) -> list[Alert]:
    """Insert the alerts of one series' changes (none twice); return the new ones."""
    raised = []
    for change in changes:
        good, bad = nights[change.last_good], nights[change.first_bad]
        diff = _provenance_diff(conn, (good.run_id, good.job_key), (bad.run_id, bad.job_key))
        row = conn.execute(sa.text("""
            INSERT INTO alert (backend, profile, ep_size, quant_algo, local_batch_size, op, gpu_model,
                               cuda_graph, pdl, perfect_router, payload_in_workspace,
                               low_precision_combine, timing_method,
                               direction, change_pct, confidence, baseline_us, after_us,
                               last_good_run_id, first_bad_run_id, detected_run_id, provenance_diff,
                               confirmation, confirm_note)
            VALUES (:backend, :profile, :ep_size, :quant_algo, :local_batch_size, :op, :gpu_model,
                    :cuda_graph, :pdl, :perfect_router, :payload_in_workspace,
                    :low_precision_combine, :timing_method,
                    :direction, :change_pct, :confidence, :baseline, :after, :good, :bad, :detected,
                    CAST(:diff AS jsonb), :confirmation, :confirm_note)
            ON CONFLICT ON CONSTRAINT alert_change_key DO NOTHING
            RETURNING alert_id"""), {
            **dict(zip(SERIES, key)), "direction": change.direction, "change_pct": change.change_pct,
            "confidence": change.confidence, "baseline": change.baseline, "after": change.after,
            "good": good.run_id, "bad": bad.run_id, "detected": nights[change.detected_at].run_id,
            "diff": json.dumps(diff, default=str), "confirmation": confirmation,
            "confirm_note": None if confirmation is Confirmation.CANDIDATE else "not re-run (confirmation off)",
        }).first()
        if row is not None:
            raised.append(Alert(
                alert_id=row.alert_id, kind=AlertKind.LEVEL, **dict(zip(SERIES, key)),
                direction=Direction(change.direction), change_pct=change.change_pct,
                confidence=change.confidence, baseline_us=change.baseline, after_us=change.after,
                last_good_run_id=good.run_id, first_bad_run_id=bad.run_id, provenance_diff=diff,
                confirmation=confirmation,
            ))
    return raised


def _raise_kernel_changes(conn: sa.Connection, since: datetime | None) -> list[Alert]:
    """Store a kernels alert for every change of a series' kernels (on nights from `since` on;
    None: every night) not raised before; return the new ones. They are exact, so they are
    confirmed as they are."""
    raised = []
    for change in kernel_checks.changes(conn, since):
        diff = _provenance_diff(conn, (change.last_good_run_id, change.last_good_job_key),
                                (change.first_bad_run_id, change.first_bad_job_key))
        row = conn.execute(sa.text(f"""
            INSERT INTO alert ({', '.join(kernel_checks.KEY)}, op, kind, direction,
                               last_good_run_id, first_bad_run_id, detected_run_id, provenance_diff, kernel_diff,
                               confirmation, confirm_note)
            VALUES ({', '.join(':' + k for k in kernel_checks.KEY)}, :op, :kind, :direction,
                    :good, :bad, :bad, CAST(:diff AS jsonb), CAST(:kernel_diff AS jsonb),
                    :confirmation, :confirm_note)
            ON CONFLICT ON CONSTRAINT alert_change_key DO NOTHING
            RETURNING alert_id"""), {
            **change.series, "op": kernel_checks.KERNELS_OP, "kind": AlertKind.KERNELS.value,
            "direction": Direction.CHANGE.value, "good": change.last_good_run_id, "bad": change.first_bad_run_id,
            "diff": json.dumps(diff, default=str), "kernel_diff": json.dumps(change.diff),
            "confirmation": Confirmation.CONFIRMED.value,
            "confirm_note": "exact (a kernel set is not noisy): not re-run",
        }).first()
        if row is not None:
            raised.append(Alert(
                alert_id=row.alert_id, kind=AlertKind.KERNELS, **change.series, op=kernel_checks.KERNELS_OP,
                direction=Direction.CHANGE, change_pct=None, confidence=None, baseline_us=None, after_us=None,
                last_good_run_id=change.last_good_run_id, first_bad_run_id=change.first_bad_run_id,
                provenance_diff=diff, kernel_diff=change.diff, confirmation=Confirmation.CONFIRMED,
            ))
    return raised


def too_short(engine: Engine, params: Params = Params()) -> dict[int, int]:
    """The series too short to be tested yet (`detect.nights_before_testing`): how many nights
    each still needs -> how many series need that many, counting the nights detection reads
    (nightly, not excluded, in `series_night`)."""
    needed = nights_before_testing(params)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("""
            SELECT :needed - nights AS missing, count(*) AS series
            FROM (SELECT count(*) AS nights FROM series_night WHERE kind = 'nightly' AND NOT excluded
                  GROUP BY series_pk) n
            WHERE nights < :needed GROUP BY nights ORDER BY missing"""), {"needed": needed}).all()
    return {row.missing: row.series for row in rows}


def list_alerts(engine: Engine, state: AlertState | None = None) -> list[Alert]:
    """Every alert (or those in `state`), newest first, with its latest bisection's verdict."""
    where = "WHERE a.state = :state" if state else ""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"""
            SELECT a.alert_id, a.kind, a.state, a.direction, round(a.change_pct::numeric, 2) AS change_pct,
                   round(a.confidence::numeric, 4) AS confidence, a.baseline_us, a.after_us,
                   {', '.join('a.' + k for k in SERIES)}, a.last_good_run_id, a.first_bad_run_id, a.state_note,
                   a.provenance_diff, a.kernel_diff, a.confirmation, a.confirm_note,
                   v.state AS bisection_state, v.first_bad_build, v.commit_range
            FROM alert a
            LEFT JOIN LATERAL (SELECT state, first_bad_build, commit_range FROM bisection_verdict
                               WHERE alert_id = a.alert_id ORDER BY bisection_id DESC LIMIT 1) v ON true
            {where} ORDER BY a.created_at DESC, a.alert_id DESC"""), {"state": state and AlertState(state).value})
        return [Alert.from_row(row._mapping) for row in rows]


def set_state(engine: Engine, alert_id: int, state: AlertState | str, note: str | None = None) -> None:
    try:
        state = AlertState(state)
    except ValueError:
        raise MoecommError(f"unknown state {state!r} ({', '.join(AlertState)})") from None
    with engine.begin() as conn:
        updated = conn.execute(sa.text(
            "UPDATE alert SET state = :state, state_note = COALESCE(:note, state_note), updated_at = now() "
            "WHERE alert_id = :id"), {"state": state.value, "note": note, "id": alert_id}).rowcount
    if not updated:
        raise MoecommError(f"no alert {alert_id} (see: moecomm alerts list)")


def set_excluded(engine: Engine, run_id: str, reason: str | None) -> None:
    """Quarantine a run (detection skips it) with a reason, or bring it back (reason None)."""
    with engine.begin() as conn:
        updated = conn.execute(sa.text(
            "UPDATE run SET excluded = :excluded, excluded_reason = :reason WHERE run_id = :run AND kind = 'nightly'"),
            {"excluded": reason is not None, "reason": reason, "run": run_id}).rowcount
    if not updated:
        raise MoecommError(f"no nightly run {run_id!r} (see: moecomm runs; bisection runs stay excluded)")
