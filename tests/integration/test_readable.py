"""What people read, tried as a new user would (issue 17 item 6), against a real PostgreSQL:
`db status` prints a URL that `psql` itself accepts, ..."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

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
