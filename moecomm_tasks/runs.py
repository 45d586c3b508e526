"""Deleting a run: what it holds, and the deletion itself (jobs, measurements, kernel timings,
skips, failures, provenance and the alerts that name the run go with it, by the schema's
cascades)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from moecomm_tasks.errors import MoecommError


def contents(engine: Engine, run_id: str) -> str:
    """What deleting `run_id` would delete, in words. Raises when there is no such run."""
    with engine.connect() as conn:
        row = conn.execute(sa.text("""
            SELECT (SELECT count(*) FROM job j WHERE j.run_pk = r.run_pk) AS jobs,
                   (SELECT coalesce(sum(cardinality(array_remove(m.mean_us, NULL))), 0)
                    FROM measurement m JOIN job j USING (job_pk) WHERE j.run_pk = r.run_pk) AS measurements,
                   (SELECT count(*) FROM kernel_timing k JOIN job j USING (job_pk) WHERE j.run_pk = r.run_pk) AS kernels,
                   (SELECT count(*) FROM alert a
                    WHERE :run IN (a.last_good_run_id, a.first_bad_run_id, a.detected_run_id)) AS alerts
            FROM run r WHERE r.run_id = :run"""), {"run": run_id}).first()
    if row is None:
        raise MoecommError(f"no run {run_id!r} (see: moecomm runs)")
    return (f"{row.jobs} job(s), {row.measurements} measurement(s), {row.kernels} kernel timing(s) "
            f"and {row.alerts} alert(s) that name it")


def delete(engine: Engine, run_id: str) -> None:
    """Delete `run_id` and everything that belongs to it, in one transaction."""
    with engine.begin() as conn:
        deleted = conn.execute(sa.text("DELETE FROM run WHERE run_id = :run"), {"run": run_id}).rowcount
    if not deleted:
        raise MoecommError(f"no run {run_id!r} (see: moecomm runs)")
