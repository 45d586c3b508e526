"""What people read, tried as a new user would (issue 17 item 6), against a real PostgreSQL:
`db status` prints a URL that `psql` itself accepts, ..."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import sqlalchemy as sa

from moecomm_tasks.embedded import EmbeddedPostgres

pytestmark = pytest.mark.integration


def moecomm(args: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "MOECOMM_DATABASE_URL"}
    return subprocess.run([sys.executable, "-m", "moecomm_tasks.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**environment, **env})


def psql_select_1(url: str) -> str:
    psql = shutil.which("psql")
    assert psql, "psql is needed (apt-get install postgresql-client)"
    done = subprocess.run([psql, url, "-XAtc", "select 1"], capture_output=True, text=True, timeout=30,
                          env={k: v for k, v in os.environ.items() if not k.startswith("PG")})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_db_status_prints_a_url_psql_accepts_for_the_embedded_server(tmp_path):
    home = tmp_path / "home"
    server = EmbeddedPostgres(home)
    server.start()
    try:
        status = moecomm(["db", "status"], MOECOMM_HOME=str(home))
        assert status.returncode == 0, status.stderr
        line = next(line for line in status.stdout.splitlines() if line.startswith("psql "))
        url = line.removeprefix("psql ")
        assert url.startswith("postgresql://moecomm:"), url
        assert psql_select_1(url) == "1"
    finally:
        server.stop()
    stopped = moecomm(["db", "status"], MOECOMM_HOME=str(home))
    assert "not running" in stopped.stdout and "psql" not in stopped.stdout


def test_db_status_prints_the_configured_database_as_a_libpq_url(database_url):
    status = moecomm(["db", "status"], MOECOMM_DATABASE_URL=database_url)
    assert status.returncode == 0, status.stderr
    url = status.stdout.strip().removeprefix("MOECOMM_DATABASE_URL: ")
    assert url.startswith("postgresql://") and "+psycopg2" not in url
    assert psql_select_1(url) == "1"


# ---- table and samples: each series' own last nights ----------------------------------------

from moecomm_tasks.cli import main  # noqa: E402

SEED = "seed_stdout_2ranks.txt"  # ALLGATHER and NVLINK_ONE_SIDED, deepseek_v3, EP 2, 640 and 768 tokens


def header_line(out: str, first: str = "backend") -> list[str]:
    return next(line.split() for line in out.splitlines() if line.split()[:1] == [first])


def test_table_takes_each_series_own_last_nights_after_other_loads(database_url, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    for day in (1, 2, 3):
        assert main(["load", str(data_dir / SEED), "--run-id", f"nightly-seed-2026-11-0{day}",
                     "--run-at", f"2026-11-0{day}T02:00:00+00:00"]) == 0
    assert main(["samples"]) == 0  # six later runs (2026-11-24) of other series
    capsys.readouterr()
    # The last 3 runs of the database measured no ALLGATHER; ALLGATHER's own last 3 nights did.
    assert main(["table", "--backend", "ALLGATHER", "--last", "3"]) == 0
    out = capsys.readouterr().out
    assert header_line(out)[-3:] == ["11-01", "11-02", "11-03"], out
    assert "runs nightly-seed-…" in out  # what the headers leave out of the run ids
    rows = [line.split() for line in out.splitlines() if line.split()[:1] == ["ALLGATHER"]]
    assert len(rows) == 2 and all(len(r) == 6 + 3 * 2 for r in rows), rows  # 3 nights: value and ±spread each
    # The same output three nights running: no night moved beyond its spread.
    assert "*" not in "".join(" ".join(r) for r in rows)


def test_samples_shows_the_sample_runs_whatever_was_loaded_after_them(database_url, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    assert main(["load", str(data_dir / SEED), "--run-id", "later", "--run-at", "2026-12-01T02:00:00+00:00"]) == 0
    assert main(["samples"]) == 0
    out = capsys.readouterr().out
    assert header_line(out)[-6:] == [f"h100-ep1-{i}" for i in range(1, 7)], out
    assert "later" not in out.split("last 6 night(s)")[1]
    # Real code changes between these runs: some cells are marked as beyond the noise, not all.
    rows = [line for line in out.splitlines() if line.lstrip().startswith("TORCH_")]
    assert len(rows) == 48 and any("*" in r for r in rows) and not all("*" in r for r in rows)


def test_a_change_beyond_the_spread_is_marked(engine, database_url, data_dir, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    slower = tmp_path / "slower.txt"
    # Every time 30% higher: further than both nights' spreads (half the 2 ranks' range, ~1%).
    text = (data_dir / SEED).read_text()

    slower.write_text(re.sub(r'("rank\d+": )([0-9.]+)', lambda m: f"{m[1]}{float(m[2]) * 1.3:.3f}", text))
    assert main(["load", str(data_dir / SEED), "--run-id", "before", "--run-at", "2026-11-01T02:00:00+00:00"]) == 0
    assert main(["load", str(slower), "--run-id", "after", "--run-at", "2026-11-02T02:00:00+00:00"]) == 0
    capsys.readouterr()
    assert main(["table", "--backend", "ALLGATHER", "--size", "640"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["ALLGATHER"]]
    assert rows and all(r[-1].endswith("*") and not r[-3].endswith("*") for r in rows), rows
    assert main(["compare", "before", "after"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["ALLGATHER"]]
    assert rows and all(r[-1] == "0.77*" for r in rows), rows


# ---- detect: the series still too short to test ----------------------------------------------

def test_detect_says_how_many_series_are_too_short_and_how_many_nights_they_need(database_url, data_dir,
                                                                                 monkeypatch, capsys):
    from moecomm_tasks.detect import Params, detect, nights_before_testing

    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    needed = nights_before_testing()
    # What the count stands for: a step in the last two nights of a series of `needed` nights is
    # found (with a hair trigger); the same with one night less is not tested at all.
    eager = Params(min_change=0.0, threshold=0.1, short_extra=0.0, gate=1e9, min_night=0.0)
    steady = [100.0 + 0.1 * (i % 3) for i in range(needed)]
    assert detect(steady[:needed - 2] + [101.0, 101.0], params=eager) != []
    assert detect(steady[:needed - 3] + [101.0, 101.0], params=eager) == []
    for day in range(1, 4):
        assert main(["load", str(data_dir / SEED), "--run-id", f"n{day}",
                     "--run-at", f"2026-11-0{day}T02:00:00+00:00"]) == 0
    # Some of the series also ran on a fourth night (a truncated output: partly loaded, exit 1).
    assert main(["load", str(data_dir / "truncated_stdout.txt"), "--run-id", "n4",
                 "--run-at", "2026-11-04T02:00:00+00:00"]) == 1
    capsys.readouterr()
    assert main(["detect", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "[]"  # the JSON stays JSON: the count goes to stderr
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        counts = dict(conn.execute(sa.text(
            "SELECT nights, count(*) FROM (SELECT count(*) AS nights FROM nightly_series "
            "GROUP BY backend, local_batch_size, op) s GROUP BY nights")).all())
    engine.dispose()
    assert set(counts) == {3, 4}, counts
    expected = ", ".join(f"{counts[n]} need {needed - n} more" for n in (4, 3))
    assert (f"{sum(counts.values())} series are too short to test yet (a series is tested once it has "
            f"{needed} nights): {expected} night(s)") in " ".join(captured.err.split()), captured.err


def test_run_ids_that_look_like_markup_are_shown_as_they_are(database_url, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    assert main(["load", str(data_dir / SEED), "--run-id", "night[/x]-[bold]1", "--run-at",
                 "2026-11-01T02:00:00+00:00"]) == 0
    capsys.readouterr()
    for command in (["runs"], ["table", "--backend", "ALLGATHER"], ["compare", "night[/x]-[bold]1", "night[/x]-[bold]1"]):
        assert main(command) == 0, command
        assert "night[/x]-[bold]1" in capsys.readouterr().out, command
