"""Bounds on every database call, the watchdog that ends a stalled connection, and one-line
descriptions of database faults.

What bounds what:

* connecting: `connect_timeout` (`MOECOMM_CONNECT_TIMEOUT_S`, default 10 s);
* a peer that vanished: TCP keepalives (probes after 10 s idle, every 5 s, 3 lost: ~25 s) and
  `tcp_user_timeout` (data unacknowledged for 30 s ends the connection);
* a statement that runs too long: the server's `statement_timeout` (`MOECOMM_STATEMENT_TIMEOUT_S`,
  default 600 s);
* a session left open mid-transaction: the server's `idle_in_transaction_session_timeout`
  (`MOECOMM_IDLE_IN_TRANSACTION_TIMEOUT_S`, default 60 s);
* a connection that stops answering although its path still acknowledges packets (a hung proxy
  or load balancer, a frozen server, a half-open NAT entry): none of the above fires, and a
  blocking call would wait for ever while the server session stays idle in transaction holding
  its locks. The watchdog sees every call that has waited on the server for
  `MOECOMM_DB_STALL_S` (default 15 s) and asks the server, over a fresh connection, what that
  session is doing. Working on the statement (active, not waiting for the client): the call goes
  on, up to the statement timeout. Anything else, seen twice 2 s apart, or no answer at all
  within 5 s: the session is terminated on the server (its transaction rolls back, its locks go)
  and the connection's socket is shut down, so the blocked call returns at once with
  `ConnectionStalled`. A stalled call ends within `MOECOMM_DB_STALL_S` + 3 s when the server answers the
  question, + 12 s when it does not.

Connections get all this from `GuardedConnection`, the psycopg2 connection class that
`db.make_engine` hands to SQLAlchemy.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import psycopg2
import psycopg2.errors
import psycopg2.extensions

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5
CONFIRM_AFTER_S = 2.0
TICK_S = 0.5
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
TCP_USER_TIMEOUT_MS = 30_000
# What a session waiting for its client shows in pg_stat_activity.wait_event.
WAITING_FOR_CLIENT = ("ClientRead", "ClientWrite")


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 10 ** 6:
        from moecomm_tasks.errors import ConfigError

        raise ConfigError(f"{name}={text!r}: give a number of seconds above 0")
    return value


@dataclass(frozen=True)
class Timeouts:
    """The bounds on database calls, from the environment: `MOECOMM_CONNECT_TIMEOUT_S` (10),
    `MOECOMM_STATEMENT_TIMEOUT_S` (600), `MOECOMM_IDLE_IN_TRANSACTION_TIMEOUT_S` (60),
    `MOECOMM_DB_STALL_S` (15)."""

    connect_s: float = 10
    statement_s: float = 600
    idle_in_transaction_s: float = 60
    stall_s: float = 15

    @classmethod
    def from_env(cls) -> "Timeouts":
        return cls(
            connect_s=_seconds("MOECOMM_CONNECT_TIMEOUT_S", cls.connect_s),
            statement_s=_seconds("MOECOMM_STATEMENT_TIMEOUT_S", cls.statement_s),
            idle_in_transaction_s=_seconds("MOECOMM_IDLE_IN_TRANSACTION_TIMEOUT_S", cls.idle_in_transaction_s),
            stall_s=_seconds("MOECOMM_DB_STALL_S", cls.stall_s),
        )

    def connect_args(self) -> dict[str, Any]:
        """psycopg2/libpq connection parameters that apply these bounds."""
        return {
            "connect_timeout": max(2, round(self.connect_s)),  # libpq's floor is 2 s
            "options": f"-c statement_timeout={round(self.statement_s * 1000)} "
                       f"-c idle_in_transaction_session_timeout={round(self.idle_in_transaction_s * 1000)}",
            "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
            "connection_factory": GuardedConnection,
            **KEEPALIVE,
        }


class ConnectionStalled(psycopg2.OperationalError):
    """A call whose connection the watchdog cut because the server stopped answering it."""


@dataclass
class _Call:
    """One database call in flight."""

    conn: "GuardedConnection"
    started: float
    next_check: float
    suspect: bool = False


@dataclass(frozen=True)
class _Probe:
    answered: bool
    working: bool
    seen: str


def _session_state(dsn: str, pid: int, terminate: bool, holder: dict) -> None:
    """Ask the server what session `pid` is doing; terminate it when asked to and not working."""
    probe = psycopg2.connect(dsn, connect_timeout=PROBE_TIMEOUT_S, application_name="moecomm watchdog",
                             options=f"-c statement_timeout={PROBE_TIMEOUT_S * 1000}")
    holder["conn"] = probe
    try:
        probe.autocommit = True
        with probe.cursor() as cur:
            cur.execute("SELECT state, wait_event FROM pg_stat_activity WHERE pid = %s", (pid,))
            row = cur.fetchone()
            working = row is not None and row[0] == "active" and row[1] not in WAITING_FOR_CLIENT
            seen = "gone" if row is None else f"{row[0]}" + (f", waiting for {row[1]}" if row[1] else "")
            if terminate and row is not None and not working:
                # Wait (up to 5 s) until it has ended: its transaction is rolled back, its locks gone.
                cur.execute("SELECT pg_terminate_backend(%s, %s)", (pid, PROBE_TIMEOUT_S * 1000))
        holder["probe"] = _Probe(True, working, seen)
    finally:
        probe.close()


def _probe(conn: "GuardedConnection", terminate: bool) -> _Probe:
    """`_session_state` in a thread of its own, bounded: no answer in time is an answer too."""
    holder: dict[str, Any] = {}

    def run() -> None:
        try:
            _session_state(conn.guard_dsn, conn.guard_pid, terminate, holder)
        except Exception as exc:  # noqa: BLE001 (any failure of the probe means: no answer)
            holder["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"

    thread = threading.Thread(target=run, name="moecomm-db-probe", daemon=True)
    thread.start()
    thread.join(PROBE_TIMEOUT_S * 2 + 1)
    if "probe" in holder:
        return holder["probe"]
    if thread.is_alive() and "conn" in holder:
        _shut_down(holder["conn"].fileno())
    return _Probe(False, False, holder.get("error", "no answer"))


def _shut_down(fd: int) -> None:
    """Shut the socket down under a blocked libpq call, which then returns with an error."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        log.debug("shutting down socket %s: %s", fd, exc)


