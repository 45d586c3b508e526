"""The nightly on Airflow's real services, started as the README's native deployment starts them
(`sql/deploy/init-roles.sh` on a PostgreSQL server of the test's own, then
`sql/deploy/native/run-service.sh` with an environment file of the same variables as
docker-compose.yml): API server, scheduler, DAG processor and two Celery workers on two node
queues, Redis as the broker, PostgreSQL for Airflow's metadata and Celery's results (role
airflow) and moecomm's results (written as moecomm_writer, read here as moecomm_reader). The DAG
is triggered through the REST API. Run twice: with the local launcher (`mpirun`), and with the
Slurm launcher (`sbatch --wait` on the tests' own Slurm cluster, as a worker on a login node
does), so the whole production path runs once. Every process started is gone at the end
(asserted)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from live import browser
from live.airflow import AirflowServices, example_keys
from live.databases import deployment_databases
from live.processes import Processes, free_port, wait_for

from conftest import require_services
from moecomm_tasks.names import safe_name

pytestmark = pytest.mark.integration
DAG_ID = "moe_comm_nightly"
ARTIFACTS = Path(os.environ.get("MOECOMM_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts"))
RUN_TIMEOUT_S = 240
LOGICAL_DATE = "2026-11-20T02:00:00Z"

MATRIX = """
# Feb 29: unpausing the DAG schedules no run of its own (catchup is off; the next is in 2028).
schedule = "0 2 29 2 *"
backends = ["TORCH_ALLTOALL", "TORCH_ALLGATHER"]
profiles = ["deepseek_v3", "gpt_oss"]
ep_sizes = [2]
queues = ["{a}", "{b}"]
timeout_s = 120
kill_grace_s = 3
retries = 0
deadline_s = {deadline_s}
worker_args = ["--device", "cpu", "--hidden_size", "256"]

[sweep]
min = 16
max = 32
factor = 2
iters = 4
warmup = 1

[launcher]
kind = "{launcher}"
oversubscribe = true

[launcher.slurm]
mode = "sbatch"
time_limit = "00:05:00"
"""


def broker_url(processes: Processes) -> str:
    """MOECOMM_TEST_REDIS_URL (a Redis database the tests may use, e.g. redis://127.0.0.1:6379/5),
    else a redis-server of the test's own on a free port."""
    configured = os.environ.get("MOECOMM_TEST_REDIS_URL")
    if configured:
        return configured
    require_services(None if shutil.which("redis-server") else "redis-server is not installed", "Redis")
    port = free_port()
    processes.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], dict(os.environ))
    wait_for("redis-server", lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                                    text=True, timeout=5).stdout.strip() == "PONG",
             10, 0.1, processes.check_running)
    return f"redis://127.0.0.1:{port}/0"


def executed(log: Path) -> list[tuple[str, str]]:
    """(task id, queue) of every task a Celery worker's log says it executed."""
    return re.findall(r"Executing workload in Celery: .*? task_id='([^']+)'.*? queue='([^']+)'",
                      log.read_text(errors="replace"))


def maps_torch(pid: int) -> bool:
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # the process has ended
        return False


def service_memory_mb(processes: Processes) -> tuple[float, float]:
    """The started processes' (and their children's) resident memory: RSS summed (counting shared
    pages once per process) and PSS summed (shared pages divided among their sharers)."""
    rss = pss = 0
    for proc in processes.leftovers():
        try:
            info = proc.memory_full_info()
        except (psutil.Error, OSError):
            continue
        rss, pss = rss + info.rss, pss + info.pss
    return rss / 2**20, pss / 2**20


def counts(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar()
                for t in ("run", "job", "measurement", "failure", "provenance", "skip")}


