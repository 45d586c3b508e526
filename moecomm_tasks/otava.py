"""An Apache Otava configuration that reads moecomm's public views, for teams that already run
Otava: one Otava test per series (`moecomm otava-config`), all inheriting one template.

Otava reads PostgreSQL through its own settings (environment: POSTGRES_HOSTNAME, POSTGRES_PORT,
POSTGRES_USERNAME, POSTGRES_PASSWORD, POSTGRES_DATABASE; use the read-only role). The GPU model
is Otava's branch (`--branch "NVIDIA H100 80GB HBM3"`): each query filters it with Otava's
`%{BRANCH}` placeholder. (That is also what lets Otava 0.8.0 run these queries at all: without a
placeholder it hands pg8000 `None` as the parameters and fails with a TypeError.) Otava sees one
number per night and series: the detector's night value (`night_us`, moecomm_tasks.series: the
slowest rank's median iteration, its mean without `--iter_stats`), with the run id and the
NCCL, CUDA and torch versions as attributes. A test's name is the series' key made safe for Otava; when that changed the key (a space in a
backend's name, say), a short hash of the key is added, so two series never share a test. The
queries are composed with psycopg2's quoting (`query.shown_sql`).
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
import yaml
from psycopg2 import sql
from sqlalchemy.engine import Engine

from moecomm_tasks.names import safe_name
from moecomm_tasks.query import series_condition, shown_sql

TEMPLATE = {
    "type": "postgres",
    "time_column": "run_at",
    "attributes": ["run_id", "nccl_version", "cuda_version", "torch_version", "trtllm_commit"],
    # Latency: lower is better (a rise is a regression).
    "metrics": {"slowest_rank_us": {"direction": -1}, "median_us": {"direction": -1}},
}
# slowest_rank_us is the detector's night value (nightly_series.night_us, moecomm_tasks.series);
# the metric keeps the name it had, so that Otava's earlier analyses still name it.
QUERY = sql.SQL("""SELECT n.run_at, n.run_id, n.night_us AS slowest_rank_us,
       n.median_us, p.nccl_version, p.cuda_version, p.torch_version, p.trtllm_commit
FROM nightly_series n LEFT JOIN provenance_flat p USING (run_id, job_key)
WHERE NOT n.excluded AND {where}
ORDER BY n.run_at""")
BRANCH = sql.SQL("%{BRANCH}")  # Otava's placeholder for the --branch value


def test_name(backend: str, profile: str, ep_size: int, quant: str, size: int, op: str, *knobs: object) -> str:
    """The series' key as an Otava test name, unique per series whatever the names hold: the key,
    then the knobs after the op (the timing method, and each flag by name where it is on)."""
    flags = [name for name, on in zip(("graph", "pdl", "pr", "piw", "lpc"), knobs[:5]) if on]
    name = ".".join([f"{backend}.{profile}.ep{ep_size}.{quant or 'default'}.{size}.{op}", *map(str, knobs[5:]), *flags])
    safe = safe_name(name)
    if safe == name:
        return name
    # Sanitising can map two keys to one name ('TORCH ALLGATHER' and 'TORCH_ALLGATHER'): the
    # hash of the key as it is tells them apart; a key that needed no change never has one.
    return f"{safe}.{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def config(engine: Engine) -> dict:
    """The Otava configuration (as a dict) for every series in the database."""
    with engine.connect() as conn:
        series = conn.execute(sa.text("""
            SELECT DISTINCT backend, profile, ep_size, quant_algo, local_batch_size, op,
                   cuda_graph, pdl, perfect_router, payload_in_workspace, low_precision_combine, timing_method
            FROM series s
            WHERE EXISTS (SELECT 1 FROM series_night n WHERE n.series_pk = s.series_pk AND n.kind = 'nightly')
            ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12""")).all()
    tests = {}
    with shown_sql(engine) as shown:
        for s in series:
            where = series_condition(dict(s._mapping), alias="n.", gpu_model=BRANCH)
            tests[test_name(*s)] = {"inherit": ["moecomm_series"], "query": shown(QUERY.format(where=where))}
    # `otava analyze ... moecomm` runs every test (Otava 0.8 takes test or group names, no "all").
    return {"templates": {"moecomm_series": TEMPLATE}, "tests": tests, "test_groups": {"moecomm": list(tests)}}


def config_yaml(engine: Engine) -> str:
    header = ("# Apache Otava configuration written by `moecomm otava-config` from the series in the database.\n"
              "# Connection: POSTGRES_HOSTNAME, POSTGRES_PORT, POSTGRES_USERNAME (the read-only role),\n"
              "# POSTGRES_PASSWORD, POSTGRES_DATABASE. The GPU model is the branch, e.g.:\n"
              "#   otava analyze --config-file otava.yaml --branch 'NVIDIA H100 80GB HBM3' moecomm\n")
    return header + yaml.safe_dump(config(engine), sort_keys=False, width=120)
