"""Detection over a stored history (loaded with the real loader), and the alerts' lifecycle."""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from moecomm_tasks import alerts, store
from moecomm_tasks.cli import main
from moecomm_tasks.records import ParsedJob, ParsedOutput, RunHeader, Stats, Timing

pytestmark = pytest.mark.integration
START = datetime(2026, 10, 1, 2, 0, tzinfo=timezone.utc)


def night(index: int, rng: random.Random, slower: float) -> ParsedOutput:
    header = RunHeader(profile="deepseek_v3", ep_size=2, hidden_size=7168, top_k=8, num_experts=256,
                       quant_algo="FP8_BLOCK_SCALES", backend="TORCH_ALLTOALL",
                       extra={"provenance": {"gpu_model": "NVIDIA H100", "nccl_version": "2.28.9" if slower == 1 else "2.29.0"}})
    timings = []
    for op, base in (("dispatch", 100.0), ("combine", 200.0)):
        factor = slower if op == "combine" else 1.0
        for rank in range(2):
            mean = base * factor * rng.lognormvariate(0, 0.01)
            timings.append(Timing("TORCH_ALLTOALL", 1024, op, rank, Stats(mean, mean, mean * 0.03, mean * 0.95, mean * 1.2)))
    return ParsedOutput(jobs=(ParsedJob(header, tuple(timings)),))


@pytest.fixture
def history(engine):
    rng = random.Random(7)
    for index in range(28):
        slower = 1.08 if index >= 24 else 1.0  # combine 8% slower from night 24, with a new NCCL
        store.load(engine, night(index, rng, slower), f"night-{index:02d}", START + timedelta(days=index))
    return engine


def test_detect_raises_each_change_once(history, database_url, monkeypatch, capsys):
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    assert main(["detect", "--format", "json"]) == 0
    raised = json.loads(capsys.readouterr().out)
    # How often the detector raises false alarms is the evaluation harness's business, not this test's.
    (alert,) = [a for a in raised if a["op"] == "combine"]
    assert {k: alert[k] for k in ("backend", "profile", "ep_size", "local_batch_size", "op", "direction")} == {
        "backend": "TORCH_ALLTOALL", "profile": "deepseek_v3", "ep_size": 2, "local_batch_size": 1024,
        "op": "combine", "direction": "regression"}
    assert (alert["last_good_run_id"], alert["first_bad_run_id"]) == ("night-23", "night-24")
    assert 6.0 < alert["change_pct"] < 10.0 and alert["confidence"] > 0.99
    assert alert["provenance_diff"] == {"nccl_version": ["2.28.9", "2.29.0"]}
    assert main(["detect", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_excluded_runs_are_skipped(history, database_url, monkeypatch):
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    for index in range(24, 28):
        assert main(["runs", "exclude", f"night-{index}", "--reason", "bad node"]) == 0
    assert main(["runs", "exclude", "night-99", "--reason", "x"]) == 3
    with history.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM run WHERE excluded AND excluded_reason = 'bad node'")).scalar() == 4
    assert [a for a in alerts.run_detection(history) if a["op"] == "combine"] == []
    assert main(["runs", "include", "night-25"]) == 0
    assert main(["runs", "include", "night-26"]) == 0
    assert main(["runs", "include", "night-27"]) == 0
    # Three nights back: the change is found, from the first night that is not quarantined.
    (alert,) = [a for a in alerts.run_detection(history) if a["op"] == "combine"]
    assert alert["first_bad_run_id"] == "night-25"


def test_lifecycle(history, database_url, monkeypatch, capsys):
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    (alert,) = [a for a in alerts.run_detection(history) if a["op"] == "combine"]
    assert main(["alerts", "ack", str(alert["alert_id"]), "--note", "looking"]) == 0
    assert main(["alerts", "list", "--state", "acknowledged"]) == 0
    assert "looking" in capsys.readouterr().out
    for action, state in (("resolve", "resolved"), ("mute", "muted")):
        assert main(["alerts", action, str(alert["alert_id"])]) == 0
        assert [r.state for r in alerts.list_alerts(history) if r.alert_id == alert["alert_id"]] == [state]
    assert main(["alerts", "ack", "999999"]) == 3
    assert alerts.run_detection(history) == []  # still never raised twice