@dataclass
class Watchdog:
    """Watches the calls in flight of every `GuardedConnection` of this process (one thread)."""

    calls: dict[int, _Call] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    keys: Iterator[int] = field(default_factory=itertools.count)
    thread: threading.Thread | None = None

    def enter(self, conn: "GuardedConnection") -> int:
        """Register a call that is about to wait on the server; returns its key for `leave`."""
        now = time.monotonic()
        with self.lock:
            key = next(self.keys)
            self.calls[key] = _Call(conn, now, now + conn.guard_timeouts.stall_s)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="moecomm-db-watchdog", daemon=True)
                self.thread.start()
        return key

    def leave(self, key: int) -> None:
        with self.lock:
            del self.calls[key]

    def _run(self) -> None:
        while True:
            time.sleep(TICK_S)
            now = time.monotonic()
            with self.lock:
                due = [(key, call) for key, call in self.calls.items() if now >= call.next_check]
            for key, call in due:
                self._check(key, call)

    def _check(self, key: int, call: _Call) -> None:
        timeouts = call.conn.guard_timeouts
        probe = _probe(call.conn, terminate=call.suspect)
        with self.lock:
            if key not in self.calls:  # it returned meanwhile
                return
            now = time.monotonic()
            waited = now - call.started
            if probe.working and waited < timeouts.statement_s + timeouts.stall_s:
                call.suspect, call.next_check = False, now + timeouts.stall_s
                return
            if probe.answered and not probe.working and not call.suspect:
                call.suspect, call.next_check = True, now + CONFIRM_AFTER_S
                return
            reason = (f"the database stopped answering: no reply for {waited:.0f} s "
                      f"(MOECOMM_DB_STALL_S={timeouts.stall_s:g}) and the server reports the session "
                      f"{probe.seen}; the connection was closed and its transaction rolled back"
                      if probe.answered else
                      f"the database stopped answering: no reply for {waited:.0f} s "
                      f"(MOECOMM_DB_STALL_S={timeouts.stall_s:g}), and no answer on a new connection either "
                      f"({probe.seen}); the connection was closed")
            log.info("%s", reason)
            call.conn.guard_cut = reason
            # Still registered, so the call is still blocked inside libpq and the descriptor is its socket.
            _shut_down(call.conn.guard_fd)


