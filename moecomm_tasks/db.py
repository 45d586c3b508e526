"""Which database to use, and engines for it.

`MOECOMM_DATABASE_URL` (a SQLAlchemy URL, e.g. `postgresql+psycopg2://user:pw@host/db`) selects a
server; without it the embedded PostgreSQL (`moecomm_tasks.embedded`) starts on demand.
`MOECOMM_STATEMENT_TIMEOUT_S` bounds every statement (default 600 s); connecting times out after
10 s.

Environment: `MOECOMM_DATABASE_URL`, `MOECOMM_STATEMENT_TIMEOUT_S`, and those of `embedded`.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from moecomm_tasks.embedded import EmbeddedPostgres
from moecomm_tasks.errors import DatabaseError

CONNECT_TIMEOUT_S = 10


def database_url() -> str:
    """The configured URL, or the embedded server's (started if need be)."""
    url = os.environ.get("MOECOMM_DATABASE_URL")
    if url:
        return url
    return EmbeddedPostgres.default().start()


def make_engine(url: str | None = None) -> Engine:
    """An engine with connect and statement timeouts; `url` defaults to `database_url()`."""
    url = url or database_url()
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise DatabaseError(f"MOECOMM_DATABASE_URL is not a SQLAlchemy URL: {exc}") from exc
    if parsed.get_backend_name() != "postgresql":
        raise DatabaseError(f"moecomm needs PostgreSQL, not {parsed.get_backend_name()!r}")
    timeout_ms = int(float(os.environ.get("MOECOMM_STATEMENT_TIMEOUT_S", "600")) * 1000)
    return sa.create_engine(
        parsed,
        pool_pre_ping=True,
        connect_args={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": f"-c statement_timeout={timeout_ms}",
            "application_name": "moecomm",
        },
    )


@contextmanager
def scratch_database(server_url: str, prefix: str = "moecomm_scratch") -> Iterator[str]:
    """A new, migrated database on the server of `server_url` (whose user may create databases).

    Yields its URL; drops it afterwards. For tests and benchmarks.
    """
    from moecomm_tasks import migrate

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT",
                             connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        engine = make_engine(url)
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
