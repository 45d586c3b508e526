"""Bisection end to end: real `mpirun` ranks (2, gloo on CPU), the real worker, a real PostgreSQL,
a real HTTP server for the follow-up, and (through `moecomm bisect`) a real Airflow `dag.test()`.

The catalog's builds all use this Python; they differ by worker arguments: from the fifth on,
`--extra_combine_passes 150` adds real passes over the combine output (3.5 to 4 times the
combine time of this small shape here: a difference that a busy machine's noise cannot hide). Each test starts from an alert row between two nights that ran
known builds (the detector would need three weeks of nights to raise it).
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller

from moecomm_tasks import alerts, bisection, bisection_report, store
from moecomm_tasks.bisection_search import TEST
from moecomm_tasks.errors import MoecommError
from moecomm_tasks.matrix import parse_matrix
from moecomm_tasks.records import ParsedJob, ParsedOutput, RunHeader, Stats, Timing

pytestmark = pytest.mark.integration

SERIES = {"backend": "TORCH_ALLTOALL", "profile": "gpt_oss", "ep_size": 2, "quant_algo": "W4A8_MXFP4_MXFP8",
          "local_batch_size": 32, "op": "combine", "gpu_model": "", "cuda_graph": False, "pdl": False,
          "perfect_router": False, "payload_in_workspace": False, "low_precision_combine": False,
          "timing_method": "host_clock"}
SLOWER = ["--extra_combine_passes", "150"]


def catalog(slower_from: int | None, n: int = 8, broken: set[int] = frozenset()) -> list[dict]:
    """`n` builds b1..bn, oldest first; from build `slower_from` on, combine does more real work;
    the builds in `broken` name an interpreter that does not exist."""
    return [{"name": f"b{i}", "commit": f"c{i:02d}", "python": "/nonexistent/venv/bin/python" if i in broken
             else sys.executable, "env": {"MOECOMM_BUILD_LABEL": f"b{i}"},
             "worker_args": SLOWER if slower_from is not None and i >= slower_from else []} for i in range(1, n + 1)]


def matrix_data(builds: list[dict]) -> dict:
    return {
        "backends": ["TORCH_ALLTOALL"], "profiles": ["gpt_oss"], "ep_sizes": [2], "timeout_s": 120, "kill_grace_s": 3,
        "worker_args": ["--device", "cpu", "--hidden_size", "512"],
        "sweep": {"min": 32, "max": 32, "iters": 40, "warmup": 3, "iter_stats": True},
        "launcher": {"kind": "local", "oversubscribe": True},
        "builds": builds,
    }


def night(engine, run_id: str, run_at: datetime, build: str, combine_us: float) -> None:
    """A night of the alert's job as the nightly DAG stores it, with the build it ran."""
    header = RunHeader(profile="gpt_oss", ep_size=2, hidden_size=512, top_k=4, num_experts=128,
                       quant_algo="W4A8_MXFP4_MXFP8", dtype="torch.bfloat16", local_batch_sizes=(32,),
                       backend="TORCH_ALLTOALL")
    timings = tuple(Timing("TORCH_ALLTOALL", 32, op, rank, Stats(us, us, us * 0.05, us * 0.9, us * 1.5))
                    for op, us in (("dispatch", 640.0), ("combine", combine_us)) for rank in range(2))
    store.load(engine, ParsedOutput(jobs=(ParsedJob(header, timings),)), run_id, run_at,
               provenance={"build_name": build, "build_commit": f"c{int(build[1:]):02d}"})


