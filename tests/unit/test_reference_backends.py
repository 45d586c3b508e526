"""The reference backends' round trip on a one-rank gloo group in this process."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist

from moecomm_tasks.bench.reference import REFERENCE, TorchAllToAll
from moecomm_tasks.bench.workload import check_round_trip, make_routing


@pytest.fixture(scope="module")
def group():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def routing(tokens=24, hidden=64, top_k=4, experts=16, seed=0):
    return make_routing(tokens, hidden, top_k, experts, torch.device("cpu"), torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_round_trip_returns_the_router_weighted_sum(group, name):
    backend = REFERENCE[name](rank=0, ep_size=1, experts_per_rank=16)
    work = routing()
    backend.prepare(work)
    assert check_round_trip(backend, work) is None
    out = backend.combine(backend.expert_output(backend.dispatch()))
    expected = work.hidden.float() * work.topk_weights.sum(dim=1, keepdim=True)
    assert torch.allclose(out.float(), expected, rtol=3e-2, atol=3e-2)


def test_routing_picks_distinct_experts_per_token():
    work = routing(tokens=200, top_k=8, experts=16)
    assert all(len(set(row.tolist())) == 8 for row in work.topk_ids)
    assert int(work.topk_ids.min()) >= 0 and int(work.topk_ids.max()) < 16


class DropsOneExpert(TorchAllToAll):
    """TEST DOUBLE: a deliberately broken backend (combine loses each token's first expert output)."""

    def combine(self, expert_out):
        out = super().combine(expert_out)
        first = self.token_major.view(self.tokens, self.top_k, -1)[:, 0]
        return out - first * self.weights[:, 0, :1]


def test_check_catches_a_wrong_combine(group):
    backend = DropsOneExpert(rank=0, ep_size=1, experts_per_rank=16)
    work = routing()
    backend.prepare(work)
    problem = check_round_trip(backend, work)
    assert problem is not None and "differs from the router-weighted sum" in problem


def test_extra_combine_passes_keep_the_result(group):
    backend = TorchAllToAll(rank=0, ep_size=1, experts_per_rank=16, extra_combine_passes=3)
    work = routing()
    backend.prepare(work)
    assert check_round_trip(backend, work) is None
