-- The detector's per-night value: the slowest rank's median iteration time (robust to outlier
-- iterations), where the run had --iter_stats; added at the end of the public view.
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
    cardinality(m.mean_us)                                    AS n_ranks,
    s.median_us,
    s.slowest_rank_us,
    array_position(m.mean_us, s.slowest_rank_us) - 1          AS slowest_rank,
    s.fastest_rank_us,
    s.within_night_stdev_us,
    (SELECT max(v) FROM unnest(m.median_us) AS v)             AS slowest_rank_median_us
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

-- Where and with what each job ran: one row per (run, job), for dashboards and Otava attributes.
CREATE VIEW provenance_flat AS
SELECT r.run_id, r.run_at, j.job_key, p.gpu_model, p.gpu_count, p.driver_version, p.cuda_version,
       p.nccl_version, p.torch_version, p.trtllm_version, p.trtllm_commit, p.hosts
FROM provenance p
JOIN job j USING (job_pk)
JOIN run r USING (run_pk);
