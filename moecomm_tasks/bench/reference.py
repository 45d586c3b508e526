"""Reference backends on `torch.distributed`: the baseline the specialised kernels must beat.

All take a rank's tokens (`hidden` [T, H] bf16), their top-k expert ids (`topk_ids` [T, K],
global ids in [0, E)) and router weights (`topk_weights` [T, K] float32). Experts are laid out
contiguously: rank r owns experts [r * E/EP, (r + 1) * E/EP).

* `TORCH_ALLTOALL` (the layout of DeepEP and TensorRT-LLM, see `refbase`): dispatch sends each
  token once to each rank that owns at least one of its experts, with all its expert ids and
  router weights (other ranks' masked), in one all-to-all with uneven splits; combine first sums,
  on the expert's rank, each token's local expert outputs with their router weights, sends one
  vector per (token, rank) back in the reverse all-to-all, and the source adds them up.
* `TORCH_ALLTOALL_PER_EXPERT`: the same with one row per (token, expert), so a token travels K
  times (torchtitan's and Megatron's all-to-all dispatchers). It is the NCCL counterpart of
  `TORCH_SYMM_MEM`, which moves the same rows with PyTorch's NVSHMEM kernels.
* `TORCH_ALLGATHER`: dispatch all-gathers the tokens and their routing; combine weights each
  gathered token by the router weights of the experts this rank owns and reduce-scatters.
* `TORCH_SYMM_MEM` lives in `symm_mem`.

What depends only on the routing (the rows' order, split sizes, the metadata in send order) is
computed once per (backend, size) in `prepare`, outside the timed phases, like upstream's
workspace set-up: with it the timed phases never wait on the host, and they can be captured in a
CUDA graph (NCCL's uneven all-to-all needs its split sizes on the host). Dispatch still gathers
the payload and moves payload and metadata every time. The rows a rank keeps for itself never
enter NCCL: they are gathered straight into the receive buffer, and their combine partials written
straight into the return buffer, while NCCL moves the other ranks' rows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from moecomm_tasks.bench.refbase import (
    BackendUnavailable,
    ReferenceBackend,
    RowFormat,
    RowPlan,
    TokenBags,
    local_weight,
    per_expert_plan,
    per_rank_plan,
)
from moecomm_tasks.bench.symm_mem import TorchSymmMem
from moecomm_tasks.bench.workload import Routing

__all__ = ["REFERENCE", "BackendUnavailable", "TorchAllGather", "TorchAllToAll", "TorchAllToAllPerExpert"]

# torch 2.13 renamed these; the device image's torch 2.11 has only the old names.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class _AllToAll(ReferenceBackend):
    """NCCL (gloo on CPUs) all-to-all of packed rows; subclasses choose the rows (`_plan`)."""

    def _plan(self, routing: Routing) -> RowPlan:
        raise NotImplementedError

    def prepare(self, routing: Routing) -> None:
        tokens = routing.topk_ids.shape[0]
        hidden = routing.hidden.shape[1]
        device = routing.hidden.device
        plan = self._plan(routing)
        self.rows_sent = plan.token.numel()
        is_self = plan.dest == self.rank
        peers, own = plan.select(~is_self), plan.select(is_self)
        send_counts = torch.bincount(peers.dest, minlength=self.ep_size)
        recv_counts = torch.zeros_like(send_counts)
        if self.ep_size > 1:
            dist.all_to_all_single(recv_counts, send_counts)
        self.send_splits, self.recv_splits = send_counts.tolist(), recv_counts.tolist()
        self.received, self.peer_rows = sum(self.recv_splits), peers.token.numel()
        self.fmt = RowFormat(hidden, plan.ids.shape[1])
        self.hidden = routing.hidden
        self.peer_tokens, self.own_tokens = peers.token, own.token
        # Send buffer: the other ranks' rows. Receive buffer: their rows, then this rank's own.
        self.send = self.fmt.empty(self.peer_rows, device)
        self.recv = self.fmt.empty(self.received + own.token.numel(), device)
        self.fmt.write_meta(self.send, peers)
        self.fmt.write_meta(self.recv[self.received:], own)
        # Combine: the partials of other ranks' rows come back through NCCL into the head of
        # `back`; the partials of own rows are written straight into its tail.
        self.combine_send = torch.empty(self.received, hidden, dtype=routing.hidden.dtype, device=device)
        self.back = torch.empty(self.rows_sent, hidden, dtype=routing.hidden.dtype, device=device)
        self.bags = TokenBags.of(torch.cat([peers.token, own.token]), tokens)

    def payload_bytes(self, routing: Routing) -> int:
        return self.rows_sent * routing.hidden.shape[1] * routing.hidden.element_size()

    def dispatch(self) -> torch.Tensor:
        if self.ep_size > 1:
            self.fmt.gather(self.hidden, self.peer_tokens, self.send)
            work = dist.all_to_all_single(self.recv[: self.received], self.send, self.recv_splits, self.send_splits,
                                          async_op=True)
            self.fmt.gather(self.hidden, self.own_tokens, self.recv[self.received:])
            work.wait()
        else:
            self.fmt.gather(self.hidden, self.own_tokens, self.recv)
        return self.fmt.payload(self.recv)

    def local_ids(self) -> torch.Tensor:
        ids = self.fmt.ids(self.recv)
        return ids[ids >= 0]

    def combine(self, expert_out: torch.Tensor) -> torch.Tensor:
        weight = local_weight(self.fmt.weights(self.recv), expert_out.dtype)
        if self.ep_size > 1:
            torch.mul(expert_out[: self.received], weight[: self.received], out=self.combine_send)
            work = dist.all_to_all_single(self.back[: self.peer_rows], self.combine_send, self.send_splits,
                                          self.recv_splits, async_op=True)
            torch.mul(expert_out[self.received:], weight[self.received:], out=self.back[self.peer_rows:])
            work.wait()
        else:
            torch.mul(expert_out, weight, out=self.back)
        return self._extra_work(self.bags.sum(self.back))


class TorchAllToAll(_AllToAll):
    name = "TORCH_ALLTOALL"

    def _plan(self, routing: Routing) -> RowPlan:
        return per_rank_plan(routing, self.experts_per_rank, self.ep_size)


class TorchAllToAllPerExpert(_AllToAll):
    name = "TORCH_ALLTOALL_PER_EXPERT"

    def _plan(self, routing: Routing) -> RowPlan:
        return per_expert_plan(routing, self.experts_per_rank)


class TorchAllGather(ReferenceBackend):
    name = "TORCH_ALLGATHER"

    def prepare(self, routing: Routing) -> None:
        tokens, top_k = routing.topk_ids.shape
        counts = torch.tensor([tokens], device=routing.hidden.device)
        gathered = [torch.empty_like(counts) for _ in range(self.ep_size)]
        dist.all_gather(gathered, counts)
        if any(int(c.item()) != tokens for c in gathered):
            raise ValueError("TORCH_ALLGATHER needs the same local_batch_size on every rank")
        device = routing.hidden.device
        world = self.ep_size * tokens
        self.hidden = routing.hidden
        # Expert ids and router weights travel together, 2K int32 words per token: one collective.
        self.meta = torch.cat([routing.topk_ids.to(torch.int32),
                               routing.topk_weights.to(torch.float32).view(torch.int32)], dim=1)
        self.all_hidden = torch.empty(world, routing.hidden.shape[1], dtype=routing.hidden.dtype, device=device)
        self.all_meta = torch.empty(world, 2 * top_k, dtype=torch.int32, device=device)
        self.partial = torch.empty_like(self.all_hidden)
        self.out = torch.empty_like(routing.hidden)
        self.top_k = top_k

    def payload_bytes(self, routing: Routing) -> int:
        return routing.hidden.numel() * routing.hidden.element_size()

    def dispatch(self) -> torch.Tensor:
        _all_gather(self.all_hidden, self.hidden)
        _all_gather(self.all_meta, self.meta)
        return self.all_hidden

    def _mine(self) -> torch.Tensor:
        return (self.all_meta[:, : self.top_k].long() // self.experts_per_rank) == self.rank

    def local_ids(self) -> torch.Tensor:
        return self.all_meta[:, : self.top_k][self._mine()]

    def combine(self, expert_out: torch.Tensor) -> torch.Tensor:
        weights = self.all_meta[:, self.top_k:].view(torch.float32) * self._mine()
        torch.mul(expert_out, local_weight(weights, expert_out.dtype), out=self.partial)
        _reduce_scatter(self.out, self.partial)
        return self._extra_work(self.out)


REFERENCE = {cls.name: cls for cls in (TorchAllToAll, TorchAllToAllPerExpert, TorchAllGather, TorchSymmMem)}
