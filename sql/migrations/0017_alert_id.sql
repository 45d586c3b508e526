-- The alert id has one name everywhere: `alert_id`, in the tables as in the views, the CLI and
-- the JSON (it was `alert_pk` in the tables and `alert_id` in bisection_verdict and the JSON).
-- The columns that point at an alert are renamed with it. Constraints and indexes follow a
-- renamed column by themselves; bisection_verdict joined on the old name and is restated.

ALTER TABLE alert RENAME COLUMN alert_pk TO alert_id;
ALTER TABLE alert_delivery RENAME COLUMN alert_pk TO alert_id;
ALTER TABLE bisection RENAME COLUMN alert_pk TO alert_id;

CREATE OR REPLACE VIEW bisection_verdict AS
SELECT
    b.bisection_pk AS bisection_id,
    a.alert_id,
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
JOIN alert a ON a.alert_id = b.alert_id;
