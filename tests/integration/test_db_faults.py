"""Database faults against real servers: a connection stalled mid-load and mid-detect by a real
TCP proxy (tests/faults.py), one that stops answering altogether, a backend terminated mid-load,
a PostgreSQL stopped mid-load (an embedded server of this module's own: the machine's is never
stopped), and a database that is not there. Each `moecomm` command must exit 3 with one line
that says what failed, within its time bound, and lose or duplicate nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psycopg2
import pytest
import sqlalchemy as sa
from faults import StallingProxy
from sqlalchemy.engine import make_url

from moecomm_tasks import db, migrate
from moecomm_tasks.cli import main
from moecomm_tasks.embedded import EmbeddedPostgres

pytestmark = pytest.mark.integration

SEED = "seed_stdout_2ranks.txt"  # one job: 12 rows in measurement_flat
# What libpq reports first when the server ends a session: its FATAL message when it read it,
# else the closed socket (e.g. mid-COPY).
SESSION_ENDED = ("the database server ended the session (terminating connection due to administrator command)",
                 "lost the connection to the database: server closed the connection unexpectedly")


def moecomm(args: list[str], url: str, timeout: float = 120, **env: str) -> tuple[int, str, str, float]:
    """Run the `moecomm` command line in a process of its own; (exit code, stdout, stderr, seconds)."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "moecomm_tasks.cli", *args], capture_output=True, text=True,
                            timeout=timeout, env=dict(os.environ, MOECOMM_DATABASE_URL=url, **env))
    return result.returncode, result.stdout, result.stderr, time.monotonic() - started


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("moecomm: error: "), stderr
    return lines[0]


def via_proxy(url: str, proxy: StallingProxy) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def sessions_in_transaction(engine) -> list:
    """Other sessions on this database left idle in transaction (holding whatever they locked)."""
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT pid, state, left(query, 60) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'")).all()


def wait_until(predicate, timeout: float = 30, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout} s")


@pytest.fixture
def proxy(database_url):
    target = make_url(database_url)
    stalling = StallingProxy((target.host or "127.0.0.1", target.port or 5432))
    yield stalling
    stalling.close()


def test_a_connection_stalled_mid_load_ends_within_60_s_and_leaves_nothing(database_url, engine, proxy, data_dir):
    """Default settings: the proxy swallows the load's COPY with the transaction open on the server."""
    proxy.stall_on(b"COPY measurement")
    code, _out, err, seconds = moecomm(["load", str(data_dir / SEED), "--run-id", "n1"], via_proxy(database_url, proxy))
    assert proxy.stalled.is_set()
    assert code == 3 and seconds < 60, (code, seconds, err)
    line = one_line(err)
    assert "run n1 was not loaded: the database stopped answering" in line
    assert "the server reports the session idle in transaction" in line and "run it again" in line
    assert sessions_in_transaction(engine) == []
    assert scalar(engine, "SELECT count(*) FROM run") == 0
    # Nothing lost: the same input loads whole once the path answers again.
    code, out, err, _ = moecomm(["load", str(data_dir / SEED), "--run-id", "n1"], via_proxy(database_url, proxy))
    assert code == 0, err
    assert scalar(engine, "SELECT count(*) FROM measurement_flat WHERE run_id = 'n1'") == 12


def test_a_connection_stalled_mid_detect_ends_and_raises_the_alert_later(database_url, engine, proxy, weeks_of_nights):
    proxy.stall_on(b"INSERT INTO alert")
    code, _out, err, seconds = moecomm(["detect"], via_proxy(database_url, proxy), MOECOMM_DB_STALL_S="2")
    assert proxy.stalled.is_set()
    assert code == 3 and seconds < 30, (code, seconds, err)
    assert "the database stopped answering: no reply for" in one_line(err)
    assert sessions_in_transaction(engine) == []
    assert scalar(engine, "SELECT count(*) FROM alert") == 0
    code, out, err, _ = moecomm(["detect", "--format", "json"], via_proxy(database_url, proxy))
    assert code == 0, err
    assert '"op": "combine"' in out and scalar(engine, "SELECT count(*) FROM alert") == 1


