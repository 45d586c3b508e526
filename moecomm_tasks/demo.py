"""`moecomm demo`: the main job on this machine: the nightly DAG, once, end to end.

It gives Airflow a home of its own (`$MOECOMM_HOME/airflow`: a SQLite metadata database, the
logs and the jobs' artifacts), points its DAGs folder at moecomm's `dags/`, migrates it, creates
the pool, and runs `moe_comm_nightly` with Airflow's own `dag.test()` (without its late-night
deadline, which needs the scheduler): the CPU matrix by default
(the reference backends, 2 ranks under `mpirun`), loading into the embedded PostgreSQL unless
MOECOMM_DATABASE_URL is set. Then it prints the night's results.

`moecomm samples` loads the recorded H100 runs shipped with moecomm instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
import warnings
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from moecomm_tasks import parse, query, store
from moecomm_tasks.domain import Confirmation, Direction
from moecomm_tasks.embedded import moecomm_home
from moecomm_tasks.errors import ConfigError, MoecommError
from moecomm_tasks.samples import sample_runs

DAG_ID = "moe_comm_nightly"


def dags_folder() -> Path:
    """`dags/` of the checkout, or the copy inside the installed package."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "dags", here / "dags"):
        if (candidate / f"{DAG_ID}.py").exists():
            return candidate
    raise MoecommError(f"no dags/{DAG_ID}.py next to {here}: the installation is incomplete")


def airflow_environment(airflow_home: Path, matrix: str | None) -> dict[str, str]:
    """The variables that make Airflow use its own home and moecomm's DAGs (set before importing it)."""
    env = {
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # Airflow's own INFO lines would bury the night's table; MOECOMM_AIRFLOW_LOG_LEVEL=INFO shows them.
        "AIRFLOW__LOGGING__LOGGING_LEVEL": os.environ.get("MOECOMM_AIRFLOW_LOG_LEVEL", "WARNING"),
    }
    if matrix:
        env["MOECOMM_MATRIX"] = str(Path(matrix).resolve()) if matrix.endswith(".toml") else matrix
    return env


# Airflow's execution API imports `svcs.fastapi`, which imports `fastapi.testclient` only for a
# type hint; Starlette warns there that its test client would rather have `httpx2` than `httpx`.
# Neither the import nor the client is ours (dag.test() never uses that test client), so this one
# warning, and no other, is left out of what the demo prints.
THIRD_PARTY_WARNING = r"Using `httpx` with `starlette\.testclient` is deprecated"


def run_dag(logical_date: datetime, airflow_home: Path, matrix: str | None, dag_id: str = DAG_ID,
            conf: dict | None = None) -> tuple[str, str]:
    """Run a DAG of moecomm's (default: the nightly) once with dag.test(), with `conf` as its
    params; return (run id, final state)."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    os.environ.update(airflow_environment(airflow_home, matrix))
    warnings.filterwarnings("ignore", message=THIRD_PARTY_WARNING, category=UserWarning)
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.pool import Pool
    from airflow.utils.db import upgradedb

    from moecomm_tasks.matrix import load_matrix

    config = load_matrix()
    upgradedb()
    Pool.create_or_update_pool(config.pool, slots=max(1, config.pool_slots), include_deferred=False,
                               description="moecomm: benchmark jobs running at once")
    bag = DagBag(dag_folder=str(dags_folder()))
    if dag_id not in bag.dags:
        raise ConfigError(f"the DAG {dag_id} did not load: {bag.import_errors}")
    dag = bag.dags[dag_id]
    # Deadline alerts need the scheduler, which dag.test() does without; and Airflow 3.3.2's
    # dag.test() fails when a run with one succeeds (it looks the alert up by its serialized form).
    dag.deadline = None
    run = dag.test(logical_date=logical_date, run_after=logical_date, run_conf=conf)
    return run.run_id, str(run.state)


def require_worker_packages() -> None:
    """The demo runs benchmarks on this machine: it needs the worker extra, which a control-plane
    install (`pip install moecomm`) leaves out."""
    missing = [name for name in ("torch", "mpi4py") if importlib.util.find_spec(name) is None]
    if missing:
        raise MoecommError(f"the demo runs the benchmark here, which needs {' and '.join(missing)}: "
                           "pip install 'moecomm[worker]' (from a checkout: pip install -e '.[dev]')")


def run(args: argparse.Namespace) -> int:
    from moecomm_tasks import nightly
    from moecomm_tasks.cli import _engine, console, err_console

    require_worker_packages()
    started = time.monotonic()
    engine = _engine()
    # The tasks run in this process: let them reuse the server started here.
    os.environ.setdefault("MOECOMM_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    logical_date = datetime.fromisoformat(args.logical_date) if args.logical_date else datetime.now(timezone.utc)
    if logical_date.tzinfo is None:
        raise MoecommError(f"--logical-date {args.logical_date!r} has no time zone: add one (e.g. +00:00)")
    airflow_home = Path(args.airflow_home) if args.airflow_home else moecomm_home() / "airflow"
    run_id, state = run_dag(logical_date, airflow_home, args.matrix)
    summary = nightly.run_summary(engine, run_id)
    console.print(nightly.report_text(engine, run_id), markup=False, highlight=False)
    page = nightly.report_dir(run_id) / "index.html"
    console.print(f"\nDAG run {run_id}: {state}; jobs: {summary['states']}; "
                  f"{time.monotonic() - started:.0f} s", markup=False)
    if page.exists():
        console.print(f"HTML report: {page}", markup=False)
    for failed in summary["failed"]:
        err_console.print(f"job {failed['job']}: {failed['error']}", markup=False)
    return 0 if state == "success" else 1


def load_samples(args: argparse.Namespace) -> int:
    from moecomm_tasks.cli import _engine, console, print_trend_table

    engine = _engine()
    runs = sample_runs()
    for sample in runs:
        result = store.load(engine, parse.parse_paths(sample.paths), sample.run_id, sample.run_at)
        console.print(f"run {sample.run_id} ({sample.run_at.isoformat()}): "
                      f"{result.measurements} measurements, {len(result.jobs)} jobs", markup=False)
    print_trend_table(engine, query.SeriesFilter(), last=len(runs), runs=[sample.run_id for sample in runs])
    return 0


REGRESSION_NIGHTS, REGRESSION_BAD_NIGHTS, REGRESSION_PASSES = 21, 4, 40


def regression_matrix(passes: int = 0):
    """The regression demo's one-job matrix (TORCH_ALLTOALL, gpt_oss, EP 2 on CPUs, 96 tokens),
    with `passes` extra passes over the combine output."""
    from moecomm_tasks.matrix import parse_matrix

    extra = ["--extra_combine_passes", str(passes)] if passes else []
    return parse_matrix({
        "backends": ["TORCH_ALLTOALL"], "profiles": ["gpt_oss"], "ep_sizes": [2], "timeout_s": 120,
        "worker_args": ["--device", "cpu", *extra],
        "sweep": {"min": 96, "max": 96, "iters": 60, "warmup": 5, "iter_stats": True},
        "launcher": {"kind": "local", "oversubscribe": True},
    }, "the regression demo")


def regression_nights(engine, artifacts: Path, *, nights: int = REGRESSION_NIGHTS,
                      bad_nights: int = REGRESSION_BAD_NIGHTS, passes: int = REGRESSION_PASSES,
                      start: datetime | None = None, progress=None) -> list[str]:
    """Measure a history for real and make it slower for real: `nights` runs of the worker (2 ranks
    under mpirun, TORCH_ALLTOALL, gpt_oss, 96 tokens: a series of its own, apart from the CPU
    matrix's, `--iter_stats`), then `bad_nights` runs with `--extra_combine_passes passes` (real
    extra passes over the combine output), each launched, kept under `artifacts` and loaded as
    one night by the nightly job's own code. Returns the run ids, oldest first."""
    from datetime import timedelta

    from moecomm_tasks import nightly

    good, bad = regression_matrix(), regression_matrix(passes)
    start = start or datetime(2026, 1, 1, 2, 0, tzinfo=timezone.utc)
    stamp = start.strftime("%Y%m%d")
    run_ids = []
    for index in range(nights + bad_nights):
        config = bad if index >= nights else good
        run_id = f"regression-demo-{stamp}-{index:02d}"
        nightly.run_job(config, config.jobs()[0], run_id=run_id, run_at=start + timedelta(days=index),
                        engine=engine, artifacts_in=artifacts)
        run_ids.append(run_id)
        if progress:
            progress(index + 1, nights + bad_nights)
    return run_ids


