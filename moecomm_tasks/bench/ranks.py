"""Rank setup: rank and world size from MPI, `torch.distributed` initialised from them, provenance.

Ranks are started directly by `mpirun -np EP` (or `srun`), one per GPU; rank 0 chooses a free TCP
port and broadcasts its address over MPI, so no MASTER_ADDR/MASTER_PORT needs to be set.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    comm: Any  # the mpi4py communicator
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    def barrier(self) -> None:
        self.comm.Barrier()

    def allgather(self, value: Any) -> list[Any]:
        return self.comm.allgather(value)

    def bcast(self, value: Any) -> Any:
        return self.comm.bcast(value, root=0)


def mpi_world() -> tuple[Any, int, int, int]:
    """(communicator, rank, world size, local rank) from MPI."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank = local.Get_rank()
    local.Free()
    return comm, comm.Get_rank(), comm.Get_size(), local_rank


def pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda was given but CUDA is not available")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise RuntimeError(
            f"more ranks on this host than GPUs: local rank {local_rank}, {count} visible GPU(s). "
            "Start at most one rank per GPU on each host (e.g. srun --ntasks-per-node=<gpus>, "
            "mpirun --map-by ppr:<gpus>:node) or make more GPUs visible (CUDA_VISIBLE_DEVICES)."
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_process_group(comm: Any, rank: int, world_size: int, device: torch.device, timeout_s: float) -> None:
    """Initialise torch.distributed (NCCL on CUDA, gloo on CPU) over a TCP rendezvous from rank 0."""
    if rank == 0:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("", 0))
            port = sock.getsockname()[1]
        address = socket.gethostbyname(socket.gethostname()) if world_size > 1 else "127.0.0.1"
        endpoint = (address, port)
    else:
        endpoint = None
    address, port = comm.bcast(endpoint, root=0)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(
        backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world_size,
        timeout=timedelta(seconds=timeout_s), **kwargs,
    )


def _nvidia_smi(field: str) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    first = out.strip().splitlines()
    return first[0].strip() if first else None


def provenance(ranks: Ranks, timing_method: str, trtllm: dict[str, Any]) -> dict[str, Any]:
    """What this run ran on; gathered on every rank (collective), meaningful on rank 0."""
    hosts = sorted(set(ranks.allgather(platform.node())))
    cuda = ranks.device.type == "cuda"
    nccl = None
    if cuda and hasattr(torch.cuda, "nccl"):
        version = torch.cuda.nccl.version()
        nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    gpu_counts = ranks.allgather(torch.cuda.device_count() if cuda else 0)
    return {
        "gpu_model": torch.cuda.get_device_name(ranks.device) if cuda else None,
        "gpu_count": ranks.world_size if cuda else 0,
        "gpus_per_host": max(gpu_counts),
        "driver_version": _nvidia_smi("driver_version") if cuda else None,
        "cuda_version": torch.version.cuda,
        "nccl_version": nccl,
        "torch_version": torch.__version__,
        "trtllm_version": trtllm.get("version"),
        "trtllm_commit": trtllm.get("commit"),
        "trtllm_module": trtllm.get("module"),
        "hosts": hosts,
        "device": ranks.device.type,
        "comm_backend": dist.get_backend() if dist.is_initialized() else None,
        "timing_method": timing_method,
        "environment": {k: v for k, v in os.environ.items() if k.startswith(("NCCL_", "TRTLLM_", "MOECOMM_", "NVSHMEM_", "TORCH_SYMM_MEM_"))},
    }
