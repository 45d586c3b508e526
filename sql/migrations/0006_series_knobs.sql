-- A series is separated by everything that changes its number. Each measurement records the
-- knobs it was measured with (moecomm_tasks/knobs.py states the rules): CUDA-graph replay,
-- PDL, the perfect router, the expert output in the backend's workspace, low-precision combine
-- and the timing method. A rank's null (not measured) is kept as a null element beside the
-- measured ranks; a kernel a rank did not run has no row. The job keeps upstream's
-- benchmark_metadata.warning. Alerts are keyed by the whole series.

CREATE OR REPLACE FUNCTION pg_temp.header_flag(header jsonb, key text) RETURNS boolean
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT CASE WHEN jsonb_typeof(header -> key) = 'boolean' THEN (header ->> key)::boolean END $$;

ALTER TABLE job ADD COLUMN warning TEXT;
UPDATE job SET warning = header ->> 'warning' WHERE jsonb_typeof(header -> 'warning') = 'string';

ALTER TABLE measurement
    ADD COLUMN cuda_graph            BOOLEAN,
    ADD COLUMN pdl                   BOOLEAN,
    ADD COLUMN perfect_router        BOOLEAN,
    ADD COLUMN payload_in_workspace  BOOLEAN,
    ADD COLUMN low_precision_combine BOOLEAN,
    ADD COLUMN timing_method         TEXT,
    ADD COLUMN unhonoured            TEXT[];

