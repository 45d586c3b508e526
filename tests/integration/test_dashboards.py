"""Every SQL query of the Grafana dashboards (panels, variables, annotations) runs against a
PostgreSQL holding a few weeks of nights and returns rows, after Grafana's macros and the
dashboard variables are substituted as Grafana would."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from moecomm_tasks import alerts

pytestmark = pytest.mark.integration
GRAFANA = Path(__file__).parents[2] / "sql" / "deploy" / "grafana"
BOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# The series that regresses in the fixture's history (so its alert annotation has a row).
VARIABLES = {"backend": "TORCH_ALLTOALL", "profile": "deepseek_v3", "ep_size": "2", "size": "1024", "op": "combine",
             "quant": "FP8_BLOCK_SCALES", "gpu": "NVIDIA H100 80GB HBM3", "timing_method": "cuda_events",
             "cuda_graph": "false", "pdl": "false", "perfect_router": "false", "payload_in_workspace": "false",
             "low_precision_combine": "false"}
FROM, TO = "2026-09-01T00:00:00Z", "2026-12-31T00:00:00Z"


def grafana_sql(sql: str) -> str:
    """Grafana's PostgreSQL macros and `$variable` interpolation (single values)."""
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN '{FROM}' AND '{TO}'", sql)
    sql = sql.replace("$__timeFrom()", f"'{FROM}'").replace("$__timeTo()", f"'{TO}'")
    for name in sorted(VARIABLES, key=len, reverse=True):
        sql = sql.replace(f"${name}", VARIABLES[name])
    assert "$" not in sql, f"unsubstituted macro or variable in: {sql}"
    return sql


def queries(board: dict):
    for var in board["templating"]["list"]:
        yield f"variable {var['name']}", var["query"]
    for annotation in board["annotations"]["list"]:
        yield f"annotation {annotation['name']}", annotation["target"]["rawSql"]
    for panel in board["panels"]:
        for t in panel["targets"]:
            yield f"panel {panel['title']}", t["rawSql"]


def test_the_dashboards_are_what_the_builder_writes(tmp_path, monkeypatch):
    import runpy

    built = runpy.run_path(str(GRAFANA / "build_dashboards.py"))
    for board in (built["TREND"], built["LATEST"], built["FASTEST"]):
        assert json.loads((GRAFANA / "dashboards" / f"{board['uid']}.json").read_text()) == board
    assert len(BOARDS) == 3


@pytest.mark.parametrize("path", BOARDS, ids=[p.stem for p in BOARDS])
def test_every_query_returns_rows(path, engine, weeks_of_nights):
    alerts.run_detection(engine)
    board = json.loads(path.read_text())
    ran = 0
    with engine.connect() as conn:
        for where, sql in queries(board):
            rows = conn.execute(sa.text(grafana_sql(sql).replace(":", r"\:"))).all()
            assert rows, f"{path.name}: {where} returned no rows"
            ran += 1
    assert ran >= 2


def test_provisioning_uses_the_read_only_role():
    import yaml

    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "moecomm.yaml").read_text())["datasources"][0]
    assert ds["user"] == "moecomm_reader" and ds["uid"] == "moecomm-pg"
    assert ds["secureJsonData"]["password"] == "$MOECOMM_READER_PASSWORD"
    roles = (Path(__file__).parents[2] / "sql" / "deploy" / "init-roles.sh").read_text()
    assert "ALTER ROLE moecomm_reader SET default_transaction_read_only = on" in roles
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "moecomm.yaml").read_text())["providers"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards/moecomm"
