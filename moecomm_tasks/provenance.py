"""What a job ran on, as seen from the machine that launched it.

The worker reports its own provenance from inside the ranks (GPU, driver, CUDA, NCCL, torch);
this module fills in what the launcher knows (hosts, the exact command, the environment knobs)
and what an upstream script cannot report (GPUs through nvidia-smi, installed versions, the git
commit of a TensorRT-LLM checkout). Every external call has a timeout.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

COMMAND_TIMEOUT_S = 10


def _run(argv: list[str], cwd: Path | None = None) -> str | None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, cwd=cwd, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def host_provenance(script: Path | None = None) -> dict[str, Any]:
    """This host's view: GPUs, driver, installed torch and TensorRT-LLM, a checkout's commit."""
    gpus = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    names = [line.split(",")[0].strip() for line in gpus.splitlines()] if gpus else []
    checkout = script.resolve().parent if script is not None and script.exists() else None
    return {
        "hosts": [platform.node()],
        "gpu_model": names[0] if names else None,
        "gpu_count": len(names),
        "driver_version": gpus.splitlines()[0].split(",")[1].strip() if gpus else None,
        "torch_version": _version("torch"),
        "trtllm_version": _version("tensorrt_llm") or _version("tensorrt-llm"),
        "trtllm_commit": _run(["git", "rev-parse", "HEAD"], cwd=checkout) if checkout else None,
    }


def merge(host: dict[str, Any], reported: dict[str, Any], launch: dict[str, Any]) -> dict[str, Any]:
    """The job's provenance: the ranks' own report wins over the host's view; the launcher adds
    the command and environment."""
    merged = dict(host)
    merged.update({k: v for k, v in reported.items() if v is not None})
    merged.update(launch)
    return merged
