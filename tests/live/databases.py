"""The deployment's PostgreSQL, prepared as the README's native deployment prepares it: a server of
the test's own (the embedded PostgreSQL, in a temporary folder) on which
`sql/deploy/init-roles.sh` (docker-compose.yml's first-start script) creates Airflow's metadata
database and role, and the results database with its writer and read-only roles. Roles are global
to a server, hence a server of its own."""

from __future__ import annotations

import os
import secrets
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from moecomm_tasks.embedded import EmbeddedPostgres
from moecomm_tasks.embedded import _bin_dir as embedded_bin_dir

ROOT = Path(__file__).resolve().parents[2]
INIT_ROLES = ROOT / "sql" / "deploy" / "init-roles.sh"


@dataclass(frozen=True)
class DeploymentDatabases:
    airflow: str  # Airflow's metadata (and Celery's results), as role airflow
    writer: str  # the results, as moecomm_writer (the tasks)
    reader: str  # the results, as moecomm_reader (dashboards)


@contextmanager
def deployment_databases(home: Path) -> Iterator[DeploymentDatabases]:
    server = EmbeddedPostgres(home)
    admin_url = make_url(server.start())
    try:
        # The embedded server makes a results database of its own; init-roles.sh creates it anew.
        admin = sa.create_engine(admin_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text('DROP DATABASE IF EXISTS "moecomm" WITH (FORCE)'))
        admin.dispose()
        passwords = {role: secrets.token_urlsafe(16) for role in ("airflow", "writer", "reader")}
        psql_dir = embedded_bin_dir()  # the embedded server's own psql: no client need be installed
        env = {**os.environ, "PATH": f"{psql_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               "PGHOST": "127.0.0.1", "PGPORT": str(admin_url.port), "PGPASSWORD": admin_url.password,
               "PGDATABASE": "postgres", "POSTGRES_USER": admin_url.username,
               "AIRFLOW_DB_PASSWORD": passwords["airflow"], "MOECOMM_WRITER_PASSWORD": passwords["writer"],
               "MOECOMM_READER_PASSWORD": passwords["reader"]}
        result = subprocess.run(["bash", str(INIT_ROLES)], env=env, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"init-roles.sh failed ({result.returncode}): {result.stderr[-3000:]}")

        def url(user: str, password: str, database: str) -> str:
            return admin_url.set(username=user, password=password, database=database).render_as_string(
                hide_password=False)
        yield DeploymentDatabases(airflow=url("airflow", passwords["airflow"], "airflow"),
                                  writer=url("moecomm_writer", passwords["writer"], "moecomm"),
                                  reader=url("moecomm_reader", passwords["reader"], "moecomm"))
    finally:
        server.stop()
