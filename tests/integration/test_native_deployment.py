"""The native deployment's database step, for real: `sql/deploy/init-roles.sh` (also
docker-compose.yml's first-start script) run against a PostgreSQL server of the test's own, then
the results schema created as the writer role, as `run-service.sh init` does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from live.databases import deployment_databases

pytestmark = pytest.mark.integration


def test_init_roles_gives_each_service_its_database_and_role(tmp_path):
    with deployment_databases(tmp_path / "home") as urls:
        upgrade = subprocess.run([str(Path(sys.executable).parent / "moecomm"), "db", "upgrade"], capture_output=True,
                                 text=True, timeout=120, env={**os.environ, "MOECOMM_DATABASE_URL": urls.writer})
        assert upgrade.returncode == 0, upgrade.stderr[-2000:]
        reader = sa.create_engine(urls.reader)
        with reader.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM measurement_flat")).scalar() == 0
            with pytest.raises(sa.exc.InternalError, match="read-only transaction"):
                conn.execute(sa.text("INSERT INTO run (run_id, run_at) VALUES ('x', now())"))
        reader.dispose()
        airflow = sa.create_engine(urls.airflow)
        with airflow.begin() as conn:
            conn.execute(sa.text("CREATE TABLE probe (id int)"))
            owner = conn.execute(sa.text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'airflow'")).scalar()
        airflow.dispose()
        assert owner == "airflow"
