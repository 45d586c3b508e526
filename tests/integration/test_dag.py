"""The nightly DAG: import and policy, and a real end-to-end `dag.test()` run (through `moecomm
demo`) with real mpirun ranks and a real PostgreSQL, including a crashing and a hanging job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.integration

DAGS = Path(__file__).parent.parent.parent / "dags"
FACTS = """
import json, sys
import psycopg2, sqlalchemy as sa
from airflow.dag_processing.dagbag import DagBag
from moecomm_tasks.dbguard import ConnectionStalled
from moecomm_tasks.errors import DatabaseError, SchemaMismatch
from moecomm_tasks.nightly import BenchmarkFailed
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get(sys.argv[2])
FAULTS = {"benchmark": BenchmarkFailed("x"), "schema": SchemaMismatch("x"), "database": DatabaseError("x"),
          "stalled": sa.exc.OperationalError("SELECT 1", {}, ConnectionStalled("x")),
          "unreachable": sa.exc.OperationalError("connect", {}, psycopg2.OperationalError("x"))}
def policy(t):
    p = getattr(t, "retry_policy", None)
    return {k: p.evaluate(e, 1, 2).action.value for k, e in FAULTS.items()} if p else None
print(json.dumps({
    "errors": {k: str(v)[-300:] for k, v in bag.import_errors.items()},
    "schedule": getattr(dag.timetable, "expression", None), "schedule_tz": str(getattr(dag.timetable, "timezone", None)), "catchup": dag.catchup, "max_active_runs": dag.max_active_runs,
    "tz": str(dag.start_date.tzinfo), "tags": sorted(dag.tags), "doc": bool(dag.doc_md),
    "on_failure": type(dag.on_failure_callback).__name__, "params": sorted(dag.params.keys()),
    "deadlines": [[type(d.reference).__name__, d.interval.total_seconds(), d.callback.path, d.callback.kwargs]
                  for d in dag.deadline or []],
    "tasks": {t.task_id: {
        "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
        "queue": t.queue, "pool": t.pool, "trigger_rule": getattr(t.trigger_rule, "value", t.trigger_rule), "retries": t.retries,
        "retry_policy": type(getattr(t, "retry_policy", None)).__name__, "policy": policy(t),
        "mapped": any(c.__name__ == "MappedOperator" for c in type(t).__mro__), "upstream": sorted(t.upstream_task_ids)}
        for t in dag.tasks},
}))
"""


def dag_facts(tmp_path: Path, dag_id: str = "moe_comm_nightly", **env: str) -> dict:
    environment = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
                       AIRFLOW__CORE__DAGS_FOLDER=str(DAGS), **env)
    result = subprocess.run([sys.executable, "-c", FACTS, str(DAGS), dag_id], capture_output=True, text=True,
                            timeout=180, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_dag_imports_without_a_database_and_follows_the_policy(tmp_path):
    # Nothing at import time may touch a database or the network: both point nowhere here.
    facts = dag_facts(tmp_path, MOECOMM_DATABASE_URL="postgresql+psycopg2://nobody@127.0.0.1:1/none",
                      AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path}/missing/airflow.db",
                      MOECOMM_MATRIX="h100-8gpu")
    assert facts["errors"] == {}
    assert facts["schedule"] == "0 2 * * *" and facts["catchup"] is False and facts["max_active_runs"] == 1
    assert facts["tz"] == "UTC" and facts["schedule_tz"] == "UTC" and facts["doc"] and "nightly" in facts["tags"]
    assert facts["on_failure"] == "RunFailureNotifier"
    assert facts["params"] == ["backends", "build", "ep_sizes", "profiles"]
    # A run still going 6 hours after it was queued is reported late (the matrix's deadline_s).
    assert facts["deadlines"] == [["DagRunQueuedAtDeadline", 6 * 3600.0, "moecomm_tasks.deadline.report_late_run",
                                   {"deadline_s": 6 * 3600}]]
    tasks = facts["tasks"]
    assert set(tasks) == {"plan__gpu-node-1", "run_benchmark__gpu-node-1", "analyze", "recheck_plan__gpu-node-1",
                          "recheck__gpu-node-1", "confirm", "report", "verdict", "to_bisect", "bisect"}
    assert all(t["timeout"] for t in tasks.values()), "every task has an execution_timeout"
    run = tasks["run_benchmark__gpu-node-1"]
    assert run["mapped"] and run["queue"] == "gpu-node-1" and run["pool"] == "moe_gpu"
    assert run["retries"] == 1 and run["retry_policy"] == "ExceptionRetryPolicy"
    assert run["timeout"] >= 3600  # the DEEPEP override's timeout, plus grace
    assert tasks["analyze"]["trigger_rule"] == "all_done" and tasks["report"]["trigger_rule"] == "all_done"
    assert tasks["analyze"]["upstream"] == ["run_benchmark__gpu-node-1"]
    assert tasks["verdict"]["trigger_rule"] == "all_done" and "report" in tasks["verdict"]["upstream"]
    # An infrastructure failure (the database down, dying or not answering) is retried by Airflow;
    # a failed benchmark or a database whose migrations are not this moecomm's is not.
    for name in ("run_benchmark__gpu-node-1", "analyze", "recheck_plan__gpu-node-1", "recheck__gpu-node-1", "confirm",
                 "report", "verdict"):
        assert tasks[name]["retries"] >= 1, name
        assert tasks[name]["policy"] == {"benchmark": "fail", "schema": "fail", "database": "default",
                                         "stalled": "default", "unreachable": "default"}, name
    # New alerts are candidates: their jobs run again on their own queue, as mapped tasks in the
    # benchmark pool, and `confirm` (whatever the re-runs did) sends only those the re-run confirms.
    recheck = tasks["recheck__gpu-node-1"]
    assert recheck["mapped"] and recheck["queue"] == "gpu-node-1" and recheck["pool"] == "moe_gpu"
    assert recheck["timeout"] == run["timeout"] and recheck["upstream"] == ["recheck_plan__gpu-node-1"]
    assert tasks["recheck_plan__gpu-node-1"]["upstream"] == ["analyze"]
    assert tasks["confirm"]["trigger_rule"] == "all_done" and tasks["confirm"]["upstream"] == ["recheck__gpu-node-1"]
    assert tasks["report"]["upstream"] == ["confirm"]
    # Confirmed regressions with builds between their ends go to the bisection DAG, one run per alert.
    assert tasks["to_bisect"]["upstream"] == ["confirm"] and tasks["bisect"]["upstream"] == ["to_bisect"]
    assert tasks["bisect"]["mapped"] and tasks["bisect"]["retries"] == 0


def test_bisect_dag_imports_without_a_database_and_follows_the_policy(tmp_path):
    facts = dag_facts(tmp_path, dag_id="moe_comm_bisect",
                      MOECOMM_DATABASE_URL="postgresql+psycopg2://nobody@127.0.0.1:1/none",
                      AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path}/missing/airflow.db",
                      MOECOMM_MATRIX="h100-8gpu")
    assert facts["errors"] == {}
    assert facts["schedule"] is None and facts["catchup"] is False and facts["max_active_runs"] == 1
    assert facts["tz"] == "UTC" and facts["doc"] and "bisection" in facts["tags"] and facts["params"] == ["alert_id"]
    tasks = facts["tasks"]
    assert set(tasks) == {"plan__gpu-node-1", "bisect__gpu-node-1", "follow_up"}
    assert all(t["timeout"] for t in tasks.values()), "every task has an execution_timeout"
    bisect = tasks["bisect__gpu-node-1"]
    # On the node's queue and in the benchmark pool, as the nightly's jobs; never retried.
    assert bisect["mapped"] and bisect["queue"] == "gpu-node-1" and bisect["pool"] == "moe_gpu"
    assert bisect["retries"] == 0 and bisect["timeout"] >= 8 * 3600
    # A teardown: it runs whatever happened before it, and leaves the run's state to the bisection.
    assert tasks["follow_up"]["trigger_rule"] == "all_done_setup_success"
    assert tasks["follow_up"]["upstream"] == ["bisect__gpu-node-1"]


def test_a_bad_matrix_is_an_import_error_naming_the_field(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('backends = ["TORCH_ALLTOALL"]\nprofiles = ["gpt_oss"]\nep_sizes = [2]\n[sweep]\niters = "many"\n')
    environment = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "airflow"), MOECOMM_MATRIX=str(bad))
    result = subprocess.run([sys.executable, "-c", FACTS, str(DAGS)], capture_output=True, text=True, timeout=180,
                            env=environment)
    assert "matrix.sweep.iters: Input should be a valid integer" in result.stdout + result.stderr


MATRIX = """
backends = ["TORCH_ALLTOALL", "TORCH_ALLGATHER"]
profiles = ["deepseek_v3", "gpt_oss"]
ep_sizes = [2]
timeout_s = 120
kill_grace_s = 3
retry_delay_s = 1
retries = 1
worker_args = ["--device", "cpu", "--hidden_size", "256"]

