"""What the reference backends share: the interface the worker drives, the routing plans (which
rows a rank sends where), and the packed rows that carry a token's payload together with its
routing metadata.

A *row* is one copy of one token on its way to one destination. Two layouts exist:

* per rank (DeepEP's and TensorRT-LLM's): one row per (token, rank that owns at least one of the
  token's top-k experts), carrying all K expert ids and router weights, those of experts on other
  ranks masked (id -1, weight 0);
* per expert (torchtitan's and Megatron's all-to-all dispatchers): one row per (token, expert),
  carrying that expert's id and weight; a token travels K times.

Rows are packed as `[payload (hidden bf16, padded to 8 bytes) | ids (int32) | weights (float32)]`,
so that one collective moves both and the metadata never needs a launch of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moecomm_tasks.bench.workload import Routing


class BackendUnavailable(RuntimeError):
    """The backend cannot run here; the message says why (the worker prints it as a skip line)."""


class ReferenceBackend:
    """Common state of the reference backends; subclasses implement `prepare`, `dispatch`,
    `combine`, `local_ids` and `payload_bytes`.

    `max_num_tokens_per_rank`, `hidden_size` and `top_k` size workspaces that must exist before
    the first size is prepared (symmetric memory); backends that allocate per size ignore them.
    """

    name = ""
    payload_dtype = torch.bfloat16

    def __init__(self, rank: int, ep_size: int, experts_per_rank: int, extra_combine_passes: int = 0, *,
                 max_num_tokens_per_rank: int | None = None, hidden_size: int | None = None,
                 top_k: int | None = None) -> None:
        self.rank = rank
        self.ep_size = ep_size
        self.experts_per_rank = experts_per_rank
        self.extra_combine_passes = extra_combine_passes
        self.max_num_tokens_per_rank = max_num_tokens_per_rank
        self.hidden_size = hidden_size
        self.top_k = top_k

    def _extra_work(self, out: torch.Tensor) -> torch.Tensor:
        # A documented knob that adds real memory traffic to combine, not a sleep.
        for _ in range(self.extra_combine_passes):
            out.mul_(1.0)
        return out

    def payload_bytes(self, routing: Routing) -> int:
        """Bytes of token payload this rank sends in one dispatch (itself included)."""
        raise NotImplementedError

    def expert_output(self, received: torch.Tensor) -> torch.Tensor:
        """Identity experts: every local expert returns its input; combine applies the router weights."""
        return received

    timed_expert_output = expert_output


@dataclass(frozen=True)
class RowPlan:
    """The rows one rank sends in a dispatch, in send order (grouped by destination rank).

    Row i carries token `token[i]` to rank `dest[i]`, with `ids[i]` and `weights[i]` ([S, M]:
    M = top-k per rank, 1 per expert).
    """

    token: torch.Tensor
    dest: torch.Tensor
    ids: torch.Tensor
    weights: torch.Tensor

    def select(self, mask: torch.Tensor) -> RowPlan:
        return RowPlan(self.token[mask], self.dest[mask], self.ids[mask], self.weights[mask])


def per_rank_plan(routing: Routing, experts_per_rank: int, ep_size: int) -> RowPlan:
    """One row per (token, destination rank), tokens in order within each destination."""
    ids = routing.topk_ids.long()
    owner = ids // experts_per_rank
    tokens = ids.shape[0]
    reaches = torch.zeros(tokens, ep_size, dtype=torch.bool, device=ids.device)
    reaches.scatter_(1, owner, True)
    token, dest = reaches.nonzero(as_tuple=True)  # token-major, so already in token order per rank
    order = torch.argsort(dest, stable=True)
    token, dest = token[order], dest[order]
    mine = owner[token] == dest.unsqueeze(1)
    row_ids = torch.where(mine, ids[token], -1).to(torch.int32)
    row_weights = torch.where(mine, routing.topk_weights[token], 0.0).to(torch.float32)
    return RowPlan(token, dest, row_ids, row_weights)


def per_expert_plan(routing: Routing, experts_per_rank: int) -> RowPlan:
    """One row per (token, expert), grouped by expert (hence by rank), tokens in order within."""
    ids = routing.topk_ids.long().flatten()
    top_k = routing.topk_ids.shape[1]
    order = torch.argsort(ids, stable=True)
    token = order // top_k
    return RowPlan(token, ids[order] // experts_per_rank, ids[order].to(torch.int32).unsqueeze(1),
                   routing.topk_weights.flatten()[order].to(torch.float32).unsqueeze(1))


def _widest_word(columns: int) -> torch.dtype:
    """The widest integer word that tiles `columns` bf16 values: fewer, wider loads in gathers."""
    return torch.int64 if columns % 4 == 0 else torch.int32 if columns % 2 == 0 else torch.int16


@dataclass(frozen=True)
class RowFormat:
    """Packed rows of `hidden` bf16 values and `slots` (id, weight) pairs of routing metadata."""

    hidden: int
    slots: int

    @property
    def meta_column(self) -> int:
        """First bf16 column of the metadata: the payload padded to 8 bytes keeps every view aligned."""
        return -(-self.hidden // 4) * 4

    @property
    def width(self) -> int:
        return self.meta_column + 4 * self.slots

    def empty(self, rows: int, device: torch.device) -> torch.Tensor:
        return torch.empty(rows, self.width, dtype=torch.bfloat16, device=device)

    def payload(self, rows: torch.Tensor) -> torch.Tensor:
        return rows[:, : self.hidden]

    def gather(self, hidden: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> None:
        """rows[i].payload = hidden[index[i]], moved in the widest words the hidden size allows."""
        word = _widest_word(self.hidden)
        columns = self.hidden * 2 // word.itemsize
        torch.index_select(hidden.view(word), 0, index, out=rows.view(word)[:, :columns])

    def _meta(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.view(torch.int32)[:, self.meta_column // 2:]

    def ids(self, rows: torch.Tensor) -> torch.Tensor:
        return self._meta(rows)[:, : self.slots]

    def weights(self, rows: torch.Tensor) -> torch.Tensor:
        return self._meta(rows)[:, self.slots: 2 * self.slots].view(torch.float32)

    def write_meta(self, rows: torch.Tensor, plan: RowPlan) -> None:
        self.ids(rows).copy_(plan.ids)
        self.weights(rows).copy_(plan.weights)


@dataclass(frozen=True)
class TokenBags:
    """Which rows of a buffer belong to which token, for a sum per token.

    The rows are split into rounds: round j holds the j-th row of every token that has more than
    j rows, so within a round every token appears at most once. The sum is then one gather (round
    0, every token's first row) and one indexed add per further round: a few bandwidth-bound
    kernels with no atomics competing for one token (the result does not depend on timing). The
    number of rounds is the most rows one token has (at most the EP size for one row per (token,
    rank), top-k for one row per (token, expert)). When every token has the same number of rows
    (one row per (token, expert): top-k each), one gather in token order and a sum over each
    token's rows do it in two passes however many rows a token has.
    """

    tokens: int
    rounds: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # (tokens, rows) of each round
    complete_first: bool  # round 0 holds every token, in order
    in_token_order: torch.Tensor | None = None  # every row, by token, when all tokens have as many

    @classmethod
    def of(cls, token_of_row: torch.Tensor, tokens: int) -> TokenBags:
        order = torch.argsort(token_of_row, stable=True)
        sorted_tokens = token_of_row[order]
        counts = torch.bincount(token_of_row, minlength=tokens)
        starts = torch.cumsum(counts, 0) - counts
        ordinal = torch.arange(order.numel(), device=order.device) - starts[sorted_tokens]
        rounds = []
        for j in range(int(counts.max()) if counts.numel() else 0):
            chosen = ordinal == j
            rounds.append((sorted_tokens[chosen], order[chosen]))
        complete = bool(rounds) and rounds[0][0].numel() == tokens
        uniform = len(rounds) > 1 and complete and bool((counts == len(rounds)).all())
        return cls(tokens, tuple(rounds), complete, order if uniform else None)

    def sum(self, source: torch.Tensor) -> torch.Tensor:
        """out[t] = the sum of the source rows of token t (zero for a token without rows)."""
        if self.in_token_order is not None:
            rows = torch.index_select(source, 0, self.in_token_order)
            return rows.view(self.tokens, len(self.rounds), *source.shape[1:]).sum(dim=1)
        if self.complete_first:
            out = torch.index_select(source, 0, self.rounds[0][1])
            rest = self.rounds[1:]
        else:
            out = torch.zeros(self.tokens, *source.shape[1:], dtype=source.dtype, device=source.device)
            rest = self.rounds
        for tokens, rows in rest:
            out.index_add_(0, tokens, torch.index_select(source, 0, rows))
        return out


def local_weight(weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Each row's router weights summed over its slots (masked slots are 0): with identity experts,
    the weighted sum of a token's local expert outputs is its row times this."""
    return weights.sum(dim=1, keepdim=True).to(dtype)
