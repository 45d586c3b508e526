"""Versioned migrations: the `.sql` files of `sql/migrations/`, applied in order, once each.

Each file `NNNN_intent.sql` runs in its own transaction and is recorded in `schema_migration`
with its checksum. A recorded file that has since changed, or a recorded version this moecomm
does not know, is an error (`SchemaMismatch`), not a silent skip: `ensure_current`, which every
command and the nightly DAG's tasks call before they touch the data, refuses such a database.

Two processes never migrate at once: each migration's transaction first takes
`LOCK TABLE schema_migration IN SHARE ROW EXCLUSIVE MODE` and reads the ledger again under it.
That lock needs a write privilege on the ledger, which the read-only role lacks (unlike an
advisory lock, which any role can take, and so hold to block every upgrade). A migration waits
at most `LOCK_TIMEOUT_S` for the locks it needs (e.g. behind a long read), then fails and can
be run again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from moecomm_tasks.errors import DatabaseError, SchemaMismatch

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
LOCK_TIMEOUT_S = 60
CONCURRENTLY_CREATED = {"23505", "42710", "42P07"}  # SQLSTATEs of a CREATE ... IF NOT EXISTS that lost a race


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def sql_dir() -> Path:
    """`sql/` of the checkout (editable install) or the copy inside the installed package."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise DatabaseError(f"no sql/migrations folder next to {here}: the installation is incomplete")


def migrations() -> list[Migration]:
    found = []
    for path in sorted((sql_dir() / "migrations").iterdir()):
        match = MIGRATION_NAME.match(path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path.read_text()))
    return found


def _ledger(conn: sa.Connection) -> dict[int, tuple[str, str]]:
    """The applied migrations: version -> (name, checksum)."""
    return {v: (n, c) for v, n, c in conn.execute(sa.text("SELECT version, name, checksum FROM schema_migration"))}


def _verify(applied: dict[int, tuple[str, str]], known: list[Migration]) -> list[Migration]:
    """The migrations still to apply; raises `SchemaMismatch` when the applied ones are not `known`."""
    by_version = {m.version: m for m in known}
    for version, (name, checksum) in sorted(applied.items()):
        migration = by_version.get(version)
        if migration is None:
            raise SchemaMismatch(
                f"the database has migration {version:04d}_{name}, which this moecomm does not know: it was "
                "migrated by a newer moecomm; upgrade moecomm (nothing was read or written)")
        if checksum != migration.checksum:
            raise SchemaMismatch(
                f"migration {version:04d}_{migration.name} applied to this database differs from this moecomm's "
                f"(checksum {checksum[:12]} there, {migration.checksum[:12]} here): the file or the ledger was "
                "changed after it was applied; restore it and add a new migration instead (nothing was read or "
                "written)")
    return [m for m in known if m.version not in applied]


def pending(engine: Engine) -> list[Migration]:
    """The migrations not applied yet; raises `SchemaMismatch` (see `_verify`)."""
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('schema_migration')")).scalar() is None:
            return migrations()
        return _verify(_ledger(conn), migrations())


def _ledger_exists(engine: Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT to_regclass('schema_migration')")).scalar() is not None


def _create_ledger(engine: Engine) -> None:
    if _ledger_exists(engine):
        return
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(
                "CREATE TABLE IF NOT EXISTS schema_migration ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ))
    except sa.exc.DBAPIError as exc:
        # Created by a concurrent upgrade at the same moment: PostgreSQL then reports the table's
        # row type as a duplicate key (23505) or as an existing type (42710), or the table (42P07),
        # depending on when the other one committed. Anything else, or no ledger after all, fails.
        if getattr(exc.orig, "pgcode", None) not in CONCURRENTLY_CREATED or not _ledger_exists(engine):
            raise


def upgrade(engine: Engine) -> list[Migration]:
    """Apply every migration not applied yet; return those applied now.

    Raises `SchemaMismatch` when the applied ones are not this moecomm's, `DatabaseError` when a
    migration fails (it is rolled back; those before it stay applied)."""
    known = migrations()
    _create_ledger(engine)
    applied_now = []
    with engine.connect() as conn:
        for migration in known:
            with conn.begin():
                conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'"))
                conn.execute(sa.text("LOCK TABLE schema_migration IN SHARE ROW EXCLUSIVE MODE"))
                if migration not in _verify(_ledger(conn), known):
                    continue
                try:
                    conn.exec_driver_sql(migration.sql)
                except sa.exc.DBAPIError as exc:
                    raise DatabaseError(
                        f"migration {migration.version:04d}_{migration.name} failed (rolled back): "
                        f"{' '.join(str(exc.orig).split())}"
                    ) from exc
                conn.execute(
                    sa.text("INSERT INTO schema_migration (version, name, checksum) VALUES (:v, :n, :c)"),
                    {"v": migration.version, "n": migration.name, "c": migration.checksum},
                )
            applied_now.append(migration)
    return applied_now


def ensure_current(engine: Engine) -> list[Migration]:
    """Refuse a database whose applied migrations are not this moecomm's (`SchemaMismatch`);
    apply the missing ones. Returns those applied now."""
    return upgrade(engine) if pending(engine) else []
