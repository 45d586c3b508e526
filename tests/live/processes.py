"""The processes a test starts, and proof that none outlives it.

Every process is started in a session of its own, its stdout and stderr in a log file, and with a
marker variable in its environment (`MOECOMM_TEST_PROCESSES=<uuid>`) that its children inherit:
Celery's pool, the task runners, `mpirun` and its ranks, Slurm's step daemons and the ranks they
start. Stopping sends SIGTERM to every session (the service's own shutdown), waits, then kills
whatever still carries the marker; `leftovers()` lists what does, so a test can assert that
nothing is left.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

import psutil

MARKER = "MOECOMM_TEST_PROCESSES"
T = TypeVar("T")


def free_port() -> int:
    """A TCP port free on loopback now (for a service of the test's own)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, probe: Callable[[], T], timeout_s: float, interval_s: float = 0.5,
             alive: Callable[[], None] | None = None) -> T:
    """Call `probe` until it returns something true, and return it; `alive` raises when a process
    the wait depends on has died. Raises TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if alive:
            alive()
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout_s:.0f} s")
        time.sleep(interval_s)


@dataclass
class Started:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Processes:
    """Processes started for one test (or one module); use as a context manager."""

    logs: Path
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: list[Started] = field(default_factory=list)
    stragglers: list[str] = field(default_factory=list)

    def __enter__(self) -> "Processes":
        self.logs.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, MARKER: self.token}

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None) -> Started:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.environment(env), cwd=cwd, start_new_session=True)
        started = Started(name, popen, log)
        self.started.append(started)
        return started

    def check_running(self) -> None:
        """Raise if a started service has exited, with the end of its log."""
        for item in self.started:
            code = item.popen.poll()
            if code is not None:
                raise RuntimeError(f"{item.name} exited with status {code}:\n{item.tail()}")

    def leftovers(self) -> list[psutil.Process]:
        """Every process that carries this group's marker."""
        found = []
        for proc in psutil.process_iter(["pid"]):
            if proc.pid == os.getpid():
                continue
            try:
                if proc.environ().get(MARKER) == self.token:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                continue
        return found

    def stop(self, grace_s: float = 20) -> None:
        """SIGTERM every session, newest first; after `grace_s`, SIGKILL what carries the marker
        (named in `stragglers`)."""
        for item in reversed(self.started):
            if item.popen.poll() is None:
                try:
                    os.killpg(item.popen.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace_s
        for item in reversed(self.started):
            try:
                item.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        remaining = self.leftovers()
        _, remaining = psutil.wait_procs(remaining, timeout=max(0.1, deadline - time.monotonic()))
        for proc in remaining:
            try:
                self.stragglers.append(f"{proc.pid} {' '.join(proc.cmdline())[:200]}")
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(remaining, timeout=10)
        for item in self.started:
            if item.popen.poll() is None:
                item.popen.kill()
            item.popen.wait(timeout=10)
