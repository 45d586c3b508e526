"""The workload of one (backend, size): random tokens and routing, and the correctness check."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Routing:
    hidden: torch.Tensor
    topk_ids: torch.Tensor
    topk_weights: torch.Tensor


def make_routing(tokens: int, hidden: int, top_k: int, num_experts: int, device: torch.device,
                 generator: torch.Generator) -> Routing:
    """Random tokens and uniform top-k routing (distinct experts per token), as the contract states."""
    x = torch.randn(tokens, hidden, generator=generator, device=device).to(torch.bfloat16)
    scores = torch.rand(tokens, num_experts, generator=generator, device=device)
    ids = scores.topk(top_k, dim=1).indices.to(torch.int32)
    weights = torch.rand(tokens, top_k, generator=generator, device=device, dtype=torch.float32)
    return Routing(x, ids, weights)


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