-- Older rows get the values that were true for them, from the run header kept in job.header
-- (and our worker's provenance inside it) and the job's recorded environment and command:
-- * our worker before `cupti_enabled` (its provenance has `timing_method`): `cuda_events` was
--   eager launches behind a spin kernel, `cuda_events+cuda_graph` the same replayed from a CUDA
--   graph, `monotonic_clock` the CPU clock. Its per-result method (a failed graph capture fell
--   back to eager launches) was not kept: the header's is used;
-- * upstream with `cupti_enabled`: kernel spans, except the sizes its warning names as fallbacks
--   (when the output file was loaded: stdout's header has no warning); its per-result
--   payload_in_workspace was not kept: upstream (at 162db94) gives a combine input region to
--   NVLINK_ONE_SIDED only, so only that backend keeps the header's value;
-- * upstream between the seed and CUPTI (`cuda_graph` in its header): CUDA events;
-- * the seed: torch.profiler ranges, eager, random routing, no PDL unless the recorded
--   environment set TRTLLM_ENABLE_PDL=1, payload outside the workspace, bf16 combine.
UPDATE measurement m SET
    cuda_graph = CASE
        WHEN NOT j.header ? 'cupti_enabled' AND j.header -> 'provenance' ->> 'timing_method' = 'cuda_events+cuda_graph'
            THEN true
        WHEN NOT j.header ? 'cupti_enabled' AND j.header -> 'provenance' ->> 'timing_method' = 'cuda_events'
            THEN false
        ELSE COALESCE(pg_temp.header_flag(j.header, 'cuda_graph'), false) END,
    pdl = COALESCE(pg_temp.header_flag(j.header, 'pdl'), p.environment ->> 'TRTLLM_ENABLE_PDL' = '1', false),
    perfect_router = COALESCE(pg_temp.header_flag(j.header, 'perfect_router'), false),
    payload_in_workspace = COALESCE(pg_temp.header_flag(j.header, 'payload_in_workspace')
                                    AND (m.backend = 'NVLINK_ONE_SIDED' OR NOT j.header ? 'cupti_enabled'), false),
    low_precision_combine = COALESCE(pg_temp.header_flag(j.header, 'use_low_precision_combine'),
                                     '--use_low_precision_combine' = ANY (p.command), false),
    timing_method = CASE
        WHEN NOT j.header ? 'cupti_enabled' AND j.header -> 'provenance' ? 'timing_method' THEN
            CASE WHEN j.header -> 'provenance' ->> 'timing_method' = 'monotonic_clock' THEN 'host_clock'
                 ELSE 'cuda_events_spin' END
        WHEN pg_temp.header_flag(j.header, 'cupti_enabled') THEN
            CASE WHEN EXISTS (
                    SELECT 1
                    FROM regexp_matches(COALESCE(j.header ->> 'warning', ''),
                                        '([A-Za-z0-9_]+) @ local_batch_size=([0-9]{1,7}): rank[0-9]+: ', 'g') AS f (g)
                    WHERE upper(f.g[1]) = m.backend AND f.g[2]::integer = m.local_batch_size)
                 THEN 'cuda_events' ELSE 'kernel_span' END
        WHEN j.header ? 'cupti_enabled' OR j.header ? 'cuda_graph' THEN 'cuda_events'
        ELSE 'profiler' END
FROM job j
LEFT JOIN provenance p USING (job_pk)
WHERE m.job_pk = j.job_pk;

-- Upstream prints 0.0 for a rank without times: a phase 0 on every rank was never stored; a
-- rank's 0 becomes the absent rank it was (a null element, which the constraint restated below
-- allows).
ALTER TABLE measurement DROP CONSTRAINT measurement_one_value_per_rank;
DELETE FROM measurement WHERE 0 = ALL (mean_us);
UPDATE measurement m SET mean_us = z.mean_us, median_us = z.median_us, stdev_us = z.stdev_us,
                         min_us = z.min_us, max_us = z.max_us
FROM (
    SELECT m2.job_pk, m2.backend, m2.local_batch_size, m2.op,
           array_agg(CASE WHEN u.mean > 0 THEN u.mean END ORDER BY u.i) AS mean_us,
           CASE WHEN m2.median_us IS NOT NULL THEN array_agg(CASE WHEN u.mean > 0 THEN u.median END ORDER BY u.i) END AS median_us,
           CASE WHEN m2.stdev_us IS NOT NULL THEN array_agg(CASE WHEN u.mean > 0 THEN u.stdev END ORDER BY u.i) END AS stdev_us,
           CASE WHEN m2.min_us IS NOT NULL THEN array_agg(CASE WHEN u.mean > 0 THEN u.lo END ORDER BY u.i) END AS min_us,
           CASE WHEN m2.max_us IS NOT NULL THEN array_agg(CASE WHEN u.mean > 0 THEN u.hi END ORDER BY u.i) END AS max_us
    FROM measurement m2
    CROSS JOIN LATERAL unnest(m2.mean_us, m2.median_us, m2.stdev_us, m2.min_us, m2.max_us)
        WITH ORDINALITY AS u (mean, median, stdev, lo, hi, i)
    WHERE 0 = ANY (m2.mean_us)
    GROUP BY m2.job_pk, m2.backend, m2.local_batch_size, m2.op
) z
WHERE (m.job_pk, m.backend, m.local_batch_size, m.op) = (z.job_pk, z.backend, z.local_batch_size, z.op);

-- A kernel a rank did not run was printed as 0.0 (or all-zero stats) and stored as a 0 µs
-- kernel: it is absent.
DELETE FROM kernel_timing
WHERE mean_us = 0 AND COALESCE(median_us, 0) = 0 AND COALESCE(stdev_us, 0) = 0
  AND COALESCE(min_us, 0) = 0 AND COALESCE(max_us, 0) = 0;

ALTER TABLE measurement
    ALTER COLUMN cuda_graph SET NOT NULL,
    ALTER COLUMN pdl SET NOT NULL,
    ALTER COLUMN perfect_router SET NOT NULL,
    ALTER COLUMN payload_in_workspace SET NOT NULL,
    ALTER COLUMN low_precision_combine SET NOT NULL,
    ALTER COLUMN timing_method SET NOT NULL,
    ADD CONSTRAINT measurement_timing_method_known CHECK (
        timing_method IN ('kernel_span', 'cuda_events', 'cuda_events_spin', 'profiler', 'host_clock')),
    -- A null element is a rank that was not measured; at least one rank is.
    ADD CONSTRAINT measurement_one_value_per_rank CHECK (
        array_ndims(mean_us) = 1 AND array_lower(mean_us, 1) = 1
        AND cardinality(array_remove(mean_us, NULL)) > 0
        AND (median_us IS NULL OR cardinality(median_us) = cardinality(mean_us))
        AND (stdev_us IS NULL OR cardinality(stdev_us) = cardinality(mean_us))
        AND (min_us IS NULL OR cardinality(min_us) = cardinality(mean_us))
        AND (max_us IS NULL OR cardinality(max_us) = cardinality(mean_us))
    ),
    -- A time of 0 is no measurement (the parser refuses it); older rows are not re-checked.
    ADD CONSTRAINT measurement_times_positive CHECK (
        0 < ALL (mean_us)
        AND (median_us IS NULL OR 0 < ALL (median_us))
        AND (min_us IS NULL OR 0 < ALL (min_us))
        AND (max_us IS NULL OR 0 < ALL (max_us))
    ) NOT VALID;

ALTER TABLE kernel_timing ADD CONSTRAINT kernel_timing_times_positive CHECK (
    mean_us > 0 AND (median_us IS NULL OR median_us > 0)
    AND (min_us IS NULL OR min_us > 0) AND (max_us IS NULL OR max_us > 0)
) NOT VALID;

-- The views, restated whole; new columns at the end.
CREATE OR REPLACE VIEW measurement_flat AS
SELECT
    r.run_id,
    r.run_at,
    r.excluded,
    j.job_key,
    m.backend,
    j.profile,
    j.ep_size,
    j.quant_algo,
    j.hidden_size,
    j.top_k,
    j.num_experts,
    m.local_batch_size,
    m.op,
    (u.ordinality - 1)::integer AS rank,
    u.mean_us,
    u.median_us,
    u.stdev_us,
    u.min_us,
    u.max_us,
    m.payload_dtype,
    p.gpu_model,
    m.cuda_graph,
    m.pdl,
    m.perfect_router,
    m.payload_in_workspace,
    m.low_precision_combine,
    m.timing_method,
    m.unhonoured
FROM measurement m
JOIN job j USING (job_pk)
JOIN run r USING (run_pk)
LEFT JOIN provenance p USING (job_pk)
CROSS JOIN LATERAL unnest(m.mean_us, m.median_us, m.stdev_us, m.min_us, m.max_us)
    WITH ORDINALITY AS u (mean_us, median_us, stdev_us, min_us, max_us, ordinality)
WHERE u.mean_us IS NOT NULL;

-- One point per series and run. A series is (backend, profile, ep_size, quant_algo,
-- local_batch_size, op, gpu_model) and the six knobs. n_ranks counts the measured ranks; a
-- rank's null takes no part in the median, the slowest or the fastest rank.
CREATE OR REPLACE VIEW nightly_series AS
SELECT
    r.run_id,
    r.run_at,
    r.excluded,
    j.job_key,
    m.backend,
    j.profile,
    j.ep_size,
    j.quant_algo,
    m.local_batch_size,
    m.op,
    p.gpu_model,
    cardinality(array_remove(m.mean_us, NULL))                AS n_ranks,
    s.median_us,
    s.slowest_rank_us,
    array_position(m.mean_us, s.slowest_rank_us) - 1          AS slowest_rank,
    s.fastest_rank_us,
    s.within_night_stdev_us,
    (SELECT max(v) FROM unnest(m.median_us) AS v)             AS slowest_rank_median_us,
    (SELECT u.lo FROM unnest(m.median_us, m.min_us) AS u (md, lo)
      ORDER BY u.md DESC NULLS LAST LIMIT 1)                  AS slowest_rank_min_us,
    (SELECT avg(ln(u.md / u.lo)) FROM unnest(m.median_us, m.min_us) AS u (md, lo)
      WHERE u.lo > 0 AND u.md > 0)                            AS median_min_log_ratio,
    m.cuda_graph,
    m.pdl,
    m.perfect_router,
    m.payload_in_workspace,
    m.low_precision_combine,
    m.timing_method
FROM measurement m
JOIN job j USING (job_pk)
JOIN run r USING (run_pk)
LEFT JOIN provenance p USING (job_pk)
CROSS JOIN LATERAL (
    SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY v.mean_us) AS median_us,
           max(v.mean_us)                                      AS slowest_rank_us,
           min(v.mean_us)                                      AS fastest_rank_us,
           (SELECT avg(sd) FROM unnest(m.stdev_us) AS sd)      AS within_night_stdev_us
    FROM unnest(m.mean_us) AS v (mean_us)
) s;

