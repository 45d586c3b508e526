-- The results schema: runs, jobs (one per benchmark configuration of a run), what each job
-- measured, skipped and dropped, and where it ran. Natural keys make every load idempotent;
-- CHECK constraints refuse impossible values (negative, NaN or infinite times).

CREATE TABLE run (
    run_pk          BIGSERIAL PRIMARY KEY,
    run_id          TEXT        NOT NULL,
    run_at          TIMESTAMPTZ NOT NULL,
    excluded        BOOLEAN     NOT NULL DEFAULT false,
    excluded_reason TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT run_run_id_key UNIQUE (run_id),
    CONSTRAINT run_run_id_not_blank CHECK (btrim(run_id) <> ''),
    CONSTRAINT run_excluded_has_reason CHECK (NOT excluded OR excluded_reason IS NOT NULL)
);
CREATE INDEX run_run_at_idx ON run (run_at);

CREATE TABLE job (
    job_pk                  BIGSERIAL PRIMARY KEY,
    run_pk                  BIGINT      NOT NULL REFERENCES run ON DELETE CASCADE,
    job_key                 TEXT        NOT NULL,
    profile                 TEXT        NOT NULL,
    ep_size                 INTEGER     NOT NULL,
    quant_algo              TEXT,
    hidden_size             INTEGER,
    top_k                   INTEGER,
    num_experts             INTEGER,
    dtype                   TEXT,
    requested_backend       TEXT,
    state                   TEXT        NOT NULL,
    error                   TEXT,
    header                  JSONB       NOT NULL DEFAULT '{}'::jsonb,
    content_sha256          TEXT        NOT NULL,
    loaded_at               TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT job_run_key UNIQUE (run_pk, job_key),
    CONSTRAINT job_ep_size_positive CHECK (ep_size > 0),
    CONSTRAINT job_state_known CHECK (state IN ('succeeded', 'partial', 'failed'))
);
-- Trend queries select a series by profile and EP size here, and by backend, size and op below.
CREATE INDEX job_profile_ep_idx ON job (profile, ep_size);

CREATE TABLE provenance (
    job_pk          BIGINT PRIMARY KEY REFERENCES job ON DELETE CASCADE,
    gpu_model       TEXT,
    gpu_count       INTEGER,
    driver_version  TEXT,
    cuda_version    TEXT,
    nccl_version    TEXT,
    torch_version   TEXT,
    trtllm_version  TEXT,
    trtllm_commit   TEXT,
    hosts           TEXT[],
    command         TEXT[],
    environment     JSONB NOT NULL DEFAULT '{}'::jsonb,
    extra           JSONB NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT provenance_gpu_count_nonnegative CHECK (gpu_count IS NULL OR gpu_count >= 0)
);

-- One row per (job, backend, local_batch_size, op); element i of each array is rank i's time.
-- Storing a collective's ranks together keeps a year of nightly results small and fast to load
-- and to read; the measurement_flat view gives one row per rank.
CREATE TABLE measurement (
    job_pk           BIGINT             NOT NULL REFERENCES job ON DELETE CASCADE,
    backend          TEXT               NOT NULL,
    local_batch_size INTEGER            NOT NULL,
    op               TEXT               NOT NULL,
    mean_us          DOUBLE PRECISION[] NOT NULL,
    median_us        DOUBLE PRECISION[],
    stdev_us         DOUBLE PRECISION[],
    min_us           DOUBLE PRECISION[],
    max_us           DOUBLE PRECISION[],
    payload_dtype    TEXT,
    CONSTRAINT measurement_pkey PRIMARY KEY (job_pk, backend, local_batch_size, op),
    CONSTRAINT measurement_op_known CHECK (op IN ('dispatch', 'combine')),
    CONSTRAINT measurement_size_positive CHECK (local_batch_size > 0),
    CONSTRAINT measurement_one_value_per_rank CHECK (
        array_ndims(mean_us) = 1 AND array_lower(mean_us, 1) = 1
        AND array_position(mean_us, NULL) IS NULL
        AND (median_us IS NULL OR cardinality(median_us) = cardinality(mean_us))
        AND (stdev_us IS NULL OR cardinality(stdev_us) = cardinality(mean_us))
        AND (min_us IS NULL OR cardinality(min_us) = cardinality(mean_us))
        AND (max_us IS NULL OR cardinality(max_us) = cardinality(mean_us))
    ),
    -- In PostgreSQL NaN sorts above every number, so "'Infinity' > ALL" also rejects NaN.
    CONSTRAINT measurement_times_finite_nonnegative CHECK (
        0 <= ALL (mean_us) AND 'Infinity' > ALL (mean_us)
        AND (median_us IS NULL OR (0 <= ALL (median_us) AND 'Infinity' > ALL (median_us)))
        AND (stdev_us IS NULL OR (0 <= ALL (stdev_us) AND 'Infinity' > ALL (stdev_us)))
        AND (min_us IS NULL OR (0 <= ALL (min_us) AND 'Infinity' > ALL (min_us)))
        AND (max_us IS NULL OR (0 <= ALL (max_us) AND 'Infinity' > ALL (max_us)))
    )
);
CREATE INDEX measurement_series_idx ON measurement (backend, local_batch_size, op);