[sweep]
min = 16
max = 32
factor = 2
iters = 4
warmup = 1

[launcher]
oversubscribe = true

# made to crash: no GPU here
[[overrides]]
backend = "TORCH_ALLTOALL"
profile = "gpt_oss"
extra_args = ["--device", "cuda"]

# made to hang: far more iterations than its timeout allows
[[overrides]]
backend = "TORCH_ALLGATHER"
profile = "gpt_oss"
extra_args = ["--iters", "100000000"]
timeout_s = 20
"""


def counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar()
                for t in ("run", "job", "measurement", "failure", "provenance", "skip")}


def test_nightly_run_end_to_end_with_a_crash_and_a_hang(tmp_path, database_url, engine, http_sink):
    url, received = http_sink
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(MATRIX)
    airflow_home = tmp_path / "airflow"
    env = dict(os.environ, MOECOMM_DATABASE_URL=database_url, MOECOMM_FAILURE_WEBHOOK_URL=url,
               MOECOMM_ALERT_WEBHOOK_URL=url + "alerts")
    argv = [str(Path(sys.executable).parent / "moecomm"), "demo", "--matrix", str(matrix), "--logical-date", "2026-11-20T02:00:00+00:00",
            "--airflow-home", str(airflow_home)]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "DAG run manual__2026-11-20T02:00:00+00:00: failed" in first.stdout
    # What a new user reads carries no deprecation warning (demo.THIRD_PARTY_WARNING says which one is left out).
    assert "deprecat" not in (first.stdout + first.stderr).lower(), first.stderr[-3000:]

    with engine.connect() as conn:
        jobs = {(r.profile, r.requested_backend): r for r in conn.execute(sa.text("SELECT * FROM job_summary"))}
        provenance = conn.execute(sa.text("SELECT command, environment, hosts FROM provenance LIMIT 1")).one()
        worker_failure = conn.execute(sa.text("SELECT excerpt FROM failure WHERE kind = 'worker'")).scalar()
    assert {k: v.state for k, v in jobs.items()} == {
        ("deepseek_v3", "TORCH_ALLTOALL"): "succeeded", ("deepseek_v3", "TORCH_ALLGATHER"): "succeeded",
        ("gpt_oss", "TORCH_ALLTOALL"): "failed", ("gpt_oss", "TORCH_ALLGATHER"): "failed"}
    assert {r.run_id for r in jobs.values()} == {"manual__2026-11-20T02:00:00+00:00"}
    assert jobs[("deepseek_v3", "TORCH_ALLTOALL")].measurements == 2 * 2 * 2
    assert jobs[("gpt_oss", "TORCH_ALLTOALL")].error.startswith("the benchmark exited with status")
    assert "--device cuda was given but CUDA is not available" in worker_failure
    assert jobs[("gpt_oss", "TORCH_ALLGATHER")].error.startswith("timed out after 20 s")
    assert "mpirun" in provenance.command[0] and "--ep_size" in provenance.command and provenance.hosts
    # No rank outlives its task.
    assert not [p for p in psutil.process_iter(["cmdline"]) if any(str(airflow_home) in a for a in (p.info["cmdline"] or []))]
    # Outputs are kept beside the task logs.
    kept = airflow_home / "logs" / "moecomm" / "manual__2026-11-20T02_00_00_00_00"
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        f"{b}-{p}-ep2" for b in ("TORCH_ALLTOALL", "TORCH_ALLGATHER") for p in ("deepseek_v3", "gpt_oss"))
    assert (kept / "TORCH_ALLGATHER-gpt_oss-ep2" / "stdout.txt").read_text().startswith("{")
    # The DAG-level failure notifier said which jobs failed; one night raises no alert: no digest.
    assert received and received[0]["summary"]["states"] == {"failed": 2, "succeeded": 2}
    assert not [r for r in received if "groups" in r]
    # The report task wrote the run's HTML report, whatever failed before it.
    report = airflow_home / "logs" / "moecomm" / "reports" / "manual__2026-11-20T02_00_00_00_00" / "index.html"
    assert report.exists() and f"HTML report: {report}" in first.stdout
    assert "backends_deepseek_v3_2_dispatch.svg" in report.read_text()

    before = counts(engine)
    second = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 1, second.stderr[-3000:]
    assert counts(engine) == before, "rerunning the same DAG run adds no rows"