def alert_between(engine, good_build: str, bad_build: str, change_pct: float = 130.0,
                  direction: str = "regression", detected: str | None = None) -> int:
    """Two nights (`good_build`'s, then `bad_build`'s) and a regression alert between them."""
    start = datetime(2026, 11, 1, 2, 0, tzinfo=timezone.utc)
    good_run, bad_run = f"night-{good_build}", f"night-{bad_build}"
    night(engine, good_run, start, good_build, 540.0)
    night(engine, bad_run, start + timedelta(days=1), bad_build, 540.0 * (1 + change_pct / 100))
    with engine.begin() as conn:
        return conn.execute(sa.text("""
            INSERT INTO alert (backend, profile, ep_size, quant_algo, local_batch_size, op, gpu_model, cuda_graph, pdl,
                               perfect_router, payload_in_workspace, low_precision_combine, timing_method, direction,
                               change_pct, confidence, baseline_us, after_us, last_good_run_id, first_bad_run_id,
                               detected_run_id, confirmation)
            VALUES (:backend, :profile, :ep_size, :quant_algo, :local_batch_size, :op, :gpu_model, :cuda_graph, :pdl,
                    :perfect_router, :payload_in_workspace, :low_precision_combine, :timing_method, :direction, :change,
                    0.999, 540.0, :after, :good, :bad, :detected, 'confirmed') RETURNING alert_id"""),
            {**SERIES, "direction": direction, "change": change_pct, "after": 540.0 * (1 + change_pct / 100),
             "good": good_run, "bad": bad_run, "detected": detected or bad_run}).scalar_one()


