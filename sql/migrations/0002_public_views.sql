-- The public SQL interface: stable views that dashboards, reports and users query.
-- Columns may be added to these views; none is renamed or removed without a new name.

-- One row per (run, job, backend, local_batch_size, op, rank).
CREATE VIEW measurement_flat AS
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
    p.gpu_model
FROM measurement m
JOIN job j USING (job_pk)
JOIN run r USING (run_pk)
LEFT JOIN provenance p USING (job_pk)
CROSS JOIN LATERAL unnest(m.mean_us, m.median_us, m.stdev_us, m.min_us, m.max_us)
    WITH ORDINALITY AS u (mean_us, median_us, stdev_us, min_us, max_us, ordinality);

-- One row per (run, job, backend, local_batch_size, phase, kernel, rank).
CREATE VIEW kernel_flat AS
SELECT
    r.run_id,
    r.run_at,
    r.excluded,
    j.job_key,
    k.backend,
    j.profile,
    j.ep_size,
    j.quant_algo,
    k.local_batch_size,
    k.phase,
    k.kernel,
    k.rank,
    k.count,
    k.mean_us,
    k.median_us,
    k.stdev_us,
    k.min_us,
    k.max_us,
    p.gpu_model
FROM kernel_timing k
JOIN job j USING (job_pk)
JOIN run r USING (run_pk)
LEFT JOIN provenance p USING (job_pk);

-- One point per series and run. A series is (backend, profile, ep_size, quant_algo,
-- local_batch_size, op, gpu_model). Across ranks: the median of the per-rank means, and the
-- slowest rank (a collective is as slow as its slowest rank); the within-night spread is the
-- iteration stdev averaged over ranks (NULL for runs without --iter_stats).
CREATE VIEW nightly_series AS
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
    cardinality(m.mean_us)                                    AS n_ranks,
    s.median_us,
    s.slowest_rank_us,
    array_position(m.mean_us, s.slowest_rank_us) - 1          AS slowest_rank,
    s.fastest_rank_us,
    s.within_night_stdev_us
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

-- One row per job: what ran, how it ended, and what it skipped or dropped.
CREATE VIEW job_summary AS
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
    (SELECT coalesce(sum(cardinality(m.mean_us)), 0) FROM measurement m WHERE m.job_pk = j.job_pk) AS measurements,
    (SELECT count(*) FROM skip s WHERE s.job_pk = j.job_pk)        AS skips,
    (SELECT count(*) FROM failure f WHERE f.job_pk = j.job_pk)     AS failures,
    j.loaded_at
FROM job j
JOIN run r USING (run_pk);