def regression(args: argparse.Namespace) -> int:
    """`moecomm demo --regression`: real nights, a real slowdown, and the detector's alert."""
    import json

    from moecomm_tasks import alerts, confirm
    from moecomm_tasks.cli import _engine, console, err_console

    import sqlalchemy as sa

    require_worker_packages()
    started = time.monotonic()
    engine = _engine()
    with engine.begin() as conn:  # a previous demo's nights, re-runs and alerts make way for this one's
        dropped = conn.execute(sa.text("DELETE FROM run WHERE run_id LIKE 'regression-demo-%' AND kind = 'nightly'")).rowcount
        conn.execute(sa.text("DELETE FROM run WHERE run_id LIKE 'regression-demo-%'"))
    if dropped:
        err_console.print(f"Replacing the {dropped} nights of the previous regression demo.")
    err_console.print(f"Running the worker {REGRESSION_NIGHTS} nights, then {REGRESSION_BAD_NIGHTS} nights with "
                      f"--extra_combine_passes {REGRESSION_PASSES} (about 5 s a night) ...")
    regression_nights(engine, moecomm_home() / "regression-demo",
                      progress=(lambda i, n: err_console.print(f"  night {i}/{n}", end="\r"))
                      if err_console.is_terminal else None)
    raised = [a for a in alerts.run_detection(engine, confirm=True) if a.last_good_run_id.startswith("regression-demo-")]
    # Before anyone is paged, the candidates' job runs again (the slowdown is still there).
    err_console.print(f"{len(raised)} candidate alert(s): running their job again to confirm them ...")
    run_id = f"regression-demo-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}"
    decisions = {d.alert_id: d for d in confirm.run_all(engine, regression_matrix(REGRESSION_PASSES), run_id,
                                                          datetime.now(timezone.utc),
                                                          artifacts_in=moecomm_home() / "regression-demo",
                                                          only={a.alert_id for a in raised})}
    shown = []
    for alert in raised:
        if alert.alert_id in decisions:
            decision = decisions[alert.alert_id]
            alert = replace(alert, confirmation=decision.confirmation, confirm_note=decision.note)
        shown.append(alert)
    console.print(json.dumps([a.as_json() for a in shown], indent=2, default=str), markup=False, highlight=False)
    console.print(f"\n{len(raised)} alert(s) from real measurements; {time.monotonic() - started:.0f} s", markup=False)
    return 0 if any(a.op == "combine" and a.direction is Direction.REGRESSION
                    and a.confirmation is Confirmation.CONFIRMED for a in shown) else 1
