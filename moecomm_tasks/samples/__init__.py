"""Recorded benchmark outputs shipped with moecomm (real runs; see each manifest)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).parent


@dataclass(frozen=True)
class SampleRun:
    run_id: str
    run_at: datetime
    paths: tuple[Path, ...]


def sample_runs(name: str = "h100-ep1") -> list[SampleRun]:
    """The runs of one sample set, oldest first."""
    manifest = json.loads((HERE / name / "manifest.json").read_text())
    return [
        SampleRun(r["run_id"], datetime.fromisoformat(r["run_at"]), tuple(HERE / name / f for f in r["files"]))
        for r in manifest["runs"]
    ]