@pytest.mark.parametrize("launcher", ["local", "slurm"])
def test_the_nightly_on_airflow_services(launcher, request, http_sink, tmp_path):
    sink_url, received = http_sink
    extra = request.getfixturevalue("slurm_cluster").env if launcher == "slurm" else {}
    started = time.monotonic()
    # The databases and roles as the README prepares them; the services stop before their server.
    with deployment_databases(tmp_path / "postgres") as urls, Processes(tmp_path / "logs") as processes:
        engine = sa.create_engine(urls.reader)
        broker = broker_url(processes)
        # On a shared broker, queue names of this test's own.
        prefix = f"{uuid.uuid4().hex[:8]}-" if os.environ.get("MOECOMM_TEST_REDIS_URL") else ""
        queue_a, queue_b, default_queue = f"{prefix}node-a", f"{prefix}node-b", f"{prefix}default"
        # The Slurm run is made late (its deadline passes while it runs); the local one has time to spare.
        deadline_s = 15 if launcher == "slurm" else 3600
        matrix = tmp_path / "matrix.toml"
        matrix.write_text(MATRIX.format(a=queue_a, b=queue_b, deadline_s=deadline_s, launcher=launcher))
        services = AirflowServices(tmp_path, processes, {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": urls.airflow,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + urls.airflow,
            "AIRFLOW__CELERY__BROKER_URL": broker,
            # Two workers on one host: log servers on ports of their own (one of them serves none).
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": default_queue,
            "MOECOMM_DATABASE_URL": urls.writer,
            "MOECOMM_MATRIX": str(matrix),
            "MOECOMM_POOL_SLOTS": "2",
            "MOECOMM_FAILURE_WEBHOOK_URL": sink_url,
            **extra,
        })
        assert set(example_keys()) <= set(services.environment()), "the test sets every documented variable"
        services.write_env_file()
        services.init()
        services.start("api-server", "api-server")
        services.start("scheduler", "scheduler")
        services.start("dag-processor", "dag-processor")
        services.start("worker-a", "worker", f"{default_queue},{queue_a}", "2")
        services.start("worker-b", "worker", queue_b, "1", "--skip-serve-logs")
        services.wait_until_serving(DAG_ID, ["worker-a", "worker-b"])
        start_up_s = time.monotonic() - started
        memory_mb = service_memory_mb(processes)

        with services.client() as api:
            assert api.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
            triggered = time.monotonic()
            response = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": LOGICAL_DATE})
            assert response.status_code == 200, response.text
            run_id = response.json()["dag_run_id"]
            run = services.wait_for_run(api, DAG_ID, run_id, RUN_TIMEOUT_S)
            run_s = time.monotonic() - triggered
            instances = api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
            assert run["state"] == "success", [(t["task_id"], t["map_index"], t["state"]) for t in instances]

            # Each benchmark ran on its node's queue, and each worker ran only its own queues' tasks.
            # A first night has no candidates: each node's recheck is mapped over nothing (skipped, on
            # its node's queue all the same); everything else ran on the default queue.
            queues = {(t["task_id"], t["map_index"]): t["queue"] for t in instances}
            states = {(t["task_id"], t["map_index"]): t["state"] for t in instances}
            for queue in (queue_a, queue_b):
                assert sorted(k for k, q in queues.items() if q == queue) == [
                    (f"recheck__{queue}", -1), (f"run_benchmark__{queue}", 0), (f"run_benchmark__{queue}", 1)]
                assert states[(f"recheck__{queue}", -1)] == "skipped"
            on_default = sorted(task for (task, _), q in queues.items() if q == default_queue
                                and states[(task, _)] != "skipped")
            assert {f"plan__{queue_a}", f"plan__{queue_b}", f"recheck_plan__{queue_a}", f"recheck_plan__{queue_b}",
                    "analyze", "confirm", "report", "verdict"} <= set(on_default), on_default
            ran_a, ran_b = executed(processes.logs / "worker-a.log"), executed(processes.logs / "worker-b.log")
            assert ran_b == [(f"run_benchmark__{queue_b}", queue_b)] * 2
            assert sorted(ran_a) == sorted([(f"run_benchmark__{queue_a}", queue_a)] * 2 +
                                           [(task, default_queue) for task in on_default])
            assert {t["task_id"]: t["state"] for t in instances if t["task_id"] in ("analyze", "report")} == {
                "analyze": "success", "report": "success"}

            # The results are in PostgreSQL, under the DAG run's id; the report task wrote its page.
            with engine.connect() as conn:
                jobs = conn.execute(sa.text("SELECT job_key, state, measurements FROM job_summary WHERE run_id = :r"),
                                    {"r": run_id}).all()
                command = conn.execute(sa.text("SELECT DISTINCT command[1] FROM provenance")).scalars().all()
            assert len(jobs) == 4 and {j.state for j in jobs} == {"succeeded"} and all(j.measurements == 8 for j in jobs)
            assert len(command) == 1 and command[0].endswith("sbatch" if launcher == "slurm" else "mpirun"), command
            report = tmp_path / "airflow" / "logs" / "moecomm" / "reports" / safe_name(run_id)
            assert (report / "index.html").exists()

            # The same logical date again: Airflow refuses a second run; re-running the run itself
            # (every task cleared) loads the same rows again and adds none.
            before = counts(engine)
            again = api.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": LOGICAL_DATE})
            assert again.status_code == 409, again.text
            if launcher == "local":
                cleared = api.post(f"/dags/{DAG_ID}/dagRuns/{run_id}/clear", json={"dry_run": False})
                assert cleared.status_code == 200, cleared.text
                wait_for("the cleared run queued again",
                         lambda: api.get(f"/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"] != "success", 30)
                assert services.wait_for_run(api, DAG_ID, run_id, RUN_TIMEOUT_S)["state"] == "success"
                assert counts(engine) == before
                assert len(executed(processes.logs / "worker-b.log")) == 4, "the rerun ran the benchmarks again"

            # A late night is reported once, while the run still runs; a run in time is never reported.
            late = [body for body in received if body.get("late")]
            if launcher == "slurm":
                late = wait_for("the late-run report", lambda: [b for b in received if b.get("late")], 60)
                assert len(late) == 1 and run_id in late[0]["text"] and "15 s after it was queued" in late[0]["text"]
                assert "state running" in late[0]["text"], late[0]["text"]
            else:
                assert late == []
                shot = ARTIFACTS / "airflow-grid.png"
                text = browser.screenshot(f"{services.url}/dags/{DAG_ID}/runs/{run_id}", shot,
                                          cookies=[{"name": "_token", "value": services.token(), "url": services.url}],
                                          wait_for_text="run_benchmark")
                assert "moe_comm_nightly" in text and shot.stat().st_size > 20_000
            assert not [body for body in received if not body.get("late")], "no run failed"
        # The control plane runs without torch: no service process has it loaded (only ranks do).
        assert not [p.cmdline() for p in processes.leftovers() if maps_torch(p.pid)]
        print(f"\n{launcher}: init {services.timings['init_s']:.0f} s, start-up {start_up_s:.0f} s "
              f"(serving after init {services.timings['serving_s']:.0f} s), run {run_s:.0f} s; "
              f"services' memory when serving: {memory_mb[0]:.0f} MB RSS, {memory_mb[1]:.0f} MB PSS")
        engine.dispose()
    assert not processes.leftovers() and processes.stragglers == [], processes.stragglers
