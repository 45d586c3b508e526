"""One-line descriptions of database faults, and the bounds' configuration (no server needed:
the errors are psycopg2's and SQLAlchemy's own classes, built as the driver builds them)."""

from __future__ import annotations

import psycopg2
import psycopg2.errors
import pytest
import sqlalchemy as sa

from moecomm_tasks.dbguard import ConnectionStalled, Timeouts, describe
from moecomm_tasks.errors import ConfigError

REFUSED = ('connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
           '\tIs the server running on that host and accepting TCP/IP connections?\n')


def raised_while_handling(first: BaseException, second: BaseException) -> BaseException:
    try:
        try:
            raise first
        except BaseException:
            raise second
    except BaseException as exc:
        return exc


def test_a_failed_rollback_does_not_hide_the_first_error():
    first = psycopg2.errors.AdminShutdown("terminating connection due to administrator command\nserver closed ...")
    chained = raised_while_handling(first, psycopg2.InterfaceError("connection already closed"))
    assert describe(chained) == ("the database server ended the session (terminating connection due to administrator "
                                 "command): it was shut down, restarted or the session terminated")


def test_the_watchdog_s_reason_wins_over_the_closed_socket_behind_it():
    closed = psycopg2.OperationalError("server closed the connection unexpectedly\n\tThis probably means ...")
    stalled = raised_while_handling(closed, ConnectionStalled("the database stopped answering: no reply for 17 s"))
    wrapped = raised_while_handling(stalled, sa.exc.OperationalError("SELECT 1", {}, stalled))
    assert describe(wrapped) == "the database stopped answering: no reply for 17 s"


@pytest.mark.parametrize("error, line", [
    (sa.exc.OperationalError("connect", {}, psycopg2.OperationalError(REFUSED)),
     'cannot connect to the database: connection to server at "127.0.0.1", port 1 failed: Connection refused '
     "(check MOECOMM_DATABASE_URL and that the server runs)"),
    (psycopg2.OperationalError("server closed the connection unexpectedly\n\tThis probably means the server ..."),
     "lost the connection to the database: server closed the connection unexpectedly"),
    (psycopg2.errors.QueryCanceled("canceling statement due to statement timeout\n"),
     "a statement was canceled by the database (canceling statement due to statement timeout): it ran past "
     "MOECOMM_STATEMENT_TIMEOUT_S or was canceled"),
    (sa.exc.ProgrammingError("x", {}, psycopg2.errors.InsufficientPrivilege("permission denied for table run\n")),
     "the database refused a statement: permission denied for table run"),
])
def test_each_fault_is_one_line(error, line):
    assert describe(error) == line and "\n" not in line


def test_the_bounds_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MOECOMM_DB_STALL_S", "4.5")
    monkeypatch.setenv("MOECOMM_STATEMENT_TIMEOUT_S", "30")
    timeouts = Timeouts.from_env()
    assert (timeouts.stall_s, timeouts.statement_s, timeouts.connect_s) == (4.5, 30, 10)
    args = timeouts.connect_args()
    assert args["options"] == "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=60000"
    assert args["keepalives"] == 1 and args["tcp_user_timeout"] == 30000 and args["connect_timeout"] == 10
    for bad in ("0", "-1", "soon", "1e9"):
        monkeypatch.setenv("MOECOMM_DB_STALL_S", bad)
        with pytest.raises(ConfigError, match="MOECOMM_DB_STALL_S="):
            Timeouts.from_env()
