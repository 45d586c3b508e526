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
