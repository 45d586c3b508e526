-- What the detector reads of a night's iterations besides the slowest rank's median (runs with
-- --iter_stats; null otherwise), added at the end of the public view:
--   slowest_rank_min_us   the fastest iteration of the rank with the largest median: with that
--                         median it gives the median's standard error (detect.median_stderr);
--   median_min_log_ratio  the ranks' mean of ln(median / fastest iteration): the night's shape,
--                         in which its level cancels; it rises when some iterations ran slow and
--                         the rest did not (an outlier night), and stays when all moved (a step).
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
    (SELECT max(v) FROM unnest(m.median_us) AS v)             AS slowest_rank_median_us,
    (SELECT u.lo FROM unnest(m.median_us, m.min_us) AS u (md, lo)
      ORDER BY u.md DESC NULLS LAST LIMIT 1)                  AS slowest_rank_min_us,
    (SELECT avg(ln(u.md / u.lo)) FROM unnest(m.median_us, m.min_us) AS u (md, lo)
      WHERE u.lo > 0 AND u.md > 0)                            AS median_min_log_ratio
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
