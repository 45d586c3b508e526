"""`TORCH_SYMM_MEM`: PyTorch's own NVSHMEM-based MoE token exchange, the kernels torchtitan uses
for expert parallelism, with no TensorRT-LLM involved.

Dispatch is `torch.ops.symm_mem.all_to_all_vdev_2d`: each rank sends one row per (token, expert)
(the per-expert layout of `refbase`, as torchtitan does), grouped by destination rank and expert
slot; split sizes stay on the GPU (the kernel exchanges them itself) and each rank pulls its rows
from its peers' symmetric buffers into expert-major order. Combine weights each received row by
its router weight, then `all_to_all_vdev_2d_offset` returns the rows to where they came from
(rank-major again, using the offsets dispatch produced), and the source adds each token's K rows.

Limits of the kernels (torch 2.11, `nvshmem_extension.cu`): the dispatch handles at most 16
"experts" per rank (`ne <= NUM_TILES`) and the combine at most 16 ranks. The 2D shuffle's expert
dimension is therefore a *slot*: a group of experts_per_rank / ne consecutive local experts, ne
the largest divisor of experts_per_rank not above 16 (16 for every profile at EP 1 to 16). Rows
stay sorted by expert inside a slot, and the bytes moved are those of one slot per expert; only
the kernels' parallelism (a thread block per slot and source rank, at most 64) follows the slots.

Symmetric buffers must have the same shape on every rank, so they are sized once, for the worst
case of `max_num_tokens_per_rank` (every rank's rows to one rank), like TensorRT-LLM's workspaces.
NVLink multicast stays off: `NVSHMEM_DISABLE_NVLS=1` and `TORCH_SYMM_MEM_DISABLE_MULTICAST=1` are
forced in this process before NVSHMEM starts. `NVSHMEM_SYMMETRIC_SIZE` defaults to what the
buffers need (NVSHMEM's own default, 1 GiB, is too small at 4,096 tokens).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from moecomm_tasks.bench.refbase import (
    BackendUnavailable,
    ReferenceBackend,
    RowFormat,
    TokenBags,
    local_weight,
    per_expert_plan,
)
from moecomm_tasks.bench.workload import Routing

# torch 2.11's checks: all_to_all_vdev_2d "Number of experts must be smaller than NUM_TILES16",
# all_to_all_vdev_2d_offset "world_size must be smaller than NUM_TILES16".
MAX_SLOTS_PER_RANK = 16
MAX_RANKS = 16
MULTICAST_OFF = {"NVSHMEM_DISABLE_NVLS": "1", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
# Each slot's rows start on a row boundary: no padding beyond what an empty slot needs (1 row).
MAJOR_ALIGN = 1
HEAP_HEADROOM = 1.25
HEAP_EXTRA_BYTES = 256 << 20


def slots_per_rank(experts_per_rank: int) -> int:
    """The largest divisor of `experts_per_rank` that the dispatch kernel accepts as its expert count."""
    return max(d for d in range(1, min(experts_per_rank, MAX_SLOTS_PER_RANK) + 1) if experts_per_rank % d == 0)


def open_symm_mem() -> Any:
    """`torch.distributed._symmetric_memory` with the NVSHMEM backend selected and multicast off.

    Raises BackendUnavailable with the reason when this process cannot use it.
    """
    try:
        import torch.distributed._symmetric_memory as symm_mem
    except ImportError as exc:
        raise BackendUnavailable(f"torch {torch.__version__} has no symmetric memory ({exc}).") from exc
    if not (hasattr(symm_mem, "is_nvshmem_available") and symm_mem.is_nvshmem_available()):
        raise BackendUnavailable(f"NVSHMEM is not available to torch {torch.__version__} "
                                 "(libnvshmem_host.so.3 not found, or a build without NVSHMEM).")
    for op in ("all_to_all_vdev_2d", "all_to_all_vdev_2d_offset"):
        if not hasattr(torch.ops.symm_mem, op):
            raise BackendUnavailable(f"torch {torch.__version__} has no torch.ops.symm_mem.{op}.")
    os.environ.update(MULTICAST_OFF)
    if hasattr(symm_mem, "set_backend"):
        try:
            symm_mem.set_backend("NVSHMEM")
        except Exception as exc:
            raise BackendUnavailable(f"symm_mem.set_backend('NVSHMEM') failed: {type(exc).__name__}: {exc}") from exc
    else:
        os.environ.setdefault("TORCH_SYMMMEM", "NVSHMEM")  # how torch chose it before set_backend()
    group_name = dist.group.WORLD.group_name
    enable = getattr(symm_mem, "enable_symm_mem_for_group", None)
    if enable is not None and not getattr(enable, "__deprecated__", None):
        enable(group_name)  # needed before torch made every group symmetric-memory capable
    return symm_mem


class TorchSymmMem(ReferenceBackend):
    name = "TORCH_SYMM_MEM"

    def __init__(self, rank: int, ep_size: int, experts_per_rank: int, extra_combine_passes: int = 0, *,
                 max_num_tokens_per_rank: int | None = None, hidden_size: int | None = None,
                 top_k: int | None = None) -> None:
        super().__init__(rank, ep_size, experts_per_rank, extra_combine_passes,
                         max_num_tokens_per_rank=max_num_tokens_per_rank, hidden_size=hidden_size, top_k=top_k)
        if ep_size > MAX_RANKS:
            raise BackendUnavailable(f"torch's all_to_all_vdev_2d_offset handles at most {MAX_RANKS} ranks, "
                                     f"not {ep_size}.")
        if None in (max_num_tokens_per_rank, hidden_size, top_k):
            raise BackendUnavailable("needs max_num_tokens_per_rank, hidden_size and top_k to size its buffers.")
        self.symm, self.ops, self.device = self._connect()
        self.group_name = dist.group.WORLD.group_name
        self.slots = slots_per_rank(experts_per_rank)
        self.experts_per_slot = experts_per_rank // self.slots
        self.fmt = RowFormat(hidden_size, 1)
        self._allocate(max_num_tokens_per_rank * top_k)
        self._probe()

    def _connect(self) -> tuple[Any, Any, torch.device]:
        """(symmetric memory module, its ops, this rank's GPU); BackendUnavailable when there are none."""
        backend = dist.get_backend() if dist.is_initialized() else None
        if backend != "nccl":
            raise BackendUnavailable(f"needs CUDA GPUs with NVSHMEM; this run uses {backend or 'no process group'} "
                                     "(CPUs).")
        return open_symm_mem(), torch.ops.symm_mem, torch.device("cuda", torch.cuda.current_device())

    def _allocate(self, max_rows_sent: int) -> None:
        nsplits = self.ep_size * self.slots
        # Worst case: every rank's rows come here; an empty slot still takes MAJOR_ALIGN rows.
        max_rows_received = self.ep_size * max_rows_sent + self.slots * MAJOR_ALIGN
        shapes = {
            "dispatch_in": ((max_rows_sent, self.fmt.width), torch.bfloat16),
            "dispatch_out": ((max_rows_received, self.fmt.width), torch.bfloat16),
            "combine_in": ((max_rows_received, self.fmt.hidden), torch.bfloat16),
            "combine_out": ((max_rows_sent, self.fmt.hidden), torch.bfloat16),
            "in_splits": ((nsplits,), torch.int64),
            "dispatch_splits": ((2, nsplits), torch.int64),
            "combine_splits": ((2, nsplits), torch.int64),
        }
        need = sum(torch.Size(shape).numel() * dtype.itemsize for shape, dtype in shapes.values())
        os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE", str(int(need * HEAP_HEADROOM) + HEAP_EXTRA_BYTES))
        try:
            for name, (shape, dtype) in shapes.items():
                buffer = self.symm.empty(shape, dtype=dtype, device=self.device)
                self.symm.rendezvous(buffer, self.group_name)
                setattr(self, name, buffer)
        except Exception as exc:
            raise BackendUnavailable(f"symmetric memory allocation failed: {type(exc).__name__}: {exc}") from exc

    def _exchange(self) -> None:
        self.ops.all_to_all_vdev_2d(self.dispatch_in, self.dispatch_out, self.in_splits,
                                    self.dispatch_splits, self.group_name, major_align=MAJOR_ALIGN)

    def _return(self) -> None:
        self.ops.all_to_all_vdev_2d_offset(self.combine_in, self.combine_out, self.dispatch_splits,
                                           self.combine_splits, self.group_name)

    def _probe(self) -> None:
        """Both kernels once with nothing to send: an API this code does not match is a skip, not a crash."""
        self.in_splits.zero_()
        try:
            self._exchange()
            self._return()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as exc:
            raise BackendUnavailable(f"symm_mem kernels refused the call: {type(exc).__name__}: {exc}") from exc

    def prepare(self, routing: Routing) -> None:
        tokens, top_k = routing.topk_ids.shape
        if tokens * top_k > self.dispatch_in.shape[0] or routing.hidden.shape[1] != self.fmt.hidden:
            raise ValueError(f"{self.name} buffers were sized for {self.max_num_tokens_per_rank} tokens of "
                             f"{self.fmt.hidden} values, not {tokens} of {routing.hidden.shape[1]}")
        plan = per_expert_plan(routing, self.experts_per_rank)
        self.rows_sent = plan.token.numel()
        self.hidden, self.sent_tokens = routing.hidden, plan.token
        slot = plan.ids[:, 0].long() // self.experts_per_slot  # global slot: rank * slots + local slot
        counts = torch.bincount(slot, minlength=self.ep_size * self.slots)
        self.in_splits.copy_(counts)
        self.fmt.write_meta(self.dispatch_in[: self.rows_sent], plan)
        # Where the received rows land, so that combine weights exactly those (the kernel itself
        # needs no host copy of the splits; this is the plan, computed once, outside the timing).
        received = torch.empty_like(counts)
        dist.all_to_all_single(received, counts)
        per_slot = received.view(self.ep_size, self.slots).sum(dim=0)
        padded = torch.clamp((per_slot + MAJOR_ALIGN - 1) // MAJOR_ALIGN * MAJOR_ALIGN, min=MAJOR_ALIGN)
        slot_of_row = torch.repeat_interleave(torch.arange(self.slots, device=self.device), padded)
        slot_start = torch.cumsum(padded, 0) - padded
        row_in_slot = torch.arange(slot_of_row.numel(), device=self.device) - slot_start[slot_of_row]
        self.valid = row_in_slot < per_slot[slot_of_row]
        self.rows_received = self.valid.numel()
        self.bags = TokenBags.of(plan.token, tokens)

    def payload_bytes(self, routing: Routing) -> int:
        return self.rows_sent * routing.hidden.shape[1] * routing.hidden.element_size()

    def dispatch(self) -> torch.Tensor:
        self.fmt.gather(self.hidden, self.sent_tokens, self.dispatch_in[: self.rows_sent])
        self._exchange()
        return self.fmt.payload(self.dispatch_out[: self.rows_received])

    def local_ids(self) -> torch.Tensor:
        return self.fmt.ids(self.dispatch_out[: self.rows_received])[self.valid].flatten()

    def combine(self, expert_out: torch.Tensor) -> torch.Tensor:
        weight = local_weight(self.fmt.weights(self.dispatch_out[: self.rows_received]), expert_out.dtype)
        torch.mul(expert_out, weight, out=self.combine_in[: self.rows_received])
        self._return()
        return self._extra_work(self.bags.sum(self.combine_out[: self.rows_sent]))


