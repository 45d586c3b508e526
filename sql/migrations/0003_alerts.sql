-- Alerts raised by the regression detector, with their lifecycle. The natural key (the series,
-- the first bad run and the direction) means a change is never raised twice.

CREATE TABLE alert (
    alert_pk          BIGSERIAL PRIMARY KEY,
    backend           TEXT             NOT NULL,
    profile           TEXT             NOT NULL,
    ep_size           INTEGER          NOT NULL,
    quant_algo        TEXT             NOT NULL DEFAULT '',
    local_batch_size  INTEGER          NOT NULL,
    op                TEXT             NOT NULL,
    gpu_model         TEXT             NOT NULL DEFAULT '',
    direction         TEXT             NOT NULL,
    change_pct        DOUBLE PRECISION NOT NULL,
    confidence        DOUBLE PRECISION NOT NULL,
    baseline_us       DOUBLE PRECISION NOT NULL,
    after_us          DOUBLE PRECISION NOT NULL,
    last_good_run_id  TEXT             NOT NULL REFERENCES run (run_id) ON DELETE CASCADE,
    first_bad_run_id  TEXT             NOT NULL REFERENCES run (run_id) ON DELETE CASCADE,
    detected_run_id   TEXT             NOT NULL REFERENCES run (run_id) ON DELETE CASCADE,
    provenance_diff   JSONB            NOT NULL DEFAULT '{}'::jsonb,
    state             TEXT             NOT NULL DEFAULT 'open',
    state_note        TEXT,
    created_at        TIMESTAMPTZ      NOT NULL DEFAULT now(),
    updated_at        TIMESTAMPTZ      NOT NULL DEFAULT now(),
    CONSTRAINT alert_change_key UNIQUE (backend, profile, ep_size, quant_algo, local_batch_size, op, gpu_model,
                                        first_bad_run_id, direction),
    CONSTRAINT alert_direction_known CHECK (direction IN ('regression', 'improvement')),
    CONSTRAINT alert_state_known CHECK (state IN ('open', 'acknowledged', 'resolved', 'muted')),
    CONSTRAINT alert_confidence_range CHECK (confidence >= 0 AND confidence <= 1),
    CONSTRAINT alert_times_finite CHECK (baseline_us > 0 AND baseline_us < 'Infinity' AND after_us >= 0 AND after_us < 'Infinity')
);
CREATE INDEX alert_state_idx ON alert (state);
