"""Versioned migrations: the `.sql` files of `sql/migrations/`, applied in order, once each.

Each file `NNNN_intent.sql` runs in its own transaction and is recorded in `schema_migration`
with its checksum; a recorded file that has since changed is an error, not a silent skip. An
advisory lock keeps two processes from migrating at once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from moecomm_tasks.errors import DatabaseError

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
ADVISORY_LOCK_KEY = 0x6D6F65636F6D6D  # "moecomm"


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


def upgrade(engine: Engine) -> list[Migration]:
    """Apply every migration not applied yet; return those applied now."""
    applied_now = []
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        try:
            conn.execute(sa.text(
                "CREATE TABLE IF NOT EXISTS schema_migration ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL, checksum TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ))
            conn.commit()
            done = dict(conn.execute(sa.text("SELECT version, checksum FROM schema_migration")).all())
            conn.commit()
            for migration in migrations():
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise DatabaseError(
                            f"migration {migration.version:04d}_{migration.name} was changed after "
                            "it was applied: add a new migration instead"
                        )
                    continue
                try:
                    conn.exec_driver_sql(migration.sql)
                    conn.execute(
                        sa.text("INSERT INTO schema_migration (version, name, checksum) VALUES (:v, :n, :c)"),
                        {"v": migration.version, "n": migration.name, "c": migration.checksum},
                    )
                    conn.commit()
                except sa.exc.DBAPIError as exc:
                    conn.rollback()
                    raise DatabaseError(
                        f"migration {migration.version:04d}_{migration.name} failed: {exc.orig}"
                    ) from exc
                applied_now.append(migration)
        finally:
            conn.rollback()
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
            conn.commit()
    return applied_now


def is_current(engine: Engine) -> bool:
    """True when every migration has been applied."""
    with engine.connect() as conn:
        exists = conn.execute(sa.text("SELECT to_regclass('schema_migration') IS NOT NULL")).scalar()
        if not exists:
            return False
        done = {v for (v,) in conn.execute(sa.text("SELECT version FROM schema_migration"))}
    return all(m.version in done for m in migrations())
