"""
### moe_comm_bisect

Bisects one regression alert (param `alert_id`) over the matrix's catalog of builds
(`[[builds]]`, oldest first): measures the builds of the alert's last good and first bad nights
again, then the middle build of the range still open, each repeated until a stated test decides
(Welch's t-test on the slowest rank's median, README: Bisection), and narrows to the first bad
build in at most ceil(log2 n) + 1 probes. Each repetition is a bisection run, stored like any
job's and left out of the nightly series. The verdict (first bad build and commit range, or
inconclusive or failed, with why) is stored with the alert (`bisection_verdict`), shown by
`moecomm alerts list`, and sent as a follow-up to the alert's digest.

Triggered by the nightly DAG for each confirmed regression with builds between its ends, by
`moecomm bisect ALERT_ID` (in-process, `dag.test()`), or by hand with `{"alert_id": N}`.
`plan__<queue>` routes the bisection to the node queue that runs the alert's job;
`bisect__<queue>` runs it there, in the benchmark pool; `follow_up` (a teardown: it runs whatever
happened before it, and the run's state stays the bisection's) sends the verdict.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task, teardown

from moecomm_tasks.bisection_search import time_bound_s
from moecomm_tasks.matrix import load_matrix

# A local file, validated here so that a bad matrix is an import error of this DAG.
MATRIX = load_matrix()
BISECT_TIMEOUT = timedelta(seconds=time_bound_s(MATRIX))


@dag(
    dag_id="moe_comm_bisect",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["moecomm", "benchmark", "bisection"],
    doc_md=__doc__,
    default_args={"retries": 0, "execution_timeout": timedelta(minutes=10)},
    params={"alert_id": Param(type="integer", minimum=1, description="the regression alert to bisect "
                                                                   "(moecomm alerts list)")},
)
def moe_comm_bisect():
    @task(execution_timeout=timedelta(minutes=2))
    def plan(queue: str, params=None) -> list[int]:
        from moecomm_tasks import bisection, db

        return bisection.route(db.make_engine(), MATRIX, int(params["alert_id"]), queue)

    # Not retried: a bisection is long, and a second try would measure every build again.
    @task(execution_timeout=BISECT_TIMEOUT)
    def bisect(alert_id: int, dag_run=None) -> dict:
        from moecomm_tasks import bisection, db

        return bisection.run(db.make_engine(), MATRIX, alert_id, requested_by=dag_run.run_id).as_dict()

    # A teardown: it runs whatever became of the bisection, and the run's state stays the
    # bisection's (a plan that found the alert cannot be bisected, or a failed task, fails the run).
    @teardown
    @task(execution_timeout=timedelta(minutes=5))
    def follow_up(params=None, dag_run=None) -> dict:
        from moecomm_tasks import bisection_report, db

        return bisection_report.follow_up(db.make_engine(), int(params["alert_id"]), requested_by=dag_run.run_id)

    plans = [plan.override(task_id=f"plan__{queue}")(queue) for queue in MATRIX.queues]
    runs = [
        bisect.override(task_id=f"bisect__{queue}", queue=queue, pool=MATRIX.pool,
                        pool_slots=MATRIX.pool_slots).expand(alert_id=planned)
        for queue, planned in zip(MATRIX.queues, plans)
    ]
    runs >> follow_up()


moe_comm_bisect()
