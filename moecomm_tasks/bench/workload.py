"""The workload of one (backend, size): random tokens and routing, and the correctness check."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Routing:
    hidden: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor


def rank_generator(random_seed: int, rank: int, device: torch.device) -> torch.Generator:
    """The inputs' random source on one rank: seeded with random_seed + rank, as upstream's."""
    return torch.Generator(device=device).manual_seed(random_seed + rank)


def make_routing(tokens: int, hidden: int, top_k: int, num_experts: int, device: torch.device,
                 generator: torch.Generator, perfect_router: bool = False, rank: int = 0,
                 ep_size: int = 1) -> Routing:
    """Random tokens and uniform top-k routing (distinct experts per token), as the contract states.

    With `perfect_router` the expert ids follow the contract's balanced schedule instead: the
    (token, k) slots of rank `rank`, numbered i = token * top_k + k, go to rank (i + rank) mod EP,
    local expert ((i + rank) div EP) mod experts-per-rank, so every rank and expert receives the
    same share whatever the seed.
    """
    x = torch.randn(tokens, hidden, generator=generator, device=device).to(torch.bfloat16)
    if perfect_router:
        ids = balanced_expert_ids(tokens, top_k, num_experts, rank, ep_size, device)
    else:
        scores = torch.rand(tokens, num_experts, generator=generator, device=device)
        ids = scores.topk(top_k, dim=1).indices.to(torch.int32)
    weights = torch.rand(tokens, top_k, generator=generator, device=device, dtype=torch.float32)
    return Routing(x, ids, weights)


def balanced_expert_ids(tokens: int, top_k: int, num_experts: int, rank: int, ep_size: int,
                        device: torch.device) -> torch.Tensor:
    """The contract's perfect-router expert ids ([tokens, top_k], int32, global expert ids)."""
    experts_per_rank = num_experts // ep_size
    schedule = torch.arange(tokens * top_k, device=device, dtype=torch.int64) + rank
    target_rank = schedule % ep_size
    local_expert = (schedule // ep_size) % experts_per_rank
    return (target_rank * experts_per_rank + local_expert).view(tokens, top_k).to(torch.int32)


def check_round_trip(backend, routing: Routing) -> str | None:
    """Combine after dispatch, with identity experts, must return the router-weighted sum.

    Returns None when it does, or what is wrong. Also checks that every expert id a rank
    received belongs to it.
    """
    received = backend.dispatch()
    local = backend.local_ids().long() // backend.experts_per_rank
    if local.numel() and not bool((local == backend.rank).all()):
        return "a rank received tokens for experts it does not own"
    out = backend.combine(backend.expert_output(received))
    expected = routing.hidden.float() * routing.topk_weights.sum(dim=1, keepdim=True)
    tolerance = {torch.bfloat16: 3e-2, torch.float16: 3e-3, torch.float32: 1e-5}[routing.hidden.dtype]
    error = (out.float() - expected).abs()
    bound = tolerance * (expected.abs() + 1.0)
    if not bool((error <= bound).all()):
        worst = float((error - bound).max())
        return f"combine(dispatch(x)) differs from the router-weighted sum by up to {worst:.4g} beyond tolerance"
    return None
