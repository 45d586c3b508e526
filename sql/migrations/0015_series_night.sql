-- One definition of a series and of its value on a night (moecomm_tasks/series.py says it in
-- Python). `series` holds one row per series: the key (backend, profile, EP size, quantization,
-- token count, op, GPU model and the six knobs; a null quantization or GPU model stored as '').
-- `series_night` holds one row per series and run, of every kind of run: the night value
-- `night_us` (the slowest rank's median iteration time, its mean without --iter_stats), what the
-- detector reads beside it, and the run's kind and exclusion. Both are maintained at load time,
-- by the triggers below, in the transaction that writes the measurements: `series_night_refresh`
-- is the only SQL formula of the night value. Deleting a run, a job or a measurement deletes its
-- nights (cascade); excluding a run, or changing its kind or time, updates them.
-- `nightly_series` (public) is restated over `series_night`, with the columns it had.
-- `series_scan` keeps, per series, how far detection has scanned (the nights it tested and where
-- its baseline starts), so that a night's detection tests only the new nights; any change to a
-- night it already tested forgets that series' scan (it is scanned again from its start).

CREATE TABLE series (
    series_pk             BIGSERIAL PRIMARY KEY,
    backend               TEXT    NOT NULL,
    profile               TEXT    NOT NULL,
    ep_size               INTEGER NOT NULL,
    quant_algo            TEXT    NOT NULL,
    local_batch_size      INTEGER NOT NULL,
    op                    TEXT    NOT NULL,
    gpu_model             TEXT    NOT NULL,
    cuda_graph            BOOLEAN NOT NULL,
    pdl                   BOOLEAN NOT NULL,
    perfect_router        BOOLEAN NOT NULL,
    payload_in_workspace  BOOLEAN NOT NULL,
    low_precision_combine BOOLEAN NOT NULL,
    timing_method         TEXT    NOT NULL,
    CONSTRAINT series_key UNIQUE (backend, profile, ep_size, quant_algo, local_batch_size, op, gpu_model,
                                  cuda_graph, pdl, perfect_router, payload_in_workspace,
                                  low_precision_combine, timing_method)
);

CREATE TABLE series_night (
    job_pk                 BIGINT           NOT NULL,
    backend                TEXT             NOT NULL,
    local_batch_size       INTEGER          NOT NULL,
    op                     TEXT             NOT NULL,
    series_pk              BIGINT           NOT NULL REFERENCES series,
    run_pk                 BIGINT           NOT NULL,
    run_id                 TEXT             NOT NULL,
    run_at                 TIMESTAMPTZ      NOT NULL,
    kind                   TEXT             NOT NULL,
    excluded               BOOLEAN          NOT NULL,
    job_key                TEXT             NOT NULL,
    profile                TEXT             NOT NULL,
    ep_size                INTEGER          NOT NULL,
    quant_algo             TEXT             NOT NULL,
    gpu_model              TEXT             NOT NULL,
    cuda_graph             BOOLEAN          NOT NULL,
    pdl                    BOOLEAN          NOT NULL,
    perfect_router         BOOLEAN          NOT NULL,
    payload_in_workspace   BOOLEAN          NOT NULL,
    low_precision_combine  BOOLEAN          NOT NULL,
    timing_method          TEXT             NOT NULL,
    n_ranks                INTEGER          NOT NULL,
    median_us              DOUBLE PRECISION,
    slowest_rank_us        DOUBLE PRECISION,
    slowest_rank           INTEGER,
    fastest_rank_us        DOUBLE PRECISION,
    within_night_stdev_us  DOUBLE PRECISION,
    slowest_rank_median_us DOUBLE PRECISION,
    slowest_rank_min_us    DOUBLE PRECISION,
    median_min_log_ratio   DOUBLE PRECISION,
    night_us               DOUBLE PRECISION NOT NULL,
    CONSTRAINT series_night_pkey PRIMARY KEY (job_pk, backend, local_batch_size, op),
    CONSTRAINT series_night_measurement_fkey FOREIGN KEY (job_pk, backend, local_batch_size, op)
        REFERENCES measurement ON DELETE CASCADE
);
-- A series' nights in order (detector, trends, panels), a run's nights (reports, the latest
-- night, exclusion), the nights of a time range.
CREATE INDEX series_night_series_idx ON series_night (series_pk, run_at, run_id);
CREATE INDEX series_night_run_idx ON series_night (run_pk);
CREATE INDEX series_night_run_id_idx ON series_night (run_id);
CREATE INDEX series_night_run_at_idx ON series_night (run_at);

CREATE TABLE series_scan (
    series_pk     BIGINT      PRIMARY KEY REFERENCES series ON DELETE CASCADE,
    params        TEXT        NOT NULL,  -- the detector's parameters the scan ran with
    start_run_at  TIMESTAMPTZ,           -- where the baseline starts (the first bad night of the
    start_run_id  TEXT,                  -- last change); null: at the series' first night
    tested_run_at TIMESTAMPTZ NOT NULL,  -- the last night tested
    tested_run_id TEXT        NOT NULL
);

-- The nights of the jobs `jobs`, computed again from their measurements. The measurements are
-- read first, by their primary key (the OFFSET 0 fences keep it so: a plan that started from
-- `series` would read every measurement of a backend, size and op), then each finds its series.
CREATE FUNCTION series_night_refresh(jobs BIGINT[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM series_night WHERE job_pk = ANY (jobs);
    INSERT INTO series (backend, profile, ep_size, quant_algo, local_batch_size, op, gpu_model, cuda_graph, pdl,
                        perfect_router, payload_in_workspace, low_precision_combine, timing_method)
    SELECT DISTINCT m.backend, j.profile, j.ep_size, COALESCE(j.quant_algo, ''), m.local_batch_size, m.op,
           COALESCE(p.gpu_model, ''), m.cuda_graph, m.pdl, m.perfect_router, m.payload_in_workspace,
           m.low_precision_combine, m.timing_method
    FROM (SELECT * FROM measurement WHERE job_pk = ANY (jobs) OFFSET 0) m
    JOIN job j USING (job_pk) LEFT JOIN provenance p USING (job_pk)
    ON CONFLICT ON CONSTRAINT series_key DO NOTHING;
    INSERT INTO series_night
    SELECT m.job_pk, m.backend, m.local_batch_size, m.op, s.series_pk, m.run_pk, m.run_id, m.run_at, m.kind,
           m.excluded, m.job_key, s.profile, s.ep_size, s.quant_algo, s.gpu_model, s.cuda_graph, s.pdl,
           s.perfect_router, s.payload_in_workspace, s.low_precision_combine, s.timing_method,
           cardinality(array_remove(m.mean_us, NULL)),
           st.median_us, st.slowest_rank_us, array_position(m.mean_us, st.slowest_rank_us) - 1,
           st.fastest_rank_us, st.within_night_stdev_us, rk.slowest_rank_median_us, rk.slowest_rank_min_us,
           rk.median_min_log_ratio,
           COALESCE(rk.slowest_rank_median_us, st.slowest_rank_us)  -- THE night value
    FROM (SELECT m.*, j.job_key, j.profile, j.ep_size, COALESCE(j.quant_algo, '') AS quant_algo,
                 COALESCE(p.gpu_model, '') AS gpu_model, r.run_pk, r.run_id, r.run_at, r.kind, r.excluded
          FROM (SELECT * FROM measurement WHERE job_pk = ANY (jobs) OFFSET 0) m
          JOIN job j USING (job_pk) JOIN run r USING (run_pk) LEFT JOIN provenance p USING (job_pk)
          OFFSET 0) m
    JOIN series s ON (s.backend, s.profile, s.ep_size, s.quant_algo, s.local_batch_size, s.op, s.gpu_model,
                      s.cuda_graph, s.pdl, s.perfect_router, s.payload_in_workspace, s.low_precision_combine,
                      s.timing_method)
                   = (m.backend, m.profile, m.ep_size, m.quant_algo, m.local_batch_size, m.op, m.gpu_model,
                      m.cuda_graph, m.pdl, m.perfect_router, m.payload_in_workspace, m.low_precision_combine,
                      m.timing_method)
    CROSS JOIN LATERAL (
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY v.mean_us) AS median_us,
               max(v.mean_us)                                      AS slowest_rank_us,
               min(v.mean_us)                                      AS fastest_rank_us,
               (SELECT avg(sd) FROM unnest(m.stdev_us) AS sd)      AS within_night_stdev_us
        FROM unnest(m.mean_us) AS v (mean_us)
    ) st
    CROSS JOIN LATERAL (
        SELECT (SELECT max(v) FROM unnest(m.median_us) AS v)  AS slowest_rank_median_us,
               (SELECT u.lo FROM unnest(m.median_us, m.min_us) AS u (md, lo)
                 ORDER BY u.md DESC NULLS LAST LIMIT 1)       AS slowest_rank_min_us,
               (SELECT avg(ln(u.md / u.lo)) FROM unnest(m.median_us, m.min_us) AS u (md, lo)
                 WHERE u.lo > 0 AND u.md > 0)                 AS median_min_log_ratio
    ) rk;
END $$;

-- Statement-level: one refresh per COPY or INSERT, whatever its number of rows.
CREATE FUNCTION series_night_of_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM series_night_refresh(ARRAY(SELECT DISTINCT job_pk FROM changed));
    RETURN NULL;
END $$;

CREATE TRIGGER series_night_measurement_insert AFTER INSERT ON measurement
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION series_night_of_jobs();
CREATE TRIGGER series_night_measurement_update AFTER UPDATE ON measurement
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION series_night_of_jobs();
-- The GPU model (part of the key) comes from the provenance; the loader writes it first.
CREATE TRIGGER series_night_provenance_insert AFTER INSERT ON provenance
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION series_night_of_jobs();
-- Updates of a key's columns are rare (a corrected GPU model): one refresh per row.
CREATE FUNCTION series_night_of_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM series_night_refresh(ARRAY[NEW.job_pk]);
    RETURN NULL;
END $$;

CREATE TRIGGER series_night_provenance_update AFTER UPDATE OF gpu_model ON provenance
    FOR EACH ROW WHEN (OLD.gpu_model IS DISTINCT FROM NEW.gpu_model) EXECUTE FUNCTION series_night_of_job();
CREATE TRIGGER series_night_job_update AFTER UPDATE OF job_key, profile, ep_size, quant_algo ON job
    FOR EACH ROW WHEN ((OLD.job_key, OLD.profile, OLD.ep_size, OLD.quant_algo)
                       IS DISTINCT FROM (NEW.job_key, NEW.profile, NEW.ep_size, NEW.quant_algo))
    EXECUTE FUNCTION series_night_of_job();

CREATE FUNCTION series_night_of_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE series_night SET run_id = NEW.run_id, run_at = NEW.run_at, kind = NEW.kind, excluded = NEW.excluded
    WHERE run_pk = NEW.run_pk;
    RETURN NULL;
END $$;

CREATE TRIGGER series_night_run_update AFTER UPDATE OF run_id, run_at, kind, excluded ON run
    FOR EACH ROW WHEN ((OLD.run_id, OLD.run_at, OLD.kind, OLD.excluded) IS DISTINCT FROM
                       (NEW.run_id, NEW.run_at, NEW.kind, NEW.excluded))
    EXECUTE FUNCTION series_night_of_run();

-- A change to a night that detection sees (a nightly run's, not excluded) at or before the last
-- night a series' scan tested makes that scan stale: it is forgotten.
CREATE FUNCTION series_scan_forget() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM series_scan sc USING changed c
    WHERE c.series_pk = sc.series_pk AND c.kind = 'nightly' AND NOT c.excluded
      AND (c.run_at, c.run_id) <= (sc.tested_run_at, sc.tested_run_id);
    RETURN NULL;
END $$;

CREATE FUNCTION series_scan_forget_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM series_scan sc USING (SELECT * FROM before UNION ALL SELECT * FROM changed) c
    WHERE c.series_pk = sc.series_pk AND c.kind = 'nightly' AND NOT c.excluded
      AND (c.run_at, c.run_id) <= (sc.tested_run_at, sc.tested_run_id);
    RETURN NULL;
END $$;

CREATE TRIGGER series_scan_night_insert AFTER INSERT ON series_night
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION series_scan_forget();
CREATE TRIGGER series_scan_night_delete AFTER DELETE ON series_night
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION series_scan_forget();
CREATE TRIGGER series_scan_night_update AFTER UPDATE ON series_night
    REFERENCING OLD TABLE AS before NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION series_scan_forget_updated();

SELECT series_night_refresh(ARRAY(SELECT job_pk FROM job));

-- The public view, its columns as 0013 left them; nightly runs only.
DROP VIEW nightly_series;
CREATE VIEW nightly_series AS
SELECT
    run_id,
    run_at,
    excluded,
    job_key,
    backend,
    profile,
    ep_size,
    NULLIF(quant_algo, '') AS quant_algo,
    local_batch_size,
    op,
    NULLIF(gpu_model, '')  AS gpu_model,
    n_ranks,
    median_us,
    slowest_rank_us,
    slowest_rank,
    fastest_rank_us,
    within_night_stdev_us,
    slowest_rank_median_us,
    slowest_rank_min_us,
    median_min_log_ratio,
    cuda_graph,
    pdl,
    perfect_router,
    payload_in_workspace,
    low_precision_combine,
    timing_method,
    night_us,
    series_pk
FROM series_night
WHERE kind = 'nightly';