CREATE OR REPLACE VIEW job_summary AS
SELECT
    r.run_id,
    r.run_at,
    j.job_key,
    j.profile,
    j.ep_size,
    j.quant_algo,
    j.requested_backend,
    j.state,
    j.error,
    (SELECT coalesce(sum(cardinality(array_remove(m.mean_us, NULL))), 0)
     FROM measurement m WHERE m.job_pk = j.job_pk)              AS measurements,
    (SELECT count(*) FROM skip s WHERE s.job_pk = j.job_pk)        AS skips,
    (SELECT count(*) FROM failure f WHERE f.job_pk = j.job_pk)     AS failures,
    j.loaded_at,
    j.warning
FROM job j
JOIN run r USING (run_pk);

-- Alerts: the series key gains the knobs. An older alert takes them from its first bad night.
ALTER TABLE alert
    ADD COLUMN cuda_graph            BOOLEAN,
    ADD COLUMN pdl                   BOOLEAN,
    ADD COLUMN perfect_router        BOOLEAN,
    ADD COLUMN payload_in_workspace  BOOLEAN,
    ADD COLUMN low_precision_combine BOOLEAN,
    ADD COLUMN timing_method         TEXT;
UPDATE alert a SET (cuda_graph, pdl, perfect_router, payload_in_workspace, low_precision_combine, timing_method) = (
    SELECT n.cuda_graph, n.pdl, n.perfect_router, n.payload_in_workspace, n.low_precision_combine, n.timing_method
    FROM nightly_series n
    WHERE n.run_id = a.first_bad_run_id AND n.backend = a.backend AND n.profile = a.profile
      AND n.ep_size = a.ep_size AND COALESCE(n.quant_algo, '') = a.quant_algo
      AND n.local_batch_size = a.local_batch_size AND n.op = a.op AND COALESCE(n.gpu_model, '') = a.gpu_model
    ORDER BY n.job_key LIMIT 1);
