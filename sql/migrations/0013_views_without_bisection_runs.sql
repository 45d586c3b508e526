-- The public measurement views are the nightly series: bisection runs (run.kind = 'bisection',
-- one repetition of one build's probe, measured after the fact on a build the night did not run)
-- are left out of them, so that no trend, panel, report or detection sees them. Each view is
-- restated whole as its latest migration left it (0006; kernel_flat 0002), with that one
-- condition added. The bisections' own measurements are read from the tables
-- (moecomm_tasks.bisection), and their verdicts from `bisection_verdict`, defined here.

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
WHERE u.mean_us IS NOT NULL
  AND r.kind = 'nightly';

CREATE OR REPLACE VIEW kernel_flat AS
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
LEFT JOIN provenance p USING (job_pk)
WHERE r.kind = 'nightly';

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
) s
WHERE r.kind = 'nightly';

-- One row per bisection of a regression alert: the alert's series and run range, and the
-- verdict: `state` (running, culprit, inconclusive, failed), the first bad build and the commit
-- range to read (`git log <commit_range>`), how many probes it took, and why it ended so.
CREATE VIEW bisection_verdict AS
SELECT
    b.bisection_pk AS bisection_id,
    a.alert_pk     AS alert_id,
    a.backend,
    a.profile,
    a.ep_size,
    a.quant_algo,
    a.local_batch_size,
    a.op,
    a.gpu_model,
    a.change_pct,
    a.last_good_run_id,
    a.first_bad_run_id,
    b.state,
    b.good_build,
    b.bad_build,
    b.last_good_build,
    b.first_bad_build,
    b.last_good_commit,
    b.first_bad_commit,
    CASE WHEN b.last_good_commit IS NOT NULL AND b.first_bad_commit IS NOT NULL
         THEN b.last_good_commit || '..' || b.first_bad_commit END AS commit_range,
    b.probes,
    b.max_probes,
    b.reason,
    b.requested_by,
    b.started_at,
    b.finished_at
FROM bisection b
JOIN alert a USING (alert_pk);
