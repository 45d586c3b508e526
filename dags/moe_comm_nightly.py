"""
### moe_comm_nightly

Every night, the MoE communication benchmark matrix (backend x profile x EP size, from the matrix
file named by `MOECOMM_MATRIX`, default the CPU matrix shipped with moecomm) runs on the GPU
nodes: `plan__<queue>` expands the matrix, one mapped `run_benchmark__<queue>` task per job launches
`mpirun` on the node that owns the queue (a pool caps the total), keeps stdout, stderr and the
output file, and loads the results under this DAG run's id. `analyze` detects changes: new alerts
are candidates; `recheck__<queue>` runs their jobs again on their own queues (at most the
matrix's `confirmation.max_jobs` a night), and `confirm` sends only the alerts whose re-run
agrees. `analyze`, `confirm`, `report` and `verdict` run whatever failed before them and read the
database, not the failed tasks' XComs; `verdict` fails the run when any planned job did not
succeed, which calls the failure notifier. Confirmed regressions with builds between their ends
are handed to `moe_comm_bisect`. A run still going
`deadline_s` (the matrix's) after it was queued is reported late.

Manual runs take params to run a subset: `backends`, `profiles`, `ep_sizes`; and `build`, a build
of the matrix's catalog to run instead of the night's (`night_build`, default the newest).
`bisect` hands each new confirmed regression with builds between its ends to `moe_comm_bisect`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import ExceptionRetryPolicy, Param, RetryAction, RetryRule, dag, task

from moecomm_tasks.deadline import deadline_alert
from moecomm_tasks.matrix import load_matrix
from moecomm_tasks.notifiers import RunFailureNotifier

# A local file, validated here so that a bad matrix is an import error of this DAG.
MATRIX = load_matrix()
JOB_TIMEOUT = timedelta(seconds=max([MATRIX.timeout_s] + [o.timeout_s or 0 for o in MATRIX.overrides])
                        + MATRIX.kill_grace_s + 300)
# A benchmark that crashed, hung or failed its check is recorded and not retried, nor is a results
# database whose migrations are not this moecomm's; anything else (the node, mpirun, the database
# down, dying or not answering) is an infrastructure failure and gets the task's retries.
FINAL_FAILURES = ExceptionRetryPolicy(rules=[
    RetryRule(exception="moecomm_tasks.nightly.BenchmarkFailed", action=RetryAction.FAIL,
              reason="the benchmark itself failed; its job is recorded as failed"),
    RetryRule(exception="moecomm_tasks.errors.SchemaMismatch", action=RetryAction.FAIL,
              reason="the results database's migrations are not this moecomm's"),
])


@dag(
    dag_id="moe_comm_nightly",
    schedule=MATRIX.schedule,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["moecomm", "benchmark", "nightly"],
    doc_md=__doc__,
    on_failure_callback=RunFailureNotifier(),
    deadline=deadline_alert(MATRIX.deadline_s),
    default_args={"retries": MATRIX.retries, "retry_delay": timedelta(seconds=MATRIX.retry_delay_s),
                  "execution_timeout": timedelta(minutes=10)},
    params={
        "backends": Param([], type="array", items={"type": "string", "enum": MATRIX.backends},
                          description="a subset of the matrix's backends (empty: all)"),
        "profiles": Param([], type="array", items={"type": "string", "enum": MATRIX.profiles},
                          description="a subset of the matrix's profiles (empty: all)"),
        "ep_sizes": Param([], type="array", items={"type": "integer", "enum": MATRIX.ep_sizes},
                          description="a subset of the matrix's EP sizes (empty: all)"),
        "build": Param("", type="string", enum=["", *(b.name for b in MATRIX.builds)],
                       description="a build of the matrix's catalog (empty: the night's build)"),
    },
)
def moe_comm_nightly():
    @task(execution_timeout=timedelta(minutes=2), retries=0)
    def plan(queue: str, params=None) -> list[dict]:
        from moecomm_tasks import nightly

        return nightly.plan(MATRIX, dict(params or {}))[queue]

    @task(execution_timeout=JOB_TIMEOUT, retry_policy=FINAL_FAILURES)
    def run_benchmark(job: dict, dag_run=None) -> dict:
        from moecomm_tasks import db, nightly
        from moecomm_tasks.matrix import Job

        outcome = nightly.run_job(MATRIX, Job(**job), run_id=dag_run.run_id, run_at=dag_run.run_after,
                                  engine=db.results_engine())
        return outcome.as_dict()

    @task(trigger_rule="all_done", execution_timeout=timedelta(minutes=10), retry_policy=FINAL_FAILURES)
    def analyze(dag_run=None) -> dict:
        from moecomm_tasks import db, nightly

        # Sends what earlier runs could not deliver; the new alerts are candidates until confirmed.
        return nightly.analyze(db.results_engine(), dag_run.run_id, MATRIX)

    @task(execution_timeout=timedelta(minutes=5), retry_policy=FINAL_FAILURES)
    def recheck_plan(queue: str) -> list[dict]:
        from moecomm_tasks import confirm, db

        return confirm.jobs_for_queue(db.results_engine(), MATRIX, queue)

    # The candidates' jobs run again, on their own node's queue, under the run's confirmation run.
    @task(execution_timeout=JOB_TIMEOUT, retry_policy=FINAL_FAILURES)
    def recheck(job: dict, dag_run=None) -> dict:
        from moecomm_tasks import confirm, db
        from moecomm_tasks.matrix import Job

        return confirm.rerun(db.results_engine(), MATRIX, Job(**job), dag_run.run_id, dag_run.run_after).as_dict()

    @task(trigger_rule="all_done", execution_timeout=timedelta(minutes=10), retry_policy=FINAL_FAILURES)
    def confirm(dag_run=None) -> dict:
        from moecomm_tasks import db, nightly

        return nightly.confirm(db.results_engine(), dag_run.run_id, MATRIX)

    @task(trigger_rule="all_done", execution_timeout=timedelta(minutes=10), retry_policy=FINAL_FAILURES)
    def report(dag_run=None) -> dict:
        from moecomm_tasks import db, nightly, report

        engine = db.results_engine()
        page = report.write_report(engine, nightly.report_dir(dag_run.run_id), dag_run.run_id)
        return {"table": nightly.report_text(engine, dag_run.run_id), "html": str(page)}

    # Its verdict is final; only an infrastructure failure while reading it is retried.
    @task(trigger_rule="all_done", execution_timeout=timedelta(minutes=5), retry_policy=FINAL_FAILURES)
    def verdict(planned: list, dag_run=None) -> None:
        from moecomm_tasks import db, nightly

        nightly.verdict(db.results_engine(), dag_run.run_id, planned)

    @task(execution_timeout=timedelta(minutes=5), retries=0)
    def to_bisect(dag_run=None) -> list[dict]:
        from moecomm_tasks import bisection, db

        return [{"conf": {"alert_id": alert_id}, "trigger_run_id": f"bisect_alert-{alert_id}"}
                for alert_id in bisection.eligible(db.make_engine(), MATRIX, dag_run.run_id)]

    plans = [plan.override(task_id=f"plan__{queue}")(queue) for queue in MATRIX.queues]
    runs = [
        run_benchmark.override(task_id=f"run_benchmark__{queue}", queue=queue, pool=MATRIX.pool,
                               pool_slots=MATRIX.pool_slots).expand(job=planned)
        for queue, planned in zip(MATRIX.queues, plans)
    ]
    # The run's state is its leaves': `verdict` fails it when any planned job did not succeed.
    analyzed = analyze()
    runs >> analyzed
    rechecks = []
    for queue in MATRIX.queues:
        jobs = recheck_plan.override(task_id=f"recheck_plan__{queue}")(queue)
        analyzed >> jobs
        rechecks.append(recheck.override(task_id=f"recheck__{queue}", queue=queue, pool=MATRIX.pool,
                                         pool_slots=MATRIX.pool_slots).expand(job=jobs))
    confirmed = confirm()
    rechecks >> confirmed >> report() >> verdict(plans)
    # A run of the bisection DAG per confirmed regression to bisect (none is triggered twice).
    bisections = to_bisect()
    confirmed >> bisections
    TriggerDagRunOperator.partial(task_id="bisect", trigger_dag_id="moe_comm_bisect", skip_when_already_exists=True,
                                  execution_timeout=timedelta(minutes=5), retries=0).expand_kwargs(bisections)


moe_comm_nightly()