def test_a_server_that_stops_answering_altogether(database_url, engine, proxy, data_dir):
    """Every connection, new ones included, is swallowed: the watchdog cannot ask the server, so
    it cuts the call; the server ends the abandoned session by its idle-in-transaction timeout."""
    proxy.stall_on(b"COPY measurement")
    url = via_proxy(database_url, proxy)
    command = subprocess.Popen([sys.executable, "-m", "moecomm_tasks.cli", "load", str(data_dir / SEED), "--run-id", "n1"],
                               env=dict(os.environ, MOECOMM_DATABASE_URL=url, MOECOMM_DB_STALL_S="2",
                                        MOECOMM_IDLE_IN_TRANSACTION_TIMEOUT_S="2"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    wait_until(proxy.stalled.is_set, what="the stall")
    proxy.black_hole()
    _out, err = command.communicate(timeout=60)
    assert command.returncode == 3 and time.monotonic() - started < 30, err
    assert "and no answer on a new connection either" in one_line(err)
    wait_until(lambda: not sessions_in_transaction(engine), timeout=10, what="the server ending the session")
    assert scalar(engine, "SELECT count(*) FROM run") == 0


@pytest.fixture
def blocked_load(database_url, engine, data_dir):
    """Start `moecomm load` and hold it mid-transaction (run and job written, COPY waiting for a
    lock this fixture holds); yields (the command, its backend's pid, the lock's connection)."""
    holder = psycopg2.connect(make_url(database_url).render_as_string(hide_password=False).replace(
        "postgresql+psycopg2", "postgresql"))
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE measurement IN EXCLUSIVE MODE")
    command = subprocess.Popen([sys.executable, "-m", "moecomm_tasks.cli", "load", str(data_dir / SEED), "--run-id", "n1"],
                               env=dict(os.environ, MOECOMM_DATABASE_URL=database_url),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = wait_until(lambda: scalar(engine, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                            "AND application_name = 'moecomm' AND wait_event_type = 'Lock'"),
                     what="the load waiting mid-transaction")
    try:
        yield command, pid, holder
    finally:
        if command.poll() is None:
            command.kill()
        holder.close()


def test_a_backend_terminated_mid_load(engine, blocked_load, database_url, data_dir):
    command, pid, holder = blocked_load
    with holder.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))
    holder.rollback()
    _out, err = command.communicate(timeout=30)
    assert command.returncode == 3
    line = one_line(err)
    assert "run n1 was not loaded: " in line and any(first in line for first in SESSION_ENDED)
    assert "connection already closed" not in line  # the failed rollback does not hide the first error
    assert scalar(engine, "SELECT count(*) FROM run") == 0 and sessions_in_transaction(engine) == []
    assert moecomm(["load", str(data_dir / SEED), "--run-id", "n1"], database_url)[0] == 0
    assert scalar(engine, "SELECT count(*) FROM measurement_flat") == 12


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """An embedded PostgreSQL of this module's own, which a test may stop."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("stoppable-home"))
    migrate.upgrade(db.make_engine(server.start()))
    yield server
    server.stop()


def test_a_server_stopped_mid_load_then_unreachable(own_server, data_dir):
    url = own_server.start()
    engine = db.make_engine(url)
    holder = psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql"))
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE measurement IN EXCLUSIVE MODE")
        command = subprocess.Popen(
            [sys.executable, "-m", "moecomm_tasks.cli", "load", str(data_dir / SEED), "--run-id", "n1"],
            env=dict(os.environ, MOECOMM_DATABASE_URL=url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: scalar(engine, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'moecomm' "
                                          "AND wait_event_type = 'Lock'"), what="the load waiting mid-transaction")
        engine.dispose()
        own_server.stop()
        _out, err = command.communicate(timeout=30)
        assert command.returncode == 3
        line = one_line(err)
        assert "run n1 was not loaded: " in line and any(first in line for first in SESSION_ENDED)
        # The server is down: a command says it cannot connect, at once (every command: below).
        code, _out, err, seconds = moecomm(["load", str(data_dir / SEED), "--run-id", "n1"], url)
        assert code == 3 and seconds < 20, err
        assert "cannot connect to the database: connection to server at" in one_line(err)
        assert "Connection refused" in err and "(check MOECOMM_DATABASE_URL" in err
    finally:
        holder.close()
        url = own_server.start()  # back up, on a new port
    # Nothing of the interrupted load was kept; it loads whole now.
    engine = db.make_engine(url)
    try:
        assert scalar(engine, "SELECT count(*) FROM run") == 0
        assert moecomm(["load", str(data_dir / SEED), "--run-id", "n1"], url)[0] == 0
        assert scalar(engine, "SELECT count(*) FROM measurement_flat") == 12
    finally:
        engine.dispose()


def test_every_command_reports_an_unreachable_database_in_one_line(monkeypatch, capsys, data_dir):
    monkeypatch.setenv("MOECOMM_DATABASE_URL", "postgresql+psycopg2://moecomm@127.0.0.1:1/moecomm")
    commands = [["runs"], ["trend", "--backend", "X"], ["table"], ["compare", "a", "b"], ["detect"],
                ["detect", "--notify", "n1"], ["alerts", "list"], ["alerts", "deliveries"], ["alerts", "ack", "1"],
                ["runs", "exclude", "r", "--reason", "x"], ["report", "--out", "/nonexistent/x"], ["otava-config"],
                ["db", "upgrade"], ["load", str(data_dir / SEED), "--run-id", "n1"]]
    for args in commands:
        assert main(args) == 3, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, (args, err)
        assert err.startswith("moecomm: error: cannot connect to the database: connection to server at \"127.0.0.1\""), err


def test_a_long_statement_the_server_is_working_on_is_not_cut(database_url, monkeypatch):
    """The watchdog asks the server before it cuts: a statement that runs (here 2.5 s, with calls
    checked after 1 s) goes on; the server's statement timeout is its bound."""
    monkeypatch.setenv("MOECOMM_DB_STALL_S", "1")
    monkeypatch.setenv("MOECOMM_STATEMENT_TIMEOUT_S", "3")
    engine = db.make_engine(database_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1 FROM pg_sleep(2.5)")).scalar() == 1
            with pytest.raises(sa.exc.OperationalError, match="canceling statement due to statement timeout"):
                conn.execute(sa.text("SELECT pg_sleep(10)"))
    finally:
        engine.dispose()
