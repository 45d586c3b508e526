"""The schema check every command and DAG task makes before touching the data (applied
migrations must be this moecomm's, checksums included), and the migration lock, on a real
PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from moecomm_tasks import db, migrate
from moecomm_tasks.errors import SchemaMismatch

pytestmark = pytest.mark.integration


def moecomm(args: list[str], url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moecomm_tasks.cli", *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, MOECOMM_DATABASE_URL=url))


@pytest.mark.parametrize("tamper, message", [
    ("UPDATE schema_migration SET checksum = repeat('0', 64) WHERE version = 3",
     "moecomm: error: migration 0003_alerts applied to this database differs from this moecomm's (checksum 000000000000"),
    ("INSERT INTO schema_migration (version, name, checksum) VALUES (9999, 'from_the_future', 'x')",
     "moecomm: error: the database has migration 9999_from_the_future, which this moecomm does not know"),
])
def test_load_detect_and_the_dag_refuse_a_database_with_other_migrations(database_url, engine, data_dir, monkeypatch,
                                                                         tamper, message):
    with engine.begin() as conn:
        conn.execute(sa.text(tamper))
    for args in (["load", str(data_dir / "seed_stdout_2ranks.txt"), "--run-id", "n1"], ["detect"]):
        result = moecomm(args, database_url)
        assert result.returncode == 3, (args, result.stderr)
        assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
        assert "nothing was read or written" in result.stderr
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    with pytest.raises(SchemaMismatch):
        db.results_engine()  # what each of the nightly DAG's tasks starts with
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM run")).scalar() == 0


@pytest.fixture
def empty_database(server_url):
    name = f"moecomm_empty_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_concurrent_upgrades_apply_each_migration_once(empty_database):
    procs = [subprocess.Popen([sys.executable, "-m", "moecomm_tasks.cli", "db", "upgrade"],
                              env=dict(os.environ, MOECOMM_DATABASE_URL=empty_database),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    applied = sum(int(out.split(" migration(s) applied")[0]) for out, _err in outputs)
    assert applied == len(migrate.migrations())
    engine = db.make_engine(empty_database)
    try:
        assert migrate.pending(engine) == []
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version FROM schema_migration ORDER BY version")).scalars().all()
        assert versions == [m.version for m in migrate.migrations()]
    finally:
        engine.dispose()


def test_an_upgrade_that_loses_the_race_to_create_the_ledger_goes_on(empty_database):
    # Another upgrade creates the ledger and has not committed yet: this one's CREATE TABLE IF NOT
    # EXISTS waits for it, then fails on the table's row type (PostgreSQL does not make it a no-op);
    # the upgrade takes the ledger as created and applies the migrations. (Had the other committed
    # a moment later, between the two checks PostgreSQL makes, the error is "type already exists":
    # 42710, the case test_concurrent_upgrades_apply_each_migration_once once met as a plain user;
    # no lock can hold a CREATE between those checks, so that case has no test of its own.)
    engine = db.make_engine(empty_database)
    other = engine.connect()
    try:
        other.begin()
        other.execute(sa.text("CREATE TABLE schema_migration (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                              "checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"))
        with ThreadPoolExecutor(1) as pool:
            upgrading = pool.submit(migrate.upgrade, engine)
            time.sleep(1.0)  # the upgrade is now waiting on the uncommitted table
            assert not upgrading.done()
            other.commit()
            applied = upgrading.result(timeout=120)
        assert [m.version for m in applied] == [m.version for m in migrate.migrations()]
    finally:
        other.close()
        engine.dispose()


def test_a_name_taken_by_something_else_is_not_taken_for_the_ledger(empty_database):
    engine = db.make_engine(empty_database)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TYPE schema_migration AS ENUM ('x')"))
        with pytest.raises(sa.exc.DBAPIError, match="already exists"):
            migrate.upgrade(engine)
    finally:
        engine.dispose()
