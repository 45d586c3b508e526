"""Which database to use, and engines for it.

`MOECOMM_DATABASE_URL` (a SQLAlchemy URL, e.g. `postgresql+psycopg2://user:pw@host/db`) selects a
server; without it the embedded PostgreSQL (`moecomm_tasks.embedded`) starts on demand.
Every connection is bounded (`moecomm_tasks.dbguard`): connect timeout, TCP keepalives and user
timeout, statement and idle-in-transaction timeouts, and the watchdog for a connection that stops
answering.

Environment: `MOECOMM_DATABASE_URL`, those of `dbguard.Timeouts` (`MOECOMM_CONNECT_TIMEOUT_S`,
`MOECOMM_STATEMENT_TIMEOUT_S`, `MOECOMM_IDLE_IN_TRANSACTION_TIMEOUT_S`, `MOECOMM_DB_STALL_S`),
and those of `embedded`.
"""

from __future__ import annotations

import logging
import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from moecomm_tasks.dbguard import Timeouts
from moecomm_tasks.embedded import EmbeddedPostgres
from moecomm_tasks.errors import DatabaseError

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10


def database_url() -> str:
    """The configured URL, or the embedded server's (started if need be)."""
    url = os.environ.get("MOECOMM_DATABASE_URL")
    if url:
        return url
    return EmbeddedPostgres.default().start()


def make_engine(url: str | None = None) -> Engine:
    """An engine whose every connection is bounded (`dbguard.Timeouts`, from the environment);
    `url` defaults to `database_url()`."""
    url = url or database_url()
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise DatabaseError(f"MOECOMM_DATABASE_URL is not a SQLAlchemy URL: {exc}") from exc
    if parsed.get_backend_name() != "postgresql":
        raise DatabaseError(f"moecomm needs PostgreSQL, not {parsed.get_backend_name()!r}")
    return sa.create_engine(
        parsed,
        pool_pre_ping=True,
        connect_args={**Timeouts.from_env().connect_args(), "application_name": "moecomm"},
    )


def results_engine() -> Engine:
    """An engine on the configured results database, after checking its schema: the applied
    migrations must be this moecomm's, checksums included (else `SchemaMismatch`); missing ones
    are applied. What the nightly DAG's tasks start with (every command does the same: `cli._engine`)."""
    from moecomm_tasks import migrate

    engine = make_engine()
    for applied in migrate.ensure_current(engine):
        log.info("applied migration %04d_%s", applied.version, applied.name)
    return engine


@contextmanager
def scratch_database(server_url: str, prefix: str = "moecomm_scratch", template: str | None = None) -> Iterator[str]:
    """A new, migrated database on the server of `server_url` (whose user may create databases),
    a copy of the database `template` when given (nobody may be connected to it).

    Yields its URL; drops it afterwards. For tests and benchmarks.
    """
    from moecomm_tasks import migrate

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT",
                             connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
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
