"""Reference backends on `torch.distributed`: the baseline the specialised kernels must beat.

Both take a rank's tokens (`hidden` [T, H] bf16), their top-k expert ids (`topk_ids` [T, K],
global ids in [0, E)) and router weights (`topk_weights` [T, K] float32). Experts are laid out
contiguously: rank r owns experts [r * E/EP, (r + 1) * E/EP).

* `TORCH_ALLTOALL`: dispatch permutes the (token, k) pairs by destination rank and sends each
  token's payload, expert id and router weight to the rank of each of its top-k experts in an
  all-to-all with uneven splits; combine sends the expert outputs back in the reverse all-to-all
  and sums the K outputs of each token with its router weights (one batched matrix product).
* `TORCH_ALLGATHER`: dispatch all-gathers the tokens and their routing; combine weights each
  gathered token by the router weights of the experts this rank owns and reduce-scatters.

The routing plan (split sizes, the permutation, the expert ids and router weights in send order)
depends only on the routing, which is fixed for a (backend, size): like upstream's
`prepare_dispatch` it is computed once, outside the timed region, so that the timed phases never
wait on the host. Dispatch still moves the payload through the permutation and sends both the
payload and the routing metadata.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from moecomm_tasks.bench.workload import Routing

# torch 2.13 renamed these; the device image's torch 2.11 has only the old names.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class ReferenceBackend:
    """Common state; subclasses implement `prepare`, `dispatch`, `combine`, `local_ids`."""

    name = ""
    payload_dtype = torch.bfloat16

    def __init__(self, rank: int, ep_size: int, experts_per_rank: int, extra_combine_passes: int = 0) -> None:
        self.rank = rank
        self.ep_size = ep_size
        self.experts_per_rank = experts_per_rank
        self.extra_combine_passes = extra_combine_passes

    def _extra_work(self, out: torch.Tensor) -> torch.Tensor:
        # A documented knob that adds real memory traffic to combine, not a sleep.
        for _ in range(self.extra_combine_passes):
            out.mul_(1.0)
        return out

    def payload_bytes(self, routing: Routing) -> int:
        """Bytes of token payload this rank sends in one dispatch."""
        raise NotImplementedError

    def expert_output(self, received: torch.Tensor) -> torch.Tensor:
        """Identity experts: combine applies the router weights itself."""
        return received

    timed_expert_output = expert_output


class TorchAllToAll(ReferenceBackend):
    name = "TORCH_ALLTOALL"

    def prepare(self, routing: Routing) -> None:
        tokens, top_k = routing.topk_ids.shape
        hidden = routing.hidden.shape[1]
        device = routing.hidden.device
        dest = (routing.topk_ids.long() // self.experts_per_rank).flatten()
        order = torch.argsort(dest, stable=True)
        send_counts = torch.bincount(dest, minlength=self.ep_size)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts)
        self.send_splits = send_counts.tolist()
        self.recv_splits = recv_counts.tolist()
        received = sum(self.recv_splits)
        self.hidden = routing.hidden
        self.src_token = order // top_k
        self.restore = torch.argsort(order)
        # Expert id and router weight travel together as two int32 words (one int64) per (token, k),
        # already in send order: like the split sizes, they are part of the routing plan.
        meta = torch.stack(
            [routing.topk_ids.flatten().to(torch.int32), routing.topk_weights.flatten().view(torch.int32)], dim=1
        ).view(torch.int64).flatten()
        self.send_meta = meta.index_select(0, order)
        self.tokens, self.top_k = tokens, top_k
        self.send_payload = torch.empty(tokens * top_k, hidden, dtype=routing.hidden.dtype, device=device)
        self.recv_payload = torch.empty(received, hidden, dtype=routing.hidden.dtype, device=device)
        self.recv_meta = torch.empty(received, dtype=torch.int64, device=device)
        self.returned = torch.empty_like(self.send_payload)
        self.token_major = torch.empty_like(self.send_payload)
        self.weights = routing.topk_weights.to(routing.hidden.dtype).unsqueeze(1)  # [T, 1, K]
        self.out = torch.empty(tokens, 1, hidden, dtype=routing.hidden.dtype, device=device)

    def payload_bytes(self, routing: Routing) -> int:
        return routing.topk_ids.numel() * routing.hidden.shape[1] * routing.hidden.element_size()

    def dispatch(self) -> torch.Tensor:
        torch.index_select(self.hidden, 0, self.src_token, out=self.send_payload)
        dist.all_to_all_single(self.recv_payload, self.send_payload, self.recv_splits, self.send_splits)
        dist.all_to_all_single(self.recv_meta, self.send_meta, self.recv_splits, self.send_splits)
        return self.recv_payload

    def local_ids(self) -> torch.Tensor:
        return self.recv_meta.view(torch.int32).view(-1, 2)[:, 0]

    def combine(self, expert_out: torch.Tensor) -> torch.Tensor:
        dist.all_to_all_single(self.returned, expert_out, self.send_splits, self.recv_splits)
        torch.index_select(self.returned, 0, self.restore, out=self.token_major)
        per_token = self.token_major.view(self.tokens, self.top_k, -1)
        torch.bmm(self.weights, per_token, out=self.out)
        return self._extra_work(self.out.view(self.tokens, -1))


class TorchAllGather(ReferenceBackend):
    name = "TORCH_ALLGATHER"

    def prepare(self, routing: Routing) -> None:
        tokens, top_k = routing.topk_ids.shape
        counts = torch.tensor([tokens], device=routing.hidden.device)
        gathered = [torch.empty_like(counts) for _ in range(self.ep_size)]
        dist.all_gather(gathered, counts)
        if any(int(c.item()) != tokens for c in gathered):
            raise ValueError("TORCH_ALLGATHER needs the same local_batch_size on every rank")
        self.hidden, self.ids, self.weights = routing.hidden, routing.topk_ids, routing.topk_weights
        world = self.ep_size * tokens
        device = routing.hidden.device
        self.all_hidden = torch.empty(world, routing.hidden.shape[1], dtype=routing.hidden.dtype, device=device)
        self.all_ids = torch.empty(world, top_k, dtype=routing.topk_ids.dtype, device=device)
        self.all_weights = torch.empty(world, top_k, dtype=torch.float32, device=device)
        self.partial = torch.empty_like(self.all_hidden)
        self.out = torch.empty_like(routing.hidden)

    def payload_bytes(self, routing: Routing) -> int:
        return routing.hidden.numel() * routing.hidden.element_size()

    def dispatch(self) -> torch.Tensor:
        _all_gather(self.all_hidden, self.hidden)
        _all_gather(self.all_ids, self.ids)
        _all_gather(self.all_weights, self.weights)
        return self.all_hidden

    def local_ids(self) -> torch.Tensor:
        mine = (self.all_ids.long() // self.experts_per_rank) == self.rank
        return self.all_ids[mine]

    def combine(self, expert_out: torch.Tensor) -> torch.Tensor:
        mine = (self.all_ids.long() // self.experts_per_rank) == self.rank
        local_weight = (self.all_weights * mine).sum(dim=1, keepdim=True).to(expert_out.dtype)
        torch.mul(expert_out, local_weight, out=self.partial)
        _reduce_scatter(self.out, self.partial)
        return self._extra_work(self.out)


REFERENCE = {cls.name: cls for cls in (TorchAllToAll, TorchAllGather)}


