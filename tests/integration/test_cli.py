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
    assert nvl_768 == [["NVLINK_ONE_SIDED", "deepseek_v3", "2", "768", "combine", "profiler", "289.15", "±1.15",
                        "-", "-"]]
    same = [r for r in rows if r[:5] == ["ALLGATHER", "deepseek_v3", "2", "640", "dispatch"]]
    # Each value with its spread (half the two ranks' range); the same night twice is within it: no mark.
    assert same == [["ALLGATHER", "deepseek_v3", "2", "640", "dispatch", "profiler", "299.88", "±1.62", "299.88",
                     "±1.62", "1.00"]]
    assert main(["compare", "n1", "nope"]) == 3


def test_console_script_is_installed(cli_env):
    script = Path(sys.executable).parent / "moecomm"  # the environment's, activated or not
    result = subprocess.run([str(script), "db", "upgrade"], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "0 migration(s) applied" in result.stdout


def test_runs_delete_needs_yes_and_runs_show_exclusions(cli_env, engine, data_dir, capsys):
    main(["load", str(data_dir / "seed_stdout_2ranks.txt"), "--run-id", "n1", "--run-at", "2026-11-20T02:00:00+00:00"])
    main(["load", str(data_dir / "truncated_stdout.txt"), "--run-id", "n2", "--run-at", "2026-11-21T02:00:00+00:00"])
    assert main(["runs", "exclude", "n2", "--reason", "node 3 was throttling"]) == 0
    capsys.readouterr()
    assert main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "node 3 was throttling" in out.splitlines()[[i for i, line in enumerate(out.splitlines()) if "n2" in line][0]]
    before = total_rows(engine)
    assert main(["runs", "delete", "n1"]) == 3
    assert "1 job(s), 12 measurement(s)" in capsys.readouterr().out and total_rows(engine) == before
    assert main(["runs", "delete", "n1", "--yes"]) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT run_id FROM run")).scalars().all() == ["n2"]
        assert conn.execute(sa.text("SELECT count(*) FROM measurement_flat WHERE run_id = 'n1'")).scalar() == 0
    assert main(["runs", "delete", "n1", "--yes"]) == 3
    assert "no run 'n1'" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["runs", "--limit", "-1"], ["table", "--last", "-1"], ["runs", "--limit", "x"]])
def test_negative_limits_are_usage_errors(cli_env, argv, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2 and "expected" in capsys.readouterr().err


def test_load_refuses_folders_and_bad_run_ids(cli_env, engine, data_dir, capsys):
    assert main(["load", str(data_dir), "--run-id", "n1"]) == 3
    assert "a folder, not a file" in capsys.readouterr().err
    for run_id in ("a\nb", "x" * 5000, " "):
        assert main(["load", str(data_dir / "seed_stdout_2ranks.txt"), "--run-id", run_id]) == 3
        assert "run id" in capsys.readouterr().err
    assert total_rows(engine) == 0


def test_inputs_that_once_crashed_load(cli_env, engine, data_dir, tmp_path, capsys):
    """Each of issue 14's crashing inputs: exit 1 (the rest loaded) or 2, no traceback, only valid rows."""
    seed = (data_dir / "seed_stdout_2ranks.txt").read_text()
    cases = {
        "nesting": seed.replace('"rank0": 301.5', '"rank0": ' + "[" * 2000 + "]" * 2000, 1),
        "digits": seed.replace('"rank0": 301.5', '"rank0": 1' + "0" * 5000, 1),
        "overflow": seed.replace('"rank0": 301.5', '"rank0": 1' + "0" * 400, 1),
        "infinite-ep": seed.replace('"ep_size": 2,', '"ep_size": Infinity,'),
        "stats-without-mean": seed.replace('"rank0": 301.5', '"rank0": {"mean": null, "median": 1.0}', 1),
        "surrogate-name": seed.replace('"backend": "ALLGATHER"', '"backend": "\\ud800"', 1),
        "surrogate-text": seed.replace("factory returned None.", "factory \udc80 None."),
        "huge-size": seed.replace('"local_batch_size": 640,', '"local_batch_size": 2147483648,', 1),
        "dtype-number": seed.replace('"backend": "ALLGATHER",', '"backend": "ALLGATHER", "payload_dtype": 5,', 1),
        "minus-zero": seed.replace('"rank0": 301.5', '"rank0": -0.0', 1),
        "ep-fifty-million": seed.replace('"ep_size": 2,', '"ep_size": 50000000,'),
    }
    for name, text in cases.items():
        path = tmp_path / f"{name}.txt"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        code = main(["load", str(path), "--run-id", name])
        assert code in (0, 1, 2), (name, code, capsys.readouterr().err)
        assert "Traceback" not in capsys.readouterr().err
    with engine.connect() as conn:
        loaded = dict(conn.execute(sa.text("SELECT run_id, count(*) FROM measurement_flat GROUP BY run_id")).all())
        bad = conn.execute(sa.text(
            "SELECT count(*) FROM measurement_flat WHERE NOT (mean_us > 0 AND mean_us < 'Infinity')")).scalar()
        reason = conn.execute(sa.text("SELECT s.reason FROM skip s JOIN job j USING (job_pk) JOIN run r USING (run_pk) "
                                      "WHERE r.run_id = 'surrogate-text' AND s.backend = 'DEEPEP'")).scalar()
    # A lone surrogate written to a file is three bytes that are not UTF-8: each reads as U+FFFD.
    assert bad == 0 and reason == "factory \ufffd\ufffd\ufffd None."
    # The object with the bad value is dropped (2 of 3 objects, 8 of 12 rank values kept); a bad header loses its results.
    assert loaded["digits"] == loaded["minus-zero"] == loaded["huge-size"] == 8
    assert "infinite-ep" not in loaded and "ep-fifty-million" not in loaded
    assert loaded["surrogate-text"] == 12


def test_garbage_keeps_a_count_of_what_it_did_not_list(cli_env, engine, data_dir, tmp_path, capsys):
    path = tmp_path / "noisy.txt"
    path.write_text((data_dir / "seed_stdout_2ranks.txt").read_text() + "{ broken\n" * 300)
    assert main(["load", str(path), "--run-id", "noisy"]) == 1
    assert "200 more item(s)" in capsys.readouterr().err
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT state, failures, dropped_omitted FROM job_summary")).one()
    assert tuple(row) == ("partial", 100, 200)