-- An alert whose night has no measurement left (none is known) keeps the seed's knobs.
UPDATE alert SET cuda_graph = COALESCE(cuda_graph, false), pdl = COALESCE(pdl, false),
                 perfect_router = COALESCE(perfect_router, false),
                 payload_in_workspace = COALESCE(payload_in_workspace, false),
                 low_precision_combine = COALESCE(low_precision_combine, false),
                 timing_method = COALESCE(timing_method, 'profiler')
WHERE timing_method IS NULL;
ALTER TABLE alert
    ALTER COLUMN cuda_graph SET NOT NULL,
    ALTER COLUMN pdl SET NOT NULL,
    ALTER COLUMN perfect_router SET NOT NULL,
    ALTER COLUMN payload_in_workspace SET NOT NULL,
    ALTER COLUMN low_precision_combine SET NOT NULL,
    ALTER COLUMN timing_method SET NOT NULL,
    DROP CONSTRAINT alert_change_key,
    ADD CONSTRAINT alert_change_key UNIQUE (backend, profile, ep_size, quant_algo, local_batch_size, op, gpu_model,
                                            cuda_graph, pdl, perfect_router, payload_in_workspace,
                                            low_precision_combine, timing_method, first_bad_run_id, direction);

DROP FUNCTION pg_temp.header_flag(jsonb, text);
