"""Names come from benchmark output, so an attacker (or an unlucky build) controls them. The SQL
shown in digests and handed to Otava is quoted by psycopg2 and safe in any session, Otava keeps
one test per series, and the report draws any name literally. On a real PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg2
import pytest
import sqlalchemy as sa
import yaml
from sqlalchemy.engine import make_url

from moecomm_tasks import notify, otava, query, store
from moecomm_tasks.cli import main
from moecomm_tasks.domain import Alert, AlertKind, Direction
from moecomm_tasks.knobs import KNOB_FIELDS
from moecomm_tasks.records import ParsedJob, ParsedOutput, RunHeader, Stats, Timing

pytestmark = pytest.mark.integration

INJECTION = "x\\'; drop table measurement cascade; --"
BACKENDS = (INJECTION, "X$\\badcmd{$", "TORCH ALLGATHER", "TORCH_ALLGATHER", "<!channel> <https://evil.example|x>")
NIGHTS = 3


@pytest.fixture
def hostile_history(engine):
    start = datetime(2026, 11, 1, 2, 0, tzinfo=timezone.utc)
    for night in range(NIGHTS):
        jobs = []
        for backend in BACKENDS:
            header = RunHeader(profile="gpt_oss", ep_size=2, quant_algo="W4A8_MXFP4_MXFP8", backend=backend,
                               local_batch_sizes=(128,), extra={"provenance": {"gpu_model": "GPU 'x\\"}})
            jobs.append(ParsedJob(header, tuple(Timing(backend, 128, "combine", rank, Stats(10.0 + night + rank))
                                                for rank in range(2))))
        store.load(engine, ParsedOutput(jobs=tuple(jobs)), f"night-{night}", start + timedelta(days=night))


def session(database_url: str, standard_conforming_strings: str):
    conn = psycopg2.connect(make_url(database_url).render_as_string(hide_password=False).replace(
        "postgresql+psycopg2", "postgresql"), options=f"-c standard_conforming_strings={standard_conforming_strings}")
    conn.autocommit = True
    return conn


def test_the_digest_sql_is_safe_and_right_whatever_the_session(engine, database_url, hostile_history):
    with engine.connect() as conn:  # the knobs as stored
        knobs = conn.execute(sa.text(f"SELECT DISTINCT {', '.join(KNOB_FIELDS)} FROM nightly_series "
                                     "WHERE backend = :b"), {"b": INJECTION}).one()._mapping
    alert = Alert(alert_id=1, kind=AlertKind.LEVEL, backend=INJECTION, profile="gpt_oss", ep_size=2,
                  quant_algo="W4A8_MXFP4_MXFP8", local_batch_size=128, op="combine", gpu_model="GPU 'x\\", **knobs,
                  direction=Direction.REGRESSION, change_pct=5.0, confidence=0.99, baseline_us=10.0, after_us=10.5,
                  last_good_run_id="night-0", first_bad_run_id="night-1")
    with query.shown_sql(engine) as shown:
        digest = notify.build_digest("night-2", [alert], shown)
    shown_text = digest.groups[0]["alerts"][0]["sql"]
    assert shown_text in notify.render_text(digest)
    for setting in ("off", "on"):
        with session(database_url, setting) as conn, conn.cursor() as cur:
            cur.execute(shown_text)
            assert [r[0] for r in cur.fetchall()] == [f"night-{n}" for n in range(NIGHTS)], setting
            cur.execute("SELECT to_regclass('measurement') IS NOT NULL, current_setting('standard_conforming_strings')")
            assert cur.fetchone() == (True, setting)


def test_otava_keeps_every_series_and_its_queries_are_safe(engine, database_url, hostile_history, tmp_path,
                                                           monkeypatch):
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    out = tmp_path / "otava.yaml"
    assert main(["otava-config", "--out", str(out)]) == 0
    tests = yaml.safe_load(out.read_text())["tests"]
    assert len(tests) == len(BACKENDS)  # 'TORCH ALLGATHER' and 'TORCH_ALLGATHER' both kept
    with engine.connect() as conn:
        knobs = conn.execute(sa.text(
            "SELECT cuda_graph, pdl, perfect_router, payload_in_workspace, low_precision_combine, timing_method "
            "FROM nightly_series LIMIT 1")).one()
    clean = otava.test_name("TORCH_ALLGATHER", "gpt_oss", 2, "W4A8_MXFP4_MXFP8", 128, "combine", *knobs)
    spaced = otava.test_name("TORCH ALLGATHER", "gpt_oss", 2, "W4A8_MXFP4_MXFP8", 128, "combine", *knobs)
    assert clean.startswith("TORCH_ALLGATHER.gpt_oss.ep2.W4A8_MXFP4_MXFP8.128.combine.")
    assert spaced.startswith(clean + ".") and {clean, spaced} <= set(tests)
    for setting in ("off", "on"):
        with session(database_url, setting) as conn, conn.cursor() as cur:
            for name, test in tests.items():
                cur.execute(test["query"].replace("%{BRANCH}", "E'GPU \\'x\\\\'"))
                assert len(cur.fetchall()) == NIGHTS, (setting, name)
            cur.execute("SELECT to_regclass('measurement') IS NOT NULL")
            assert cur.fetchone() == (True,)


def test_the_report_draws_any_name_literally(engine, database_url, hostile_history, tmp_path, monkeypatch):
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    assert main(["report", "--out", str(tmp_path / "report")]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert "X$\\badcmd{$" in page and "&lt;!channel&gt;" in page
    assert len(list((tmp_path / "report").glob("*.svg"))) >= len(BACKENDS)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM measurement")).scalar() == NIGHTS * len(BACKENDS)
