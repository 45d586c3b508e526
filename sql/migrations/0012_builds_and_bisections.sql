-- Builds and their bisection.
-- * Every job records the catalog build it ran (matrix `[[builds]]`): its name, commit and
--   version, beside the rest of its provenance (and in provenance_flat, restated whole below
--   with the three columns added at its end).
-- * A run is `nightly` (the default) or a `bisection` run: one repetition of one build's probe.
--   Bisection runs are also quarantined (`excluded`) by the bisection itself, so that what reads
--   `run` directly (the latest night, the last N runs) passes them over as it passes over any
--   excluded run; the public views leave them out (migration 0013).
-- * A bisection: the verdict of bisecting one regression alert over the catalog's builds, and
--   one row per build it measured (its repetitions' values, what the test said, its runs).

ALTER TABLE provenance
    ADD COLUMN build_name    TEXT,
    ADD COLUMN build_commit  TEXT,
    ADD COLUMN build_version TEXT;

CREATE OR REPLACE VIEW provenance_flat AS
SELECT r.run_id, r.run_at, j.job_key, p.gpu_model, p.gpu_count, p.driver_version, p.cuda_version,
       p.nccl_version, p.torch_version, p.trtllm_version, p.trtllm_commit, p.hosts,
       p.build_name, p.build_commit, p.build_version
FROM provenance p
JOIN job j USING (job_pk)
JOIN run r USING (run_pk);

ALTER TABLE run
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'nightly',
    ADD CONSTRAINT run_kind_known CHECK (kind IN ('nightly', 'bisection')),
    ADD CONSTRAINT run_bisection_excluded CHECK (kind = 'nightly' OR excluded);

CREATE TABLE bisection (
    bisection_pk      BIGSERIAL   PRIMARY KEY,
    alert_pk          BIGINT      NOT NULL REFERENCES alert (alert_pk) ON DELETE CASCADE,
    requested_by      TEXT        NOT NULL,
    state             TEXT        NOT NULL DEFAULT 'running',
    -- The ends: the builds of the alert's last good and first bad runs.
    good_build        TEXT        NOT NULL,
    bad_build         TEXT        NOT NULL,
    -- The catalog from the good end to the bad end, oldest first: [{name, commit, version}].
    builds            JSONB       NOT NULL,
    -- Where it ended: the last build known good and the first known bad (adjacent for a culprit).
    last_good_build   TEXT,
    first_bad_build   TEXT,
    last_good_commit  TEXT,
    first_bad_commit  TEXT,
    probes            INTEGER     NOT NULL DEFAULT 0,
    max_probes        INTEGER     NOT NULL,
    reason            TEXT,
    -- The test and its settings (alpha, repetitions, closeness).
    settings          JSONB       NOT NULL,
    notified          JSONB,
    started_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at       TIMESTAMPTZ,
    CONSTRAINT bisection_state_known CHECK (state IN ('running', 'culprit', 'inconclusive', 'failed')),
    CONSTRAINT bisection_finished_with_reason CHECK (
        (state = 'running') = (finished_at IS NULL) AND (state = 'running' OR reason IS NOT NULL)),
    CONSTRAINT bisection_culprit_named CHECK (state <> 'culprit' OR first_bad_build IS NOT NULL),
    CONSTRAINT bisection_probes_bounded CHECK (probes >= 0 AND probes <= max_probes)
);
-- One bisection of an alert at a time.
CREATE UNIQUE INDEX bisection_one_running_per_alert ON bisection (alert_pk) WHERE state = 'running';

CREATE TABLE bisection_probe (
    bisection_pk         BIGINT             NOT NULL REFERENCES bisection ON DELETE CASCADE,
    seq                  INTEGER            NOT NULL,
    build_name           TEXT               NOT NULL,
    build_commit         TEXT,
    build_version        TEXT,
    role                 TEXT               NOT NULL,
    outcome              TEXT               NOT NULL,
    -- One bisection run per repetition, and its value: the slowest rank's median (µs).
    run_ids              TEXT[]             NOT NULL DEFAULT '{}',
    values_us            DOUBLE PRECISION[] NOT NULL DEFAULT '{}',
    p_slower_than_good   DOUBLE PRECISION,
    p_faster_than_bad    DOUBLE PRECISION,
    position             DOUBLE PRECISION,
    error                TEXT,
    CONSTRAINT bisection_probe_pkey PRIMARY KEY (bisection_pk, seq),
    CONSTRAINT bisection_probe_role_known CHECK (role IN ('good_end', 'bad_end', 'probe')),
    CONSTRAINT bisection_probe_outcome_known CHECK (outcome IN ('good', 'bad', 'unresolved', 'failed')),
    CONSTRAINT bisection_probe_failed_with_error CHECK ((outcome = 'failed') = (error IS NOT NULL)),
    CONSTRAINT bisection_probe_values_per_run CHECK (cardinality(run_ids) = cardinality(values_us))
);