CREATE TABLE kernel_timing (
    job_pk           BIGINT           NOT NULL REFERENCES job ON DELETE CASCADE,
    backend          TEXT             NOT NULL,
    local_batch_size INTEGER          NOT NULL,
    phase            TEXT             NOT NULL,
    kernel           TEXT             NOT NULL,
    rank             INTEGER          NOT NULL,
    count            INTEGER          NOT NULL,
    mean_us          DOUBLE PRECISION NOT NULL,
    median_us        DOUBLE PRECISION,
    stdev_us         DOUBLE PRECISION,
    min_us           DOUBLE PRECISION,
    max_us           DOUBLE PRECISION,
    CONSTRAINT kernel_timing_pkey PRIMARY KEY (job_pk, backend, local_batch_size, phase, kernel, rank),
    CONSTRAINT kernel_timing_phase_known CHECK (phase IN ('dispatch', 'combine', 'other')),
    CONSTRAINT kernel_timing_count_nonnegative CHECK (count >= 0),
    CONSTRAINT kernel_timing_times_finite_nonnegative CHECK (
        mean_us >= 0 AND mean_us < 'Infinity'
        AND (median_us IS NULL OR (median_us >= 0 AND median_us < 'Infinity'))
        AND (stdev_us IS NULL OR (stdev_us >= 0 AND stdev_us < 'Infinity'))
        AND (min_us IS NULL OR (min_us >= 0 AND min_us < 'Infinity'))
        AND (max_us IS NULL OR (max_us >= 0 AND max_us < 'Infinity'))
    )
);

-- A backend (local_batch_size NULL) or one of its sizes that did not run, with the reason.
CREATE TABLE skip (
    job_pk           BIGINT  NOT NULL REFERENCES job ON DELETE CASCADE,
    backend          TEXT    NOT NULL,
    local_batch_size INTEGER,
    reason           TEXT    NOT NULL,
    CONSTRAINT skip_job_backend_size_key UNIQUE NULLS NOT DISTINCT (job_pk, backend, local_batch_size)
);

-- What a load could not keep (dropped objects) and what failed (worker tracebacks, timeouts).
CREATE TABLE failure (
    job_pk   BIGINT  NOT NULL REFERENCES job ON DELETE CASCADE,
    seq      INTEGER NOT NULL,
    kind     TEXT    NOT NULL,
    source   TEXT    NOT NULL,
    line     INTEGER,
    rank     INTEGER,
    reason   TEXT    NOT NULL,
    excerpt  TEXT    NOT NULL DEFAULT '',
    CONSTRAINT failure_pkey PRIMARY KEY (job_pk, seq),
    CONSTRAINT failure_kind_known CHECK (kind IN ('dropped', 'worker', 'launch'))
);
