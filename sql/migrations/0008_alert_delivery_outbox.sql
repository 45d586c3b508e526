-- The alert-delivery outbox: one row per alert and channel, written in the transaction that
-- raises the alert, so that no alert is ever committed without its deliveries. A sender drains
-- the rows that are due (moecomm_tasks/outbox.py): each attempt is counted, a failure keeps its
-- error and schedules the next attempt later (backing off), up to a bounded number of attempts.
-- `digest` is the title the alert was raised under (the DAG run id): the rows of one digest and
-- channel go out together as one message. Unique per (alert, channel): nothing is queued twice.

CREATE TABLE alert_delivery (
    delivery_pk      BIGSERIAL   PRIMARY KEY,
    alert_pk         BIGINT      NOT NULL REFERENCES alert (alert_pk) ON DELETE CASCADE,
    channel          TEXT        NOT NULL,
    digest           TEXT        NOT NULL,
    attempts         INTEGER     NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_attempt_at  TIMESTAMPTZ,
    last_error       TEXT,
    delivered_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT alert_delivery_once UNIQUE (alert_pk, channel),
    CONSTRAINT alert_delivery_channel_known CHECK (channel IN ('slack', 'email', 'webhook')),
    CONSTRAINT alert_delivery_attempts_counted CHECK (attempts >= 0),
    CONSTRAINT alert_delivery_delivered_after_an_attempt CHECK (delivered_at IS NULL OR attempts > 0)
);
CREATE INDEX alert_delivery_pending_idx ON alert_delivery (next_attempt_at) WHERE delivered_at IS NULL;