WATCHDOG = Watchdog()
# A child process starts with a copy of the registry and lock but without the watchdog's thread.
os.register_at_fork(after_in_child=lambda: WATCHDOG.__init__())


def _guarded(conn: "GuardedConnection", method: Any, *args: Any) -> Any:
    """`method(*args)`, a call that waits on the server, under the watchdog's eye; when the
    watchdog cut the connection, its error is `ConnectionStalled`, saying why."""
    key = WATCHDOG.enter(conn)
    try:
        return method(*args)
    except psycopg2.Error as exc:
        if conn.guard_cut:
            raise ConnectionStalled(conn.guard_cut) from exc
        raise
    finally:
        WATCHDOG.leave(key)


class GuardedConnection(psycopg2.extensions.connection):
    """A psycopg2 connection whose calls to the server the watchdog bounds."""

    def __init__(self, dsn: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(dsn, *args, **kwargs)
        self.cursor_factory = GuardedCursor
        # Kept now: while a call blocks, the connection's own methods would wait for its lock.
        self.guard_dsn = dsn
        self.guard_pid = self.info.backend_pid
        self.guard_fd = self.fileno()
        self.guard_timeouts = Timeouts.from_env()
        self.guard_cut: str | None = None

    def commit(self) -> None:
        _guarded(self, super().commit)

    def rollback(self) -> None:
        _guarded(self, super().rollback)


class GuardedCursor(psycopg2.extensions.cursor):
    """A cursor whose calls to the server the watchdog bounds."""

    def execute(self, query: Any, vars: Any = None) -> None:  # noqa: A002 (psycopg2's name)
        _guarded(self.connection, super().execute, query, vars)

    def executemany(self, query: Any, vars_list: Any) -> None:
        _guarded(self.connection, super().executemany, query, vars_list)

    def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> None:
        _guarded(self.connection, super().copy_expert, sql, file, size)

    def callproc(self, procname: str, parameters: Any = None) -> Any:
        return _guarded(self.connection, super().callproc, procname, parameters)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def first_database_error(exc: BaseException) -> psycopg2.Error | None:
    """The watchdog's `ConnectionStalled` behind `exc`, else the earliest psycopg2 error (a failed
    rollback raised while handling the first error must not hide it)."""
    found = [e for e in _chain(exc) if isinstance(e, psycopg2.Error)]
    stalled = [e for e in found if isinstance(e, ConnectionStalled)]
    if stalled:
        return stalled[0]
    orig = getattr(exc, "orig", None)
    if not found and isinstance(orig, psycopg2.Error):
        found = [orig]
    return found[-1] if found else None


def describe(exc: BaseException) -> str:
    """One line that says what failed, for a database error (psycopg2's, or SQLAlchemy's around it)."""
    error = first_database_error(exc)
    if error is None:
        return " ".join(str(exc).split()) or type(exc).__name__
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    if isinstance(error, ConnectionStalled):
        return first
    if isinstance(error, psycopg2.errors.QueryCanceled):
        return f"a statement was canceled by the database ({first}): it ran past MOECOMM_STATEMENT_TIMEOUT_S or was canceled"
    if isinstance(error, psycopg2.errors.IdleInTransactionSessionTimeout) or "idle-in-transaction" in first:
        return f"the database ended the session ({first})"
    if first.startswith("terminating connection") or isinstance(error, psycopg2.errors.AdminShutdown):
        return f"the database server ended the session ({first}): it was shut down, restarted or the session terminated"
    if first.startswith(("connection to server", "could not connect", "could not translate host name")) \
            or "timeout expired" in first:
        return f"cannot connect to the database: {first} (check MOECOMM_DATABASE_URL and that the server runs)"
    if isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return f"lost the connection to the database: {first}"
    return f"the database refused a statement: {first}"
