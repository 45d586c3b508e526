-- Input limits (moecomm_tasks/limits.py): a job counts the dropped items it did not keep one by
-- one (beyond the first MAX_DROPPED_PER_JOB), and a run id is at most 200 characters without
-- control characters (checked by the loader and the command line; older run ids are not
-- re-checked).

ALTER TABLE job
    ADD COLUMN dropped_omitted INTEGER NOT NULL DEFAULT 0,
    ADD CONSTRAINT job_dropped_omitted_nonnegative CHECK (dropped_omitted >= 0);

ALTER TABLE run ADD CONSTRAINT run_run_id_printable
    CHECK (char_length(run_id) <= 200 AND run_id !~ '[[:cntrl:]]') NOT VALID;

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
    j.warning,
    j.dropped_omitted
FROM job j
JOIN run r USING (run_pk);
