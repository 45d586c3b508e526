"""A CI-sized run of the mutation fuzzer (tests/benchmarks/fuzz_parse.py; the full run of 20,000
inputs and its figures are in docs/parser-limits.md): a few hundred mutated recorded outputs,
parsed under a time limit and a sample loaded into a real PostgreSQL; every count must be 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

FUZZER = Path(__file__).resolve().parent.parent / "benchmarks" / "fuzz_parse.py"


def test_fuzzer_ci_run(server_url):
    result = subprocess.run(
        [sys.executable, str(FUZZER), "--inputs", "400", "--seed", "2026", "--load-every", "10",
         "--database-url", server_url],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line and "#" not in line)
    for key in ("exceptions", "hangs", "invalid_values_accepted", "load_exceptions", "invalid_rows_in_database"):
        assert lines[key] == "0", result.stdout
    assert "400 inputs" in result.stdout and ", 0 loaded" not in result.stdout