def test_eight_builds_the_fifth_slower_names_the_fifth_within_four_probes(engine, tmp_path, http_sink):
    url, received = http_sink
    matrix = parse_matrix(matrix_data(catalog(slower_from=5)))
    alert_id = alert_between(engine, "b1", "b8")

    outcome = bisection.run(engine, matrix, alert_id, requested_by="test", artifacts_in=tmp_path)
    assert (outcome.state, outcome.last_good_build, outcome.first_bad_build) == ("culprit", "b4", "b5"), outcome.reason
    assert outcome.probes <= 4

    with engine.connect() as conn:
        verdict = conn.execute(sa.text("SELECT * FROM bisection_verdict WHERE alert_id = :a"), {"a": alert_id}).one()
        probes = conn.execute(sa.text("SELECT * FROM bisection_probe ORDER BY seq")).all()
        runs = conn.execute(sa.text("SELECT run_id, kind, excluded FROM run WHERE run_id LIKE 'bisect-%'")).all()
        in_views = conn.execute(sa.text("""
            SELECT (SELECT count(*) FROM nightly_series WHERE run_id LIKE 'bisect-%')
                 + (SELECT count(*) FROM measurement_flat WHERE run_id LIKE 'bisect-%')
                 + (SELECT count(*) FROM kernel_flat WHERE run_id LIKE 'bisect-%')""")).scalar()
        stored = conn.execute(sa.text("""
            SELECT r.run_id, j.state, p.build_name, p.build_commit, p.command, p.environment
            FROM run r JOIN job j USING (run_pk) JOIN provenance p USING (job_pk) WHERE r.kind = 'bisection'""")).all()
        measured = conn.execute(sa.text("""
            SELECT count(*) FROM measurement m JOIN job j USING (job_pk) JOIN run r USING (run_pk)
            WHERE r.kind = 'bisection' AND m.op = 'combine'""")).scalar()
    assert (verdict.state, verdict.first_bad_build, verdict.commit_range, verdict.probes) == ("culprit", "b5", "c04..c05",
                                                                                              outcome.probes)
    assert verdict.max_probes == 4
    # The ends, then the middle of what is left: b4 (good), b6 (bad), b5 (bad).
    assert [(p.build_name, p.role, p.outcome) for p in probes] == [
        ("b1", "good_end", "good"), ("b8", "bad_end", "bad"), ("b4", "probe", "good"), ("b6", "probe", "bad"),
        ("b5", "probe", "bad")]
    assert all(len(p.values_us) >= 3 and len(p.run_ids) == len(p.values_us) for p in probes)
    # The slower builds measure slower, on real ranks.
    medians = {p.build_name: bisection_report.evidence([p])[0]["median_us"] for p in probes}
    assert medians["b5"] > 1.5 * medians["b4"] and medians["b8"] > 1.5 * medians["b1"]

    # Every repetition is a bisection run stored like any job's, with the build it ran ...
    assert len(runs) == sum(len(p.run_ids) for p in probes) == len(stored) == measured
    assert all(r.kind == "bisection" and r.excluded for r in runs)
    assert all(s.state == "succeeded" for s in stored)
    for s in stored:
        build = s.run_id.split("-")[3]
        assert (s.build_name, s.build_commit) == (build, f"c{int(build[1:]):02d}")
        assert s.environment["MOECOMM_BUILD_LABEL"] == build
        assert ("--extra_combine_passes" in s.command) == (int(build[1:]) >= 5)
    # ... and left out of the views and the detector: the nightly series has the two nights only.
    assert in_views == 0
    assert alerts.run_detection(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(DISTINCT run_id) FROM nightly_series")).scalar() == 2
    with pytest.raises(MoecommError, match="bisection runs stay excluded"):
        alerts.set_excluded(engine, runs[0].run_id, None)

    # The verdict is shown with the alert and sent as a follow-up to its digest.
    listed = {a.alert_id: a for a in alerts.list_alerts(engine)}[alert_id]
    assert bisection_report.short(listed.bisection_state, listed.first_bad_build, listed.commit_range) == \
        "culprit b5 (c04..c05)"
    sent = bisection_report.follow_up(engine, alert_id, "test", env={"MOECOMM_ALERT_WEBHOOK_URL": url})
    assert sent["notified"] == {"webhook": "sent"}
    assert received[-1]["kind"] == "bisection" and received[-1]["first_bad_build"] == "b5"
    assert received[-1]["commit_range"] == "c04..c05" and received[-1]["title"].startswith("moecomm night-b8, alert #")
    assert [e["build"] for e in received[-1]["evidence"]] == [p.build_name for p in probes]
    assert (tmp_path / "bisections").is_dir()


def test_a_build_whose_interpreter_is_missing_is_reported_failed(engine, tmp_path):
    matrix = parse_matrix(matrix_data(catalog(slower_from=3, n=3, broken={3})))
    alert_id = alert_between(engine, "b1", "b3")

    outcome = bisection.run(engine, matrix, alert_id, requested_by="test", artifacts_in=tmp_path)
    assert outcome.state == "failed" and outcome.probes == 0
    assert outcome.reason.startswith("the bad end b3 failed to run: TORCH_ALLTOALL-gpt_oss-ep2: the benchmark exited")
    assert "/nonexistent/venv/bin/python" in outcome.reason and "nothing was bisected" in outcome.reason
    with engine.connect() as conn:
        kept = conn.execute(sa.text("SELECT * FROM bisection_probe WHERE outcome <> 'failed'")).one()
        failed = conn.execute(sa.text("SELECT * FROM bisection_probe WHERE outcome = 'failed'")).one()
        job = conn.execute(sa.text("""
            SELECT j.state, j.error FROM job j JOIN run r USING (run_pk) WHERE r.run_id = :run"""),
            {"run": failed.run_ids[-1]}).one()
    assert failed.build_name == "b3" and failed.values_us == [None] and "/nonexistent/venv/bin/python" in failed.error
    assert (kept.build_name, kept.role, len(kept.values_us)) == ("b1", "good_end", 1)  # measured before it
    assert job.state == "failed" and job.error.startswith("the benchmark exited with status")


def test_no_build_differs_ends_inconclusive_through_the_dag(engine, database_url, tmp_path, http_sink):
    """`moecomm bisect`: the bisection DAG in-process (dag.test), the follow-up, `moecomm alerts`."""
    url, received = http_sink
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(toml(matrix_data(catalog(slower_from=None))))
    alert_id = alert_between(engine, "b1", "b8")
    improvement = alert_between(engine, "b2", "b7", change_pct=-20.0, direction="improvement")
    env = dict(os.environ, MOECOMM_DATABASE_URL=database_url, MOECOMM_ALERT_WEBHOOK_URL=url,
               MOECOMM_ARTIFACTS=str(tmp_path / "artifacts"))
    moecomm = str(Path(sys.executable).parent / "moecomm")

    refused = subprocess.run([moecomm, "bisect", str(improvement), "--matrix", str(matrix)], capture_output=True,
                             text=True, timeout=120, env=env)
    assert refused.returncode == 3 and f"alert {improvement} is an improvement" in refused.stderr

    done = subprocess.run([moecomm, "bisect", str(alert_id), "--matrix", str(matrix), "--airflow-home",
                           str(tmp_path / "airflow")], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Bisection #" in done.stdout and ": inconclusive" in done.stdout
    assert "the regression does not reproduce between b1 and b8" in done.stdout
    assert "DAG run manual__" in done.stdout and ": success" in done.stdout
    with engine.connect() as conn:
        verdict = conn.execute(sa.text("SELECT * FROM bisection_verdict WHERE alert_id = :a"), {"a": alert_id}).one()
    assert verdict.state == "inconclusive" and verdict.probes == 0 and verdict.requested_by.startswith("manual__")
    assert received and received[-1]["state"] == "inconclusive" and received[-1]["alert_id"] == alert_id

    # Triggered by hand for an alert it cannot bisect, the DAG run fails (the follow-up, a teardown,
    # does not hide it) and nothing is stored or sent.
    direct = subprocess.run([sys.executable, "-c", (
        "import sys; from datetime import datetime, timezone; from pathlib import Path; "
        "from moecomm_tasks import demo; "
        "print(demo.run_dag(datetime.now(timezone.utc), Path(sys.argv[1]), sys.argv[2], dag_id='moe_comm_bisect', "
        "conf={'alert_id': int(sys.argv[3])})[1])"),
        str(tmp_path / "airflow"), str(matrix), str(improvement)], capture_output=True, text=True, timeout=300, env=env)
    assert direct.stdout.strip().splitlines()[-1] == "failed", direct.stdout[-2000:] + direct.stderr[-2000:]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM bisection WHERE alert_id = :a"), {"a": improvement}).scalar() == 0
    assert len([r for r in received if r.get("alert_id") == improvement]) == 0

    listed = subprocess.run([moecomm, "alerts", "list"], capture_output=True, text=True, timeout=120, env=env)
    assert listed.returncode == 0
    line = next(line for line in listed.stdout.splitlines() if line.split() and line.split()[0] == str(alert_id))
    assert line.rstrip().endswith("inconclusive")


def toml(data: dict) -> str:
    """The test's matrix as a TOML file: top-level values, then its tables, then [[builds]]."""
    def value(v) -> str:  # JSON's strings, numbers, booleans and lists read the same in TOML
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"{k} = {value(v)}" for k, v in data.items() if k not in tables and k != "builds"]
    for name, table in tables.items():
        lines += [f"[{name}]"] + [f"{k} = {value(v)}" for k, v in table.items()]
    for build in data["builds"]:
        lines += ["[[builds]]"] + [f"{k} = {value(v)}" for k, v in build.items()]
    return "\n".join(lines) + "\n"


def test_eligible_alerts_are_new_regressions_with_builds_between(engine):
    matrix = parse_matrix(matrix_data(catalog(slower_from=5)))
    between = alert_between(engine, "b1", "b8", detected="night-b8")
    adjacent = alert_between(engine, "b3", "b4")
    improvement = alert_between(engine, "b2", "b6", change_pct=-20.0, direction="improvement", detected="night-b8")
    unrecorded = alert_between(engine, "b5", "b7", detected="night-b8")
    with engine.begin() as conn:  # as a night before builds were recorded
        conn.execute(sa.text("UPDATE provenance SET build_name = NULL WHERE job_pk IN (SELECT job_pk FROM job j "
                             "JOIN run r USING (run_pk) WHERE r.run_id = 'night-b5')"))
    assert bisection.eligible(engine, matrix, "night-b8") == [between]
    assert bisection.eligible(engine, matrix, "night-b4") == []  # adjacent builds: nothing between
    assert bisection.plan(engine, matrix, adjacent).inner == 0
    with pytest.raises(bisection.BisectionError, match="is an improvement"):
        bisection.plan(engine, matrix, improvement)
    with pytest.raises(bisection.BisectionError, match="recorded no build"):
        bisection.plan(engine, matrix, unrecorded)
    # Both nights on one build: no build brought the change.
    start = datetime(2026, 11, 10, 2, 0, tzinfo=timezone.utc)
    night(engine, "same-1", start, "b6", 540.0)
    night(engine, "same-2", start + timedelta(days=1), "b6", 700.0)
    with engine.begin() as conn:
        same = conn.execute(sa.text("""
            INSERT INTO alert (backend, profile, ep_size, quant_algo, local_batch_size, op, gpu_model, cuda_graph, pdl,
                               perfect_router, payload_in_workspace, low_precision_combine, timing_method, direction,
                               change_pct, confidence, baseline_us, after_us, last_good_run_id, first_bad_run_id,
                               detected_run_id)
            SELECT backend, profile, ep_size, quant_algo, local_batch_size, op, gpu_model, cuda_graph, pdl,
                   perfect_router, payload_in_workspace, low_precision_combine, timing_method, direction, change_pct,
                   confidence, baseline_us, after_us, 'same-1', 'same-2', 'same-2' FROM alert WHERE alert_id = :a
            RETURNING alert_id"""), {"a": between}).scalar_one()
    with pytest.raises(bisection.BisectionError, match="both nights ran build b6"):
        bisection.plan(engine, matrix, same)
    with engine.connect() as conn:  # the build is part of each night's provenance
        assert conn.execute(sa.text("SELECT build_name, build_commit FROM provenance_flat WHERE run_id = 'same-1'")).one() \
            == ("b6", "c06")
    # Bisected once, never handed over again.
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO bisection (alert_id, requested_by, good_build, bad_build, builds, max_probes, "
                             "settings) VALUES (:a, 'x', 'b1', 'b8', '[]', 4, '{}')"), {"a": between})
    assert bisection.eligible(engine, matrix, "night-b8") == []
    with pytest.raises(bisection.BisectionError, match="is being bisected already"):
        bisection.run(engine, matrix, between, requested_by="again")


