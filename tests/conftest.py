"""Shared fixtures: a real PostgreSQL server for the integration tests.

`MOECOMM_TEST_DATABASE_URL` names a server the tests may create and drop databases on (e.g.
`postgresql+psycopg2://postgres@127.0.0.1:5432/postgres`); without it the embedded PostgreSQL is
started in a temporary home, so the tests need no server of their own. Each test gets a fresh,
migrated database.
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from moecomm_tasks import db
from moecomm_tasks.embedded import EmbeddedPostgres

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory):
    """An admin URL of a running PostgreSQL server."""
    configured = os.environ.get("MOECOMM_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("moecomm-home"))
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def database_url(server_url: str):
    """A fresh, migrated database on the test server; dropped afterwards."""
    with db.scratch_database(server_url, prefix="moecomm_test") as url:
        yield url


@pytest.fixture
def engine(database_url: str):
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def data_dir() -> Path:
    return DATA


class _Sink(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def http_sink():
    """A real HTTP server on loopback; yields its URL and the JSON bodies POSTed to it."""
    server = HTTPServer(("127.0.0.1", 0), _Sink)
    _Sink.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", _Sink.received
    server.shutdown()
    server.server_close()


def load_weeks_of_nights(engine, nights: int = 28, step_at: int = 23):
    """A few weeks of nights through the real loader: 2 reference backends x 2 profiles x EP 2 x
    3 token counts x 2 ops x 2 ranks, per-iteration stats, 1% noise between nights (seeded), and
    TORCH_ALLTOALL deepseek_v3 combine at 1024 tokens 12% slower from night `step_at` with a new
    NCCL (so the detector raises an alert). Returns the run ids, oldest first."""
    import random
    from datetime import datetime, timedelta, timezone

    from moecomm_tasks import store
    from moecomm_tasks.records import ParsedJob, ParsedOutput, RunHeader, Stats, Timing

    rng = random.Random(11)
    start = datetime(2026, 10, 1, 2, 0, tzinfo=timezone.utc)
    run_ids = []
    for night in range(nights):
        jobs = []
        level = rng.lognormvariate(0, 0.01)
        for profile, quant in (("deepseek_v3", "FP8_BLOCK_SCALES"), ("gpt_oss", "W4A8_MXFP4_MXFP8")):
            for backend, speed in (("TORCH_ALLTOALL", 1.0), ("TORCH_ALLGATHER", 1.3)):
                nccl = "2.29.0" if night >= step_at else "2.28.9"
                header = RunHeader(profile=profile, ep_size=2, quant_algo=quant, backend=backend,
                                   local_batch_sizes=(128, 1024, 4096),
                                   extra={"provenance": {"gpu_model": "NVIDIA H100 80GB HBM3", "nccl_version": nccl}})
                timings = []
                for size in (128, 1024, 4096):
                    for op, base in (("dispatch", 1.0), ("combine", 2.0)):
                        slower = 1.12 if (night >= step_at and backend == "TORCH_ALLTOALL" and profile == "deepseek_v3"
                                          and op == "combine" and size == 1024) else 1.0
                        # Small sizes are latency-bound, large ones bandwidth-bound: the backends cross.
                        us = (20.0 * speed ** -1 + size * 0.1 * speed) * base * level * slower
                        for rank in range(2):
                            v = us * (1 + 0.02 * rank) * rng.lognormvariate(0, 0.002)
                            timings.append(Timing(backend, size, op, rank, Stats(v * 1.01, v, v * 0.03, v * 0.95, v * 1.3)))
                jobs.append(ParsedJob(header, tuple(timings)))
        run_id = f"night-{night:02d}"
        store.load(engine, ParsedOutput(jobs=tuple(jobs)), run_id, start + timedelta(days=night))
        run_ids.append(run_id)
    return run_ids


@pytest.fixture
def weeks_of_nights(engine):
    return load_weeks_of_nights(engine)


def require_services(reason: str | None, what: str) -> None:
    """Skip (or, with MOECOMM_REQUIRE_SERVICES=1 as in CI, fail) when `what` cannot run here."""
    if reason:
        if os.environ.get("MOECOMM_REQUIRE_SERVICES") == "1":  # CI installs everything: never skip there
            pytest.fail(f"{what} is required and cannot start: {reason}")
        pytest.skip(f"{what} cannot start: {reason}; CI runs this test")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A one-node Slurm cluster of the tests' own (tests/live/slurm.py), for the whole session;
    every process it started is gone afterwards."""
    from live import slurm
    from live.processes import Processes

    require_services(slurm.missing(), "a Slurm cluster")
    root = tmp_path_factory.mktemp("slurm")
    with Processes(root / "logs") as processes:
        yield slurm.SlurmCluster(root, processes).start()
    assert not processes.leftovers(), "processes of the Slurm cluster outlived it"
