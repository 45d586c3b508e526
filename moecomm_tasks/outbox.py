"""Durable alert delivery: the outbox (table `alert_delivery`, one row per alert and channel).

Detection queues a row for each new alert on each configured channel in the same transaction
that stores the alert (`enqueue`), so an alert is never committed without its deliveries. A
sender (`deliver_due`: the DAG's `analyze` task, before and after detection, and
`moecomm detect --notify`) claims the rows that are due, sends each digest (the rows of one
channel and title) as one message, and records the outcome: delivered, or the error with the
next attempt scheduled later. Claiming counts the attempt and moves the next one into the
future in one committed statement before anything is sent, skipping rows another sender holds,
so two senders never send the same row; a row whose sender died after sending and before
recording it is sent again at its next attempt (at least once, never in parallel). After
`MOECOMM_DELIVERY_MAX_ATTEMPTS` failed attempts a row is given up and stays listed with its
last error (`moecomm alerts deliveries`).

Environment: `MOECOMM_DELIVERY_RETRY_S` (the wait after the first failed attempt, default 300 s;
it doubles after each further failure, up to 6 h), `MOECOMM_DELIVERY_MAX_ATTEMPTS` (default 8);
the channels' own variables (`moecomm_tasks.notify`).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from moecomm_tasks import notify
from moecomm_tasks.domain import Alert, Channel, DeliveryState
from moecomm_tasks.errors import ConfigError
from moecomm_tasks.query import shown_sql

log = logging.getLogger(__name__)

RETRY_CAP_S = 6 * 3600
LISTED = 200
ALERT_COLUMNS = """alert_id, kind, backend, profile, ep_size, quant_algo, local_batch_size, op, gpu_model,
                   cuda_graph, pdl, perfect_router, payload_in_workspace, low_precision_combine, timing_method,
                   direction, change_pct, confidence, baseline_us, after_us, last_good_run_id, first_bad_run_id,
                   provenance_diff, kernel_diff, confirmation, state"""


def _setting(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name) or str(default)
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < (1 if name.endswith("ATTEMPTS") else 0):
        raise ConfigError(f"{name}={text!r}: give a whole number" + (" above 0" if name.endswith("ATTEMPTS") else ""))
    return value


def enqueue(conn: sa.Connection, alert_ids: Iterable[int], channels: Iterable[Channel | str], digest: str) -> int:
    """Queue each alert on each channel under the digest title `digest`, in the caller's
    transaction; returns the number of rows queued (an alert already queued on a channel is not)."""
    rows = [{"alert": a, "channel": Channel(c).value, "digest": digest} for a in alert_ids for c in channels]
    if not rows:
        return 0
    return conn.execute(sa.text("""
        INSERT INTO alert_delivery (alert_id, channel, digest) VALUES (:alert, :channel, :digest)
        ON CONFLICT ON CONSTRAINT alert_delivery_once DO NOTHING"""), rows).rowcount


def _claim(engine: Engine, now: datetime | None, retry_s: int, max_attempts: int) -> list[sa.Row]:
    """Claim every due row: count the attempt and move its next attempt into the future, committed
    before anything is sent (rows another sender holds are skipped)."""
    with engine.begin() as conn:
        return conn.execute(sa.text("""
            WITH clock AS (SELECT COALESCE(CAST(:now AS timestamptz), now()) AS t),
                 due AS (SELECT delivery_pk FROM alert_delivery, clock
                         WHERE delivered_at IS NULL AND attempts < :max AND next_attempt_at <= clock.t
                         ORDER BY delivery_pk FOR UPDATE OF alert_delivery SKIP LOCKED)
            UPDATE alert_delivery d
            SET attempts = d.attempts + 1, last_attempt_at = clock.t,
                next_attempt_at = clock.t + make_interval(secs => LEAST(:retry * power(2, d.attempts), :cap))
            FROM due, clock WHERE d.delivery_pk = due.delivery_pk
            RETURNING d.delivery_pk, d.alert_id, d.channel, d.digest, d.attempts"""),
            {"now": now, "max": max_attempts, "retry": retry_s, "cap": RETRY_CAP_S}).all()


def _alerts(engine: Engine, alert_ids: list[int]) -> dict[int, Alert]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT {ALERT_COLUMNS} FROM alert WHERE alert_id = ANY(:ids)"),
                            {"ids": alert_ids}).all()
    return {row.alert_id: Alert.from_row(row._mapping) for row in rows}


def _record(engine: Engine, deliveries: list[int], now: datetime | None, error: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("""
            UPDATE alert_delivery
            SET delivered_at = CASE WHEN CAST(:error AS text) IS NULL THEN COALESCE(CAST(:now AS timestamptz), now()) END,
                last_error = CAST(:error AS text)
            WHERE delivery_pk = ANY(:ids)"""), {"ids": deliveries, "now": now, "error": error})


def deliver_due(engine: Engine, env: Mapping[str, str] | None = None, now: datetime | None = None) -> dict[str, str]:
    """Send every delivery that is due, one message per channel and digest; record each outcome.

    Returns "<channel> <digest>" -> "sent (N alerts)" or "failed (attempt i of n): error". A
    channel's failure does not stop the others; it is recorded, and tried again at the row's next
    attempt. `now` (tests) stands for the database's clock."""
    env = dict(os.environ if env is None else env)
    retry_s = _setting(env, "MOECOMM_DELIVERY_RETRY_S", 300)
    max_attempts = _setting(env, "MOECOMM_DELIVERY_MAX_ATTEMPTS", 8)
    claimed = _claim(engine, now, retry_s, max_attempts)
    if not claimed:
        return {}
    senders = notify.channels(env)
    alerts = _alerts(engine, sorted({row.alert_id for row in claimed}))
    batches: dict[tuple[str, str], list[sa.Row]] = defaultdict(list)
    for row in claimed:
        batches[(row.channel, row.digest)].append(row)
    outcome = {}
    with shown_sql(engine) as shown:
        for (channel_name, digest_title), rows in sorted(batches.items()):
            channel = Channel(channel_name)
            members = [alerts[row.alert_id] for row in rows if row.alert_id in alerts]
            attempt = max(row.attempts for row in rows)
            error = None
            try:
                if channel not in senders:
                    raise ConfigError(f"the {channel} channel is not configured any more (README, Configuration)")
                senders[channel](notify.build_digest(digest_title, members, shown))
            except Exception as exc:  # noqa: BLE001 (a channel's failure is recorded and retried, not raised)
                error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]
                log.warning("alert digest %s on %s: attempt %d of %d failed: %s", digest_title, channel, attempt,
                            max_attempts, error)
            _record(engine, [row.delivery_pk for row in rows], now, error)
            outcome[f"{channel} {digest_title}"] = (
                f"sent ({len(members)} alerts)" if error is None else f"failed (attempt {attempt} of {max_attempts}): {error}")
    return outcome


def deliveries(engine: Engine, env: Mapping[str, str] | None = None) -> list[sa.Row]:
    """The latest deliveries (at most LISTED), newest first, with their state: delivered,
    pending (another attempt will come) or given up."""
    env = dict(os.environ if env is None else env)
    max_attempts = _setting(env, "MOECOMM_DELIVERY_MAX_ATTEMPTS", 8)
    with engine.connect() as conn:
        return list(conn.execute(sa.text("""
            SELECT delivery_pk AS id, alert_id, channel, digest,
                   CASE WHEN delivered_at IS NOT NULL THEN :delivered
                        WHEN attempts >= :max THEN :given_up ELSE :pending END AS state,
                   attempts, CASE WHEN delivered_at IS NULL AND attempts < :max THEN next_attempt_at END AS next_attempt,
                   delivered_at, last_error
            FROM alert_delivery ORDER BY created_at DESC, delivery_pk DESC LIMIT :n"""),
            {"max": max_attempts, "n": LISTED, "delivered": DeliveryState.DELIVERED.value,
             "given_up": DeliveryState.GIVEN_UP.value, "pending": DeliveryState.PENDING.value}))