class _Inbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append(envelope.content)
        return "250 OK"


@pytest.fixture
def smtp_inbox():
    """A real SMTP server (aiosmtpd) on loopback; yields its port and the messages it received."""
    inbox = _Inbox()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port, ready_timeout=10)
    controller.start()
    yield port, inbox.messages
    controller.stop()


def test_the_follow_up_reaches_every_channel_of_the_digest(engine, smtp_inbox, http_sink, monkeypatch):
    """A stored verdict (written here as a bisection leaves it) sent by e-mail, to Slack (through
    the Airflow provider, to a local HTTP server: no Slack server runs here) and to the webhook;
    the text and the JSON match their golden files."""
    port, messages = smtp_inbox
    url, received = http_sink
    alert_id = alert_between(engine, "b1", "b8")
    with engine.begin() as conn:
        bisection_id = conn.execute(sa.text("""
            INSERT INTO bisection (alert_id, requested_by, state, good_build, bad_build, builds, last_good_build,
                                   first_bad_build, last_good_commit, first_bad_commit, probes, max_probes, reason,
                                   settings, finished_at)
            VALUES (:a, 'manual__2026-11-02', 'culprit', 'b1', 'b8', CAST(:builds AS jsonb), 'b4', 'b5', 'c04', 'c05',
                    3, 4, 'b5 is the first bad build: b4 measures as the good end, b5 as the bad end', CAST(:s AS jsonb),
                    now()) RETURNING bisection_pk"""),
            {"a": alert_id, "builds": json.dumps([{"name": f"b{i}", "commit": f"c{i:02d}", "version": None}
                                                  for i in range(1, 9)]),
             "s": json.dumps({"test": TEST, "alpha": 0.01, "repetitions": 3, "max_repetitions": 8})}).scalar_one()
        for seq, (build, role, outcome, values, error) in enumerate([
                ("b1", "good_end", "good", [540.0, 541.0, 539.0], None), ("b8", "bad_end", "bad", [1240.0, 1250.0, 1230.0], None),
                ("b4", "probe", "good", [541.0, 538.0, 542.0], None), ("b6", "probe", "bad", [1239.0, 1251.0, 1235.0], None),
                ("b5", "probe", "bad", [1238.0, 1244.0, 1236.0], None)], start=1):
            conn.execute(sa.text("""
                INSERT INTO bisection_probe (bisection_pk, seq, build_name, build_commit, role, outcome, run_ids,
                                             values_us, p_slower_than_good, p_faster_than_bad, position, error)
                VALUES (:b, :seq, :build, :commit, :role, :outcome, :runs, :values, :p1, :p2, :pos, :error)"""),
                {"b": bisection_id, "seq": seq, "build": build, "commit": f"c{int(build[1:]):02d}", "role": role,
                 "outcome": outcome, "runs": [f"bisect-{alert_id}-{bisection_id}-{build}-{k}" for k in (1, 2, 3)],
                 "values": values, "p1": None if role == "good_end" else 0.0001, "p2": 0.0002 if role == "probe" else None,
                 "pos": {"b4": 0.0, "b6": 1.0, "b5": 0.99}.get(build), "error": error})
    monkeypatch.setenv("AIRFLOW_CONN_MOECOMM_SLACK", json.dumps({"conn_type": "slackwebhook", "password": url + "slack"}))
    env = {"MOECOMM_SLACK_CONN_ID": "moecomm_slack", "MOECOMM_ALERT_WEBHOOK_URL": url + "hook",
           "MOECOMM_SMTP_HOST": "127.0.0.1", "MOECOMM_SMTP_PORT": str(port), "MOECOMM_ALERT_EMAIL_TO": "a@example.org"}

    sent = bisection_report.follow_up(engine, alert_id, "manual__2026-11-02", env=env)
    assert sent["notified"] == {"slack": "sent", "email": "sent", "webhook": "sent"}
    verdict = bisection.latest(engine, alert_id)
    assert verdict.notified == sent["notified"]
    text = bisection_report.text(verdict, bisection.probes(engine, bisection_id))
    message = email.message_from_bytes(messages[0], policy=email.policy.default)
    assert message["Subject"] == f"moecomm night-b8, alert #{alert_id}: first bad build b5 (c04..c05)"
    assert message.get_content().replace("\r\n", "\n") == text
    slack = next(r for r in received if "blocks" in r)
    hook = next(r for r in received if "kind" in r)
    assert slack["text"] == message["Subject"] and text.splitlines()[0] in slack["blocks"][1]["text"]["text"]
    assert hook["state"] == "culprit" and [e["build"] for e in hook["evidence"]] == ["b1", "b8", "b4", "b6", "b5"]
    # A fresh database: the alert and the bisection are both number 1.
    golden("bisection_followup.txt", text)
    golden("bisection_followup.json", json.dumps(hook, indent=2, sort_keys=True) + "\n")


