"""NCCL's own all_gather of TORCH_ALLGATHER's dispatch bytes, per profile and token count.

Usage: mpirun -np EP python3 tests/benchmarks/nccl_allgather.py --output OUT.json [--iters N]
       [--profile NAME:HIDDEN ...] [-b 128 -e 4096 -f 2]
Each rank all-gathers tokens x hidden bf16 values (what TORCH_ALLGATHER's dispatch gathers, its
`payload_bytes`), timed like the worker's baselines (bench/baselines.py: CUDA events, L2 flushed,
a spin kernel ahead of each call; a monotonic clock on CPUs). Rank 0 writes
{"ep_size", "device", "results": [{"profile", "local_batch_size", "bytes", "all_gather_us": {rankN: stats}}]}.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.distributed as dist

from moecomm_tasks.bench import ranks as ranks_mod
from moecomm_tasks.bench.baselines import time_all_gather
from moecomm_tasks.bench.timing import stats

PROFILES = ("deepseek_v3:7168", "gpt_oss:2880", "deepseek_v4_pro:7168", "kimi_k3:3584")


def sizes(low: int, high: int, factor: float) -> list[int]:
    out, value = [], float(low)
    while int(value) <= high:
        out.append(int(value))
        value *= factor
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--profile", action="append", default=None, help="NAME:HIDDEN (default: the four profiles)")
    parser.add_argument("-b", type=int, default=128)
    parser.add_argument("-e", type=int, default=4096)
    parser.add_argument("-f", type=float, default=2.0)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--timeout_s", type=float, default=300.0)
    args = parser.parse_args(argv)
    if args.f <= 1.0 or args.b <= 0 or args.e < args.b:
        parser.error("need 0 < -b <= -e and -f > 1")
    comm, rank, world, local_rank = ranks_mod.mpi_world()
    device = ranks_mod.pick_device("auto", local_rank)
    ranks_mod.init_process_group(comm, rank, world, device, args.timeout_s)
    results = []
    for spec in args.profile or PROFILES:
        name, hidden = spec.split(":")
        for tokens in sizes(args.b, args.e, args.f):
            nbytes = tokens * int(hidden) * 2
            mine = time_all_gather(nbytes, world, device, args.iters)
            everyone = comm.allgather(stats(mine))
            results.append({"profile": name, "local_batch_size": tokens, "bytes": nbytes,
                            "all_gather_us": {f"rank{r}": s for r, s in enumerate(everyone)}})
    if rank == 0:
        with open(args.output, "w", encoding="utf-8") as handle:
            json.dump({"ep_size": world, "device": str(device), "results": results}, handle, indent=2)
        print(f"all_gather baseline: {len(results)} points written to {args.output}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
