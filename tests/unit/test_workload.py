"""The benchmark's inputs: seeds per rank and the perfect router's balanced schedule."""

from __future__ import annotations

import pytest
import torch

from moecomm_tasks.bench.workload import balanced_expert_ids, make_routing, rank_generator

CPU = torch.device("cpu")


def test_each_rank_seeds_with_the_random_seed_plus_its_rank():
    ours = torch.rand(5, generator=rank_generator(1234, 3, CPU))
    assert torch.equal(ours, torch.rand(5, generator=torch.Generator().manual_seed(1237)))
    assert not torch.equal(ours, torch.rand(5, generator=rank_generator(1234, 2, CPU)))


def test_the_perfect_router_follows_the_contracts_formula():
    ids = balanced_expert_ids(tokens=3, top_k=2, num_experts=8, rank=1, ep_size=2, device=CPU)
    # slot i = token * top_k + k; schedule s = i + rank; rank s % EP; local expert (s // EP) % 4.
    expected = [[(s % 2) * 4 + (s // 2) % 4 for s in (i + 1, i + 2)] for i in (0, 2, 4)]
    assert ids.tolist() == expected and ids.dtype == torch.int32


@pytest.mark.parametrize("ep_size, experts, top_k", [(2, 8, 2), (4, 16, 6), (8, 256, 8), (3, 12, 5)])
def test_the_perfect_router_balances_every_rank_and_expert(ep_size, experts, top_k):
    tokens = experts * 3  # a whole number of cycles through every expert
    per_rank = experts // ep_size
    for rank in range(ep_size):
        ids = balanced_expert_ids(tokens, top_k, experts, rank, ep_size, CPU).long().flatten()
        counts = torch.bincount(ids, minlength=experts)
        assert int(counts.max() - counts.min()) <= 1
        ranks = torch.bincount(ids // per_rank, minlength=ep_size)
        assert int(ranks.max() - ranks.min()) <= 1


def test_make_routing_uses_the_perfect_router_when_asked():
    routing = make_routing(16, 8, 2, 8, CPU, rank_generator(1, 0, CPU), perfect_router=True, rank=0, ep_size=2)
    assert torch.equal(routing.topk_ids, balanced_expert_ids(16, 2, 8, 0, 2, CPU))
    random = make_routing(16, 8, 2, 8, CPU, rank_generator(1, 0, CPU))
    assert not torch.equal(random.topk_ids, routing.topk_ids)