def golden(name: str, text: str) -> None:
    """Compare with tests/data/golden/NAME; MOECOMM_UPDATE_GOLDEN=1 rewrites it (read the diff)."""
    path = Path(__file__).parents[1] / "data" / "golden" / name
    if os.environ.get("MOECOMM_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


TRIGGER = """
import json, os, sys
from datetime import datetime
from pathlib import Path
from moecomm_tasks import demo
when = datetime.fromisoformat(sys.argv[2])
os.environ.update(demo.airflow_environment(Path(sys.argv[1]), sys.argv[3]))
from airflow.dag_processing.dagbag import DagBag
from airflow.models.dagrun import DagRun
from airflow.utils.db import upgradedb
from airflow.utils.session import create_session
upgradedb()
dag = DagBag(dag_folder=str(demo.dags_folder())).dags["moe_comm_nightly"]
dag.deadline = None  # needs the scheduler, which dag.test() does without (as in moecomm demo)
# The night's benchmarks and detection are other tests' business: here they count as done.
run = dag.test(logical_date=when, run_after=when,
               mark_success_pattern=r"^(plan__.*|run_benchmark__.*|analyze|recheck_plan__.*|recheck__.*|confirm|report|verdict)$")
with create_session() as session:
    runs = [{"dag_id": r.dag_id, "run_id": r.run_id, "conf": r.conf} for r in session.query(DagRun)]
print(json.dumps({"state": str(run.state), "runs": runs}))
"""


def test_the_nightly_dag_triggers_the_bisection_of_its_new_regressions(engine, database_url, tmp_path):
    """The nightly DAG (a real dag.test) hands the regressions its run raised, with builds between
    their ends, to moe_comm_bisect through Airflow: one triggered run per alert, with its id."""
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(toml(matrix_data(catalog(slower_from=5))))
    when = datetime(2026, 11, 3, 2, 0, tzinfo=timezone.utc)
    run_id = f"manual__{when.isoformat()}"
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO run (run_id, run_at) VALUES (:r, :t)"), {"r": run_id, "t": when})
    between = alert_between(engine, "b1", "b8", detected=run_id)
    alert_between(engine, "b2", "b3", detected=run_id)  # adjacent builds: nothing to bisect
    env = dict(os.environ, MOECOMM_DATABASE_URL=database_url)
    result = subprocess.run([sys.executable, "-c", TRIGGER, str(tmp_path / "airflow"), when.isoformat(), str(matrix)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["state"] == "success"
    assert [r for r in facts["runs"] if r["dag_id"] == "moe_comm_bisect"] == [
        {"dag_id": "moe_comm_bisect", "run_id": f"bisect_alert-{between}", "conf": {"alert_id": between}}]
