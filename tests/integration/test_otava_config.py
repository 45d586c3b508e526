"""The Apache Otava configuration: one test per series, each query valid against the views and
returning the template's time column, attributes and metrics. (Otava itself pins numpy 2.2, so it
is not installed beside moecomm; its own loader is exercised in docs/detector-evaluation.md's
environment. The keys used here are those of Otava 0.8's postgres tests.)"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
import yaml

from moecomm_tasks import otava
from moecomm_tasks.cli import main

pytestmark = pytest.mark.integration


def test_one_test_per_series_and_every_query_runs(engine, weeks_of_nights, tmp_path, database_url, monkeypatch):
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    out = tmp_path / "otava.yaml"
    assert main(["otava-config", "--out", str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    template = config["templates"]["moecomm_series"]
    assert template["type"] == "postgres" and template["metrics"]["slowest_rank_us"]["direction"] == -1
    # 2 profiles x 2 backends x 3 sizes x 2 ops, all EP 2.
    assert len(config["tests"]) == 24
    assert config["test_groups"] == {"moecomm": list(config["tests"])}  # `otava analyze ... moecomm`: all of them
    with engine.connect() as conn:
        for name, test in config["tests"].items():
            assert test["inherit"] == ["moecomm_series"]
            assert "%{BRANCH}" in test["query"]  # Otava substitutes the --branch value (the GPU model)
            sql = test["query"].replace("%{BRANCH}", "'NVIDIA H100 80GB HBM3'")
            result = conn.execute(sa.text(sql.replace(":", r"\:")))
            columns, rows = list(result.keys()), result.all()
            assert len(rows) == len(weeks_of_nights), name
            assert {template["time_column"], *template["attributes"], *template["metrics"]} <= set(columns)
    name = otava.test_name("TORCH_ALLTOALL", "deepseek_v3", 2, "FP8_BLOCK_SCALES", 1024, "combine",
                           False, False, False, False, False, "cuda_events")
    assert name in config["tests"]
