"""The control plane needs none of the GPU worker's packages: the DAG file, the scheduler, the API
server, the DAG processor, the Celery executor and every moecomm module they or the light tasks
import, imported with `torch` and `mpi4py` made unimportable. (The services test checks the same
on the running services: none of them maps libtorch.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]

BLOCKER = r"""
import importlib, importlib.abc, json, pkgutil, sys

WORKER_ONLY = ("torch", "mpi4py")

class WorkerPackagesAbsent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in WORKER_ONLY:
            raise ImportError(f"{name} is a GPU worker's package (the worker extra)")
        return None

sys.meta_path.insert(0, WorkerPackagesAbsent())
"""

PROBE = BLOCKER + r"""
errors = {}

def try_import(name):
    try:
        importlib.import_module(name)
    except Exception as exc:
        errors[name] = f"{type(exc).__name__}: {exc}"

for name in ("airflow.jobs.scheduler_job_runner", "airflow.dag_processing.manager",
             "airflow.providers.celery.executors.celery_executor",
             "airflow.providers.celery.executors.celery_executor_utils",
             "airflow.api_fastapi.app", "airflow.cli.commands.api_server_command"):
    try_import(name)
import moecomm_tasks
for module in pkgutil.iter_modules(moecomm_tasks.__path__, "moecomm_tasks."):
    if module.name != "moecomm_tasks.bench":
        try_import(module.name)
try_import("moecomm_tasks.bench.args")  # the matrix checks backends and profiles against it

from airflow.api_fastapi.app import create_app
create_app()
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
errors.update({path: str(error)[-500:] for path, error in bag.import_errors.items()})
print(json.dumps({"errors": errors, "dags": sorted(bag.dags),
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in WORKER_ONLY)}))
"""


def test_the_control_plane_imports_no_torch(tmp_path):
    env = dict(os.environ, AIRFLOW_HOME=str(tmp_path / "airflow"), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"), AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path}/airflow.db")
    result = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "dags")], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["errors"] == {} and facts["loaded"] == []
    assert facts["dags"] == ["moe_comm_bisect", "moe_comm_nightly"]


def test_the_blocker_would_see_torch():
    """The blocker itself works: the worker's own module, which imports torch, fails to import."""
    result = subprocess.run([sys.executable, "-c", BLOCKER + "import moecomm_tasks.bench.main"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "ImportError: torch is a GPU worker's package" in result.stderr
