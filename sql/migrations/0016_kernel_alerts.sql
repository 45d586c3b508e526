-- Noise-free kernel checks: an alert of kind `kernels` says that a series' set of kernels, or a
-- kernel's launch count, changed between two consecutive nights (runs with --kernel_breakdown).
-- It is exact, not a statistical change: it has no change percentage, confidence or levels (they stay
-- null), its direction is `change`, and `kernel_diff` holds the difference (kernels added and
-- removed, counts before and after, under their demangled names with the names as printed).
-- A kernels alert is about a job's series as a whole (every phase), not one op: its `op` is
-- `kernels`. Its direction keeps it apart from a level alert of the same series and night under
-- `alert_change_key`, which is left as it is. Every alert raised before this one is a level alert.

ALTER TABLE alert
    ADD COLUMN kind        TEXT  NOT NULL DEFAULT 'level',
    ADD COLUMN kernel_diff JSONB,
    ALTER COLUMN change_pct DROP NOT NULL,
    ALTER COLUMN confidence DROP NOT NULL,
    ALTER COLUMN baseline_us DROP NOT NULL,
    ALTER COLUMN after_us DROP NOT NULL,
    DROP CONSTRAINT alert_direction_known,
    ADD CONSTRAINT alert_kind_known CHECK (kind IN ('level', 'kernels')),
    ADD CONSTRAINT alert_direction_known CHECK (
        (kind = 'level' AND direction IN ('regression', 'improvement'))
        OR (kind = 'kernels' AND direction = 'change')),
    ADD CONSTRAINT alert_level_measured CHECK (
        kind <> 'level' OR (change_pct IS NOT NULL AND confidence IS NOT NULL
                            AND baseline_us IS NOT NULL AND after_us IS NOT NULL AND kernel_diff IS NULL)),
    ADD CONSTRAINT alert_kernels_differ CHECK (
        kind <> 'kernels' OR (jsonb_typeof(kernel_diff) = 'object' AND change_pct IS NULL AND confidence IS NULL
                              AND baseline_us IS NULL AND after_us IS NULL));
