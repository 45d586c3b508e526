"""Detection over the stored history, and the alerts' lifecycle (open, acknowledged, resolved,
muted). Reads the public views; writes only the `alert` table and, in the same transaction, the
new alerts' deliveries (`moecomm_tasks.outbox`).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from moecomm_tasks.detect import Params, detect, median_stderr, nights_before_testing
from moecomm_tasks import outbox
from moecomm_tasks.errors import MoecommError
from moecomm_tasks.query import SERIES_GROUP, SERIES_NIGHTS
from moecomm_tasks.query import SERIES_KEY as SERIES

PROVENANCE_FIELDS = ("gpu_model", "driver_version", "cuda_version", "nccl_version", "torch_version",
                     "trtllm_version", "trtllm_commit", "build_name", "build_commit", "build_version")
STATES = ("open", "acknowledged", "resolved", "muted")


def _history(conn: sa.Connection) -> dict[tuple, list[sa.Row]]:
    rows = conn.execute(sa.text("""
        SELECT backend, profile, ep_size, COALESCE(quant_algo, '') AS quant_algo, local_batch_size, op,
               COALESCE(gpu_model, '') AS gpu_model, cuda_graph, pdl, perfect_router, payload_in_workspace,
               low_precision_combine, timing_method, run_id, run_at,
               COALESCE(slowest_rank_median_us, slowest_rank_us) AS night_us, slowest_rank,
               slowest_rank_median_us, slowest_rank_min_us, median_min_log_ratio, job_key
        FROM nightly_series WHERE NOT excluded
        ORDER BY backend, profile, ep_size, quant_algo, local_batch_size, op, gpu_model, cuda_graph, pdl,
                 perfect_router, payload_in_workspace, low_precision_combine, timing_method, run_at, run_id
    """)).all()
    series: dict[tuple, list[sa.Row]] = defaultdict(list)
    for row in rows:
        series[tuple(getattr(row, k) for k in SERIES)].append(row)
    return series


def _known(values: Iterable[float | None]) -> list[float]:
    return [math.nan if v is None else v for v in values]


def _provenance(conn: sa.Connection, run_id: str, job_key: str) -> dict[str, Any]:
    row = conn.execute(sa.text(f"""
        SELECT {', '.join(PROVENANCE_FIELDS)} FROM provenance_flat WHERE run_id = :run AND job_key = :key"""),
        {"run": run_id, "key": job_key}).first()
    return dict(row._mapping) if row else {}


def run_detection(engine: Engine, params: Params = Params(), deliver_to: Sequence[str] = (),
                  digest: str = "", confirm: bool = False) -> list[dict[str, Any]]:
    """Detect changes in every series' history; store the new ones; return them (oldest first).

    With `confirm`, the new alerts are candidates, sent only once a re-run of their job agrees
    (moecomm_tasks.confirm); without, they count as confirmed as they are. Confirmed new alerts
    are queued in the outbox on the channels `deliver_to` under the digest title `digest`, in the
    transaction that stores them."""
    confirmation = "candidate" if confirm else "confirmed"
    raised = []
    with engine.begin() as conn:
        for key, nights in _history(conn).items():
            # The slowest rank's median (its mean without --iter_stats); with --iter_stats, that
            # median's standard error (~200 iterations) and the night's shape.
            values = [n.night_us for n in nights]
            stderr = median_stderr(_known(n.slowest_rank_median_us for n in nights),
                                   _known(n.slowest_rank_min_us for n in nights))
            shape = _known(n.median_min_log_ratio for n in nights)
            for change in detect(values, stderr, params, shape):
                good, bad = nights[change.last_good], nights[change.first_bad]
                before = _provenance(conn, good.run_id, good.job_key)
                after = _provenance(conn, bad.run_id, bad.job_key)
                diff = {f: [before.get(f), after.get(f)] for f in PROVENANCE_FIELDS if before.get(f) != after.get(f)}
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
                    "confirm_note": None if confirm else "not re-run (confirmation off)",
                }).first()
                if row is not None:
                    raised.append({
                        "alert_id": row.alert_id, **dict(zip(SERIES, key)), "direction": change.direction,
                        "change_pct": round(change.change_pct, 3), "confidence": round(change.confidence, 4),
                        "baseline_us": change.baseline, "after_us": change.after,
                        "last_good_run_id": good.run_id, "first_bad_run_id": bad.run_id,
                        "provenance_diff": diff, "confirmation": confirmation,
                    })
        if not confirm:
            outbox.enqueue(conn, [a["alert_id"] for a in raised], deliver_to, digest)
    return raised


def too_short(engine: Engine, params: Params = Params()) -> dict[int, int]:
    """The series too short to be tested yet (`detect.nights_before_testing`): how many nights
    each still needs -> how many series need that many, counting the nights detection reads
    (nightly, not excluded; `query.SERIES_NIGHTS`, which skips the view's statistics)."""
    needed = nights_before_testing(params)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"""
            SELECT :needed - nights AS missing, count(*) AS series
            FROM (SELECT count(*) AS nights FROM ({SERIES_NIGHTS}) s WHERE NOT excluded GROUP BY {SERIES_GROUP}) n
            WHERE nights < :needed GROUP BY nights ORDER BY missing"""), {"needed": needed}).all()
    return {row.missing: row.series for row in rows}


def list_alerts(engine: Engine, state: str | None = None) -> list[sa.Row]:
    where = "WHERE a.state = :state" if state else ""
    with engine.connect() as conn:
        return list(conn.execute(sa.text(f"""
            SELECT a.alert_id, a.state, a.direction, round(a.change_pct::numeric, 2) AS change_pct,
                   round(a.confidence::numeric, 4) AS confidence, a.backend, a.profile, a.ep_size, a.local_batch_size,
                   a.op, a.gpu_model, a.last_good_run_id, a.first_bad_run_id, a.state_note,
                   a.confirmation, a.confirm_note, v.state AS bisection_state, v.first_bad_build, v.commit_range
            FROM alert a
            LEFT JOIN LATERAL (SELECT state, first_bad_build, commit_range FROM bisection_verdict
                               WHERE alert_id = a.alert_id ORDER BY bisection_id DESC LIMIT 1) v ON true
            {where} ORDER BY a.created_at DESC, a.alert_id DESC"""), {"state": state}))


def set_state(engine: Engine, alert_id: int, state: str, note: str | None = None) -> None:
    if state not in STATES:
        raise MoecommError(f"unknown state {state!r} ({', '.join(STATES)})")
    with engine.begin() as conn:
        updated = conn.execute(sa.text(
            "UPDATE alert SET state = :state, state_note = COALESCE(:note, state_note), updated_at = now() "
            "WHERE alert_id = :id"), {"state": state, "note": note, "id": alert_id}).rowcount
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
