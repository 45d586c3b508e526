-- Confirmation before anyone is paged: a new alert is a `candidate` until its job has been run
-- again (a `confirmation` run: quarantined and left out of the views, like a bisection run) and
-- the re-run agrees; only `confirmed` alerts are sent. A candidate whose re-run does not agree is
-- kept, `unconfirmed`, with what the re-run measured. Alerts raised before this migration were
-- sent as they were: they count as confirmed.

ALTER TABLE run DROP CONSTRAINT run_kind_known;
ALTER TABLE run ADD CONSTRAINT run_kind_known CHECK (kind IN ('nightly', 'bisection', 'confirmation'));

ALTER TABLE alert
    ADD COLUMN confirmation     TEXT             NOT NULL DEFAULT 'confirmed',
    ADD COLUMN confirm_run_id   TEXT             REFERENCES run (run_id) ON DELETE SET NULL,
    ADD COLUMN confirm_value_us DOUBLE PRECISION,
    -- Where the re-run lies between the alert's baseline (0) and its level after the change (1),
    -- on a log scale.
    ADD COLUMN confirm_position DOUBLE PRECISION,
    ADD COLUMN confirm_note     TEXT,
    ADD COLUMN confirmed_at     TIMESTAMPTZ,
    ADD CONSTRAINT alert_confirmation_known CHECK (confirmation IN ('candidate', 'confirmed', 'unconfirmed'));
ALTER TABLE alert ALTER COLUMN confirmation SET DEFAULT 'candidate';
CREATE INDEX alert_candidates_idx ON alert (alert_pk) WHERE confirmation = 'candidate';
