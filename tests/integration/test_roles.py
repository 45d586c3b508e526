"""The deployment's roles (sql/deploy/init-roles.sh, run as the postgres image runs it: psql as
the superuser), on an embedded PostgreSQL of this module's own: the read-only role reads the
results and can neither alter nor block anything, nor reach another database."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import psycopg2
import pytest

from moecomm_tasks import db, migrate, store
from moecomm_tasks.embedded import EmbeddedPostgres, _bin_dir
from moecomm_tasks.parse import parse_paths

pytestmark = pytest.mark.integration

INIT = Path(__file__).parents[2] / "sql" / "deploy" / "init-roles.sh"
PASSWORDS = {"AIRFLOW_DB_PASSWORD": "airflow-pw", "MOECOMM_WRITER_PASSWORD": "writer-pw",
             "MOECOMM_READER_PASSWORD": "reader-pw"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A fresh server initialised by init-roles.sh, the results schema migrated by the writer and
    one run loaded; yields a function that connects as a role to a database."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("roles-home"))
    port = int(server.start().rsplit(":", 1)[1].split("/")[0])
    superuser = {"host": "127.0.0.1", "port": port, "user": "moecomm", "password": server.password_file.read_text().strip()}
    admin = psycopg2.connect(dbname="postgres", **superuser)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE moecomm")  # the embedded server's own; the script creates the deployment's
    admin.close()
    env = dict(os.environ, PATH=f"{_bin_dir()}:{os.environ['PATH']}", POSTGRES_USER="moecomm", PGHOST="127.0.0.1",
               PGPORT=str(port), PGPASSWORD=superuser["password"], **PASSWORDS)
    result = subprocess.run(["bash", str(INIT)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr

    def connect(role: str, dbname: str = "moecomm") -> psycopg2.extensions.connection:
        password = {"moecomm_writer": "writer-pw", "moecomm_reader": "reader-pw", "airflow": "airflow-pw"}[role]
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=role, password=password, dbname=dbname,
                                connect_timeout=10)
        conn.autocommit = True
        return conn

    writer_url = f"postgresql+psycopg2://moecomm_writer:writer-pw@127.0.0.1:{port}/moecomm"
    engine = db.make_engine(writer_url)
    migrate.upgrade(engine)
    store.load(engine, parse_paths([Path(__file__).parents[1] / "data" / "seed_stdout_2ranks.txt"]), "n1")
    connect.writer_engine = engine
    yield connect
    engine.dispose()
    server.stop()


def refused(conn, sql: str) -> str:
    """The error `sql` (run in a transaction block of its own) ends with."""
    with conn.cursor() as cur:
        with pytest.raises(psycopg2.Error) as raised:
            cur.execute(f"BEGIN; {sql}")
        cur.execute("ROLLBACK")
    return str(raised.value)


def test_the_reader_reads_the_results(deployment):
    reader = deployment("moecomm_reader")
    with reader.cursor() as cur:
        cur.execute("SELECT count(*) FROM measurement_flat")
        assert cur.fetchone() == (12,)
        cur.execute("SELECT count(*) FROM alert_delivery")  # tables added by later migrations too
        assert cur.fetchone() == (0,)
    reader.close()


def test_the_reader_reaches_only_the_results_database(deployment):
    for other in ("airflow", "postgres", "template1"):
        with pytest.raises(psycopg2.OperationalError, match=f'permission denied for database "{other}"'):
            deployment("moecomm_reader", other)
    deployment("airflow", "airflow").close()  # each role still reaches its own
    with pytest.raises(psycopg2.OperationalError, match='permission denied for database "moecomm"'):
        deployment("airflow", "moecomm")


def test_the_reader_cannot_alter_or_create_anything(deployment):
    reader = deployment("moecomm_reader")
    assert "read-only transaction" in refused(reader, "DELETE FROM run")
    with reader.cursor() as cur:  # its default only; its privileges refuse as well
        cur.execute("SET default_transaction_read_only = off")
    assert "permission denied for table run" in refused(reader, "DELETE FROM run")
    assert "permission denied for table measurement" in refused(reader, "UPDATE measurement SET mean_us = NULL")
    assert "permission denied to create temporary tables" in refused(reader, "CREATE TEMP TABLE t (x int)")
    assert "permission denied for schema public" in refused(reader, "CREATE TABLE t (x int)")
    assert "must be owner" in refused(reader, "ALTER TABLE run ADD COLUMN x int")
    reader.close()


def test_the_reader_cannot_block_the_writer(deployment):
    """It cannot take moecomm's migration lock nor lock rows; an advisory lock (what the migration
    lock used to be) and a long read it holds block neither an upgrade nor a load."""
    reader = deployment("moecomm_reader")
    with reader.cursor() as cur:
        cur.execute("SET default_transaction_read_only = off")
    assert "permission denied for table schema_migration" in refused(
        reader, "LOCK TABLE schema_migration IN SHARE ROW EXCLUSIVE MODE")
    assert "permission denied for table job" in refused(reader, "SELECT * FROM job FOR UPDATE")
    with reader.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(x'6D6F65636F6D6D'::bigint)")
        cur.execute("BEGIN")
        cur.execute("SELECT count(*) FROM schema_migration, measurement")  # holds ACCESS SHARE, transaction open
    engine = deployment.writer_engine
    started = time.monotonic()
    assert migrate.upgrade(engine) == []
    store.load(engine, parse_paths([Path(__file__).parents[1] / "data" / "seed_stdout_iter_stats_kernels.txt"]), "n2")
    assert time.monotonic() - started < 10
    with reader.cursor() as cur:
        cur.execute("ROLLBACK")
    writer = deployment("moecomm_writer")
    with writer.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (writer_pid,) = cur.fetchone()
    assert "permission denied to terminate process" in refused(reader, f"SELECT pg_terminate_backend({writer_pid})")
    writer.close()
    reader.close()


def test_the_reader_sessions_are_bounded(deployment):
    reader = deployment("moecomm_reader")
    with reader.cursor() as cur:
        cur.execute("SELECT current_setting('statement_timeout'), current_setting('idle_in_transaction_session_timeout'), "
                    "current_setting('lock_timeout'), rolconnlimit FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == ("1min", "1min", "10s", 20)
        cur.execute("SET statement_timeout = '200ms'")
        with pytest.raises(psycopg2.errors.QueryCanceled):
            cur.execute("SELECT pg_sleep(5)")
    reader.close()
