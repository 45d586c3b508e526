"""Checks of the reference backends across real ranks: run as `mpirun -np N python ep_reference_check.py`.

Every rank builds its own routing; the ranks then compare what each received against what the
others meant to send it (the exact rows, expert ids and router weights, each token once per rank
for TORCH_ALLTOALL, once per expert for TORCH_ALLTOALL_PER_EXPERT and TORCH_SYMM_MEM), run the
round-trip check, and time the all-to-all baseline with uneven bytes per rank. Cases include
uneven token counts, odd hidden sizes and a rank that receives nothing. TORCH_SYMM_MEM runs on
the gloo test double of PyTorch's NVSHMEM kernels (tests/fakes/symm_mem_ops.py: no GPU here).
Rank 0 prints one line per problem and exits 1 if any rank found one. Used by
tests/integration/test_bench_mpirun.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from moecomm_tasks.bench import ranks as ranks_mod
from moecomm_tasks.bench.baselines import time_all_to_all
from moecomm_tasks.bench.reference import REFERENCE
from moecomm_tasks.bench.workload import Routing, check_round_trip, make_routing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fakes"))
from symm_mem_ops import TorchSymmMemOnGloo  # noqa: E402  (the test double, see the docstring)

ALL_TO_ALL = ("TORCH_ALLTOALL", "TORCH_ALLTOALL_PER_EXPERT", "TORCH_SYMM_MEM")
PER_EXPERT = ("TORCH_ALLTOALL_PER_EXPERT", "TORCH_SYMM_MEM")


def routings(rank: int, world: int) -> dict[str, tuple[Routing, int]]:
    """Named cases: (this rank's routing, number of experts)."""
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(100 + rank)
    everything_to_rank0 = make_routing(9, 16, 2, 4 * world, cpu, gen)
    everything_to_rank0 = Routing(everything_to_rank0.hidden, everything_to_rank0.topk_ids % 4,
                                  everything_to_rank0.topk_weights)
    return {
        "random": (make_routing(37, 40, 4, 4 * world, cpu, gen), 4 * world),
        "odd hidden": (make_routing(12, 33, 3, 4 * world, cpu, gen), 4 * world),
        "uneven tokens": (make_routing(5 + 18 * rank, 24, 2, 2 * world, cpu, gen), 2 * world),
        "one rank receives everything": (everything_to_rank0, 4 * world),
    }


def expected_rows(name: str, all_routings: list[Routing], rank: int, experts_per_rank: int) -> list[tuple]:
    """(payload, ids, weights) of every row this rank should receive, from every source rank."""
    rows = []
    for work in all_routings:
        for token in range(work.topk_ids.shape[0]):
            ids, weights = work.topk_ids[token].tolist(), work.topk_weights[token].tolist()
            here = [k for k, expert in enumerate(ids) if expert // experts_per_rank == rank]
            payload = tuple(work.hidden[token].float().tolist())
            if name == "TORCH_ALLTOALL" and here:
                rows.append((payload, tuple(ids[k] if k in here else -1 for k in range(len(ids))),
                             tuple(weights[k] if k in here else 0.0 for k in range(len(ids)))))
            elif name in PER_EXPERT:
                rows += [(payload, (ids[k],), (weights[k],)) for k in here]
    return sorted(rows)


def received_rows(backend, received: torch.Tensor) -> list[tuple]:
    rows = backend.dispatch_out[: backend.rows_received] if hasattr(backend, "valid") else backend.recv
    keep = backend.valid if hasattr(backend, "valid") else torch.ones(rows.shape[0], dtype=torch.bool)
    ids, weights = backend.fmt.ids(rows)[keep], backend.fmt.weights(rows)[keep]
    received = received[keep]
    return sorted((tuple(received[i].float().tolist()), tuple(ids[i].tolist()), tuple(weights[i].tolist()))
                  for i in range(received.shape[0]))


def slot_major(backend) -> bool:
    """TORCH_SYMM_MEM's received rows come slot by slot (expert-major), as torchtitan's experts expect."""
    ids = backend.fmt.ids(backend.dispatch_out[: backend.rows_received])[backend.valid][:, 0].long()
    slots = (ids % backend.experts_per_rank) // backend.experts_per_slot
    return bool((slots[1:] >= slots[:-1]).all())


def build(name: str, rank: int, world: int, experts: int, all_routings: list[Routing]):
    if name != "TORCH_SYMM_MEM":
        return REFERENCE[name](rank, world, experts // world)
    work = all_routings[rank]
    return TorchSymmMemOnGloo(rank, world, experts // world, max_num_tokens_per_rank=max(
        w.topk_ids.shape[0] for w in all_routings), hidden_size=work.hidden.shape[1], top_k=work.topk_ids.shape[1])


def main() -> int:
    comm, rank, world, local_rank = ranks_mod.mpi_world()
    ranks_mod.init_process_group(comm, rank, world, torch.device("cpu"), timeout_s=60)
    problems: list[str] = []
    checks = 0
    for case, (work, experts) in routings(rank, world).items():
        all_routings = comm.allgather(work)
        sizes = {w.topk_ids.shape[0] for w in all_routings}
        for name in (*ALL_TO_ALL, "TORCH_ALLGATHER"):
            if name == "TORCH_ALLGATHER" and len(sizes) > 1:
                continue  # it needs the same token count on every rank
            backend = build(name, rank, world, experts, all_routings)
            backend.prepare(work)
            failure = check_round_trip(backend, work)
            if failure:
                problems.append(f"rank {rank} {name} {case}: {failure}")
            if name in ALL_TO_ALL:
                got = received_rows(backend, backend.dispatch())
                if got != expected_rows(name, all_routings, rank, experts // world):
                    problems.append(f"rank {rank} {name} {case}: received {len(got)} rows, not the rows routed here")
            if name == "TORCH_SYMM_MEM" and not slot_major(backend):
                problems.append(f"rank {rank} {name} {case}: received rows are not in slot order")
            checks += 1
    bytes_per_rank = [1000 + 2333 * r for r in range(world)]
    times = time_all_to_all(bytes_per_rank, rank, torch.device("cpu"), iters=4)
    if len(times) != 4 or not all(t > 0 for t in times):
        problems.append(f"rank {rank}: all-to-all baseline returned {times}")
    everyone = comm.allgather(problems)
    if rank == 0:
        found = [p for per_rank in everyone for p in per_rank]
        print("\n".join(found) if found else f"ep_reference_check: {checks} checks passed on {world} ranks", flush=True)
    torch.distributed.destroy_process_group()
    return 1 if any(everyone) else 0


if __name__ == "__main__":
    sys.exit(main())
