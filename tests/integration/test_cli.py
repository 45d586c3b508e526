"""The `moecomm` command line against a real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from moecomm_tasks.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_env(database_url, monkeypatch):
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    return database_url


def total_rows(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT (SELECT count(*) FROM run) + (SELECT count(*) FROM job) + (SELECT count(*) FROM measurement)"
        )).scalar()


def test_load_exit_codes(cli_env, engine, data_dir, capsys):
    assert main(["load", str(data_dir / "seed_stdout_2ranks.txt"), str(data_dir / "seed_output_2ranks.json"),
                 "--run-id", "n1", "--run-at", "2026-11-20T02:00:00+00:00"]) == 0
    assert main(["load", str(data_dir / "truncated_stdout.txt"), "--run-id", "n2",
                 "--run-at", "2026-11-21T02:00:00+00:00"]) == 1
    err = capsys.readouterr().err
    assert "dropped: " in err and "truncated JSON object (it never closes)" in err
    before = total_rows(engine)
    assert main(["load", str(data_dir / "garbage.txt"), "--run-id", "n3"]) == 2
    assert main(["load", str(data_dir / "worker_failure_stderr.txt"), "--run-id", "n3"]) == 2
    assert total_rows(engine) == before
    assert main(["load", str(data_dir / "no_such_file.txt"), "--run-id", "n3"]) == 3
    assert main(["load", str(data_dir / "seed_stdout_2ranks.txt"), "--run-id", "n3", "--run-at", "yesterday"]) == 3


def test_runs_trend_and_compare(cli_env, data_dir, capsys):
    main(["load", str(data_dir / "seed_stdout_2ranks.txt"), "--run-id", "n1", "--run-at", "2026-11-20T02:00:00+00:00"])
    main(["load", str(data_dir / "truncated_stdout.txt"), "--run-id", "n2", "--run-at", "2026-11-21T02:00:00+00:00"])
    capsys.readouterr()
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert out.index("n2") < out.index("n1")
    assert main(["trend", "--backend", "nvlink_one_sided", "--size", "640", "--op", "dispatch"]) == 0
    out = capsys.readouterr().out
    assert out.count("211.10") == 2
    assert main(["trend", "--backend", "ALLGATHER"]) == 3
    assert "series match" in capsys.readouterr().err
    assert main(["compare", "n1", "n2"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    # The seed version's knobs: torch.profiler timing, every knob off.
    nvl_768 = [r for r in rows if r[:5] == ["NVLINK_ONE_SIDED", "deepseek_v3", "2", "768", "combine"]]
    assert nvl_768 == [["NVLINK_ONE_SIDED", "deepseek_v3", "2", "768", "combine", "profiler", "289.15", "-", "-"]]
    same = [r for r in rows if r[:5] == ["ALLGATHER", "deepseek_v3", "2", "640", "dispatch"]]
    assert same == [["ALLGATHER", "deepseek_v3", "2", "640", "dispatch", "profiler", "299.88", "299.88", "1.00"]]
    assert main(["compare", "n1", "nope"]) == 3


def test_console_script_is_installed(cli_env):
    script = Path(sys.executable).parent / "moecomm"  # the environment's, activated or not
    result = subprocess.run([str(script), "db", "upgrade"], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "0 migration(s) applied" in result.stdout
