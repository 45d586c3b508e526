"""The reference backends' layouts and round trip on a one-rank gloo group in this process.

The same backends at EP 2, under real `mpirun` ranks, are checked by
tests/integration/test_bench_mpirun.py (and its helper ep_reference_check.py).
"""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist

from moecomm_tasks.bench.baselines import time_all_gather, time_all_to_all
from moecomm_tasks.bench.refbase import RowFormat, TokenBags, per_expert_plan, per_rank_plan
from moecomm_tasks.bench.reference import REFERENCE, BackendUnavailable, TorchAllToAll
from moecomm_tasks.bench.symm_mem import TorchSymmMem, slots_per_rank
from moecomm_tasks.bench.workload import Routing, check_round_trip, make_routing

RUNS_ON_CPU = sorted(name for name in REFERENCE if name != "TORCH_SYMM_MEM")


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


def build(name, experts=16, **kwargs):
    return REFERENCE[name](rank=0, ep_size=1, experts_per_rank=experts, **kwargs)


@pytest.mark.parametrize("hidden", [64, 66, 63])  # gathered as int64, int32 and int16 words
@pytest.mark.parametrize("name", RUNS_ON_CPU)
def test_round_trip_returns_the_router_weighted_sum(group, name, hidden):
    backend = build(name)
    work = routing(hidden=hidden)
    backend.prepare(work)
    assert check_round_trip(backend, work) is None
    out = backend.combine(backend.expert_output(backend.dispatch()))
    expected = work.hidden.float() * work.topk_weights.sum(dim=1, keepdim=True)
    assert torch.allclose(out.float(), expected, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("name", RUNS_ON_CPU)
def test_dispatch_delivers_every_token_and_its_experts(group, name):
    work = routing()
    backend = build(name)
    backend.prepare(work)
    received = backend.dispatch()
    ids = backend.local_ids()
    assert sorted(ids.tolist()) == sorted(work.topk_ids.flatten().tolist())
    rows = {tuple(row) for row in received.float().tolist()}
    assert rows == {tuple(row) for row in work.hidden.float().tolist()}


def test_payload_bytes_count_one_copy_per_destination(group):
    work = routing(tokens=24, hidden=64, top_k=4)
    per_rank, per_expert = build("TORCH_ALLTOALL"), build("TORCH_ALLTOALL_PER_EXPERT")
    per_rank.prepare(work)
    per_expert.prepare(work)
    assert per_rank.payload_bytes(work) == 24 * 64 * 2
    assert per_expert.payload_bytes(work) == 24 * 4 * 64 * 2


def fixed_routing(ids, hidden=8):
    ids = torch.tensor(ids, dtype=torch.int32)
    weights = torch.arange(1, ids.numel() + 1, dtype=torch.float32).view(ids.shape) / 10
    return Routing(torch.randn(ids.shape[0], hidden).to(torch.bfloat16), ids, weights)


def test_per_rank_plan_sends_a_token_once_to_each_rank_with_its_experts_there():
    # 4 ranks of 2 experts: token 0 -> ranks 0 and 3, token 1 -> ranks 1 and 3, token 2 -> ranks 0, 1, 2.
    work = fixed_routing([[0, 7, 1], [2, 3, 6], [5, 1, 3]])
    plan = per_rank_plan(work, experts_per_rank=2, ep_size=4)
    assert list(zip(plan.dest.tolist(), plan.token.tolist())) == [(0, 0), (0, 2), (1, 1), (1, 2), (2, 2), (3, 0), (3, 1)]
    assert plan.ids.tolist() == [[0, -1, 1], [-1, 1, -1], [2, 3, -1], [-1, -1, 3], [5, -1, -1], [-1, 7, -1], [-1, -1, 6]]
    w = work.topk_weights
    assert plan.weights[0].tolist() == [w[0, 0].item(), 0.0, w[0, 2].item()]
    assert plan.weights[3].tolist() == [0.0, 0.0, w[2, 2].item()]


def test_per_expert_plan_sends_one_row_per_expert_grouped_by_expert():
    work = fixed_routing([[3, 0], [0, 2]])
    plan = per_expert_plan(work, experts_per_rank=2)
    assert plan.token.tolist() == [0, 1, 1, 0]
    assert plan.ids.flatten().tolist() == [0, 0, 2, 3]
    assert plan.dest.tolist() == [0, 0, 1, 1]
    assert plan.weights.flatten().tolist() == pytest.approx([0.2, 0.3, 0.4, 0.1])


@pytest.mark.parametrize("hidden", [8, 6, 5])
def test_packed_rows_keep_payload_and_metadata_apart(hidden):
    work = fixed_routing([[3, 0], [0, 2], [1, 1]], hidden=hidden)
    plan = per_rank_plan(work, experts_per_rank=2, ep_size=2)
    fmt = RowFormat(hidden, 2)
    rows = fmt.empty(plan.token.numel(), torch.device("cpu"))
    fmt.write_meta(rows, plan)
    fmt.gather(work.hidden, plan.token, rows)
    assert torch.equal(fmt.payload(rows), work.hidden[plan.token])
    assert torch.equal(fmt.ids(rows), plan.ids) and torch.equal(fmt.weights(rows), plan.weights)


def test_token_bags_sum_each_tokens_rows():
    source = torch.arange(12, dtype=torch.float32).view(6, 2).to(torch.bfloat16)
    bags = TokenBags.of(torch.tensor([2, 0, 2, 1, 0, 2]), tokens=4)
    assert bags.sum(source).float().tolist() == [[10, 12], [6, 7], [14, 17], [0, 0]]


@pytest.mark.parametrize("token_of_row", [[1, 0, 1, 0, 2, 2], [0, 1, 2, 2, 0, 1, 1, 0, 2]])
def test_token_bags_of_tokens_with_as_many_rows_each(token_of_row):
    """The two-pass path (every token has the same number of rows) sums as the rounds do."""
    rows = torch.tensor(token_of_row)
    source = torch.randn(len(token_of_row), 5)
    bags = TokenBags.of(rows, tokens=3)
    assert bags.in_token_order is not None
    expected = torch.stack([source[rows == t].sum(dim=0) for t in range(3)])
    assert torch.allclose(bags.sum(source), expected, atol=1e-6)


def test_symm_mem_is_skipped_on_cpus_with_a_reason(group):
    with pytest.raises(BackendUnavailable, match="needs CUDA GPUs with NVSHMEM; this run uses gloo"):
        TorchSymmMem(0, 1, 16, max_num_tokens_per_rank=64, hidden_size=64, top_k=4)


@pytest.mark.parametrize(("experts_per_rank", "slots"), [(256, 16), (128, 16), (896, 16), (448, 16), (96, 16),
                                                         (24, 12), (7, 7), (34, 2), (1, 1)])
def test_symm_mem_slots_respect_the_kernels_limit(experts_per_rank, slots):
    assert slots_per_rank(experts_per_rank) == slots


class LosesOneToken(TorchAllToAll):
    """TEST DOUBLE: a deliberately broken backend (combine drops the first token's output)."""

    def combine(self, expert_out):
        out = super().combine(expert_out)
        out[0] = 0
        return out


def test_check_catches_a_wrong_combine(group):
    backend = LosesOneToken(rank=0, ep_size=1, experts_per_rank=16)
    work = routing()
    backend.prepare(work)
    problem = check_round_trip(backend, work)
    assert problem is not None and "differs from the router-weighted sum" in problem


def test_extra_combine_passes_keep_the_result(group):
    backend = TorchAllToAll(rank=0, ep_size=1, experts_per_rank=16, extra_combine_passes=3)
    work = routing()
    backend.prepare(work)
    assert check_round_trip(backend, work) is None


def test_collective_baselines_time_every_iteration(group):
    a2a = time_all_to_all([1000], 0, torch.device("cpu"), iters=7)
    gather = time_all_gather(1000, 1, torch.device("cpu"), iters=5)
    assert len(a2a) == 7 and len(gather) == 5 and all(t > 0 for t in a2a + gather)
