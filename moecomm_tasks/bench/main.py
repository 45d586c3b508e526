"""The benchmark worker: one process per rank, started by `mpirun -np EP`.

Rank 0 prints the contract's JSON (`shared/reference/contract.md`): a run header, one result
object per (backend, local_batch_size), skip lines; `--output_file` also writes
`{"benchmark_metadata": ..., "results": [...]}`. Every decision that could split the ranks
(a backend that cannot be built, an infeasible size, a failed correctness check) is agreed on by
all ranks first, so that no rank waits forever in a collective; an exception on one rank aborts
the whole MPI job with the contract's worker traceback on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any, Sequence

import torch
import torch.distributed as dist

from moecomm_tasks.bench import ranks as ranks_mod
from moecomm_tasks.bench.args import TRTLLM_BACKENDS, ALL_BACKENDS, Shape, build_parser, resolve
from moecomm_tasks.bench.baselines import time_all_to_all  # refbackends: --a2a_baseline
from moecomm_tasks.bench.reference import REFERENCE, BackendUnavailable
from moecomm_tasks.bench.timing import PhaseTimes, stats, time_copy, time_phases
from moecomm_tasks.bench.trtllm import TrtllmBackend, load_api
from moecomm_tasks.bench.workload import check_round_trip, make_routing

PREFIX = "[bench_moe_comm]"
SEED = 1234


class Worker:
    def __init__(self, args: argparse.Namespace, shape: Shape, ranks: ranks_mod.Ranks) -> None:
        self.args = args
        self.shape = shape
        self.ranks = ranks
        self.results: list[dict[str, Any]] = []
        self.check_failures = 0

    # -- output (rank 0 only) ----------------------------------------------------------------
    def emit(self, obj: Any) -> None:
        if self.ranks.rank == 0:
            print(json.dumps(obj, indent=2), flush=True)

    def skip(self, backend: str, reason: str, size: int | None = None) -> None:
        if self.ranks.rank == 0:
            where = f"{backend} @ local_batch_size={size}" if size is not None else backend
            print(f"{PREFIX} Skipping {where}: {reason}", flush=True)

    def agree(self, problem: str | None, name_rank: bool = True) -> str | None:
        """The first rank's problem, if any rank has one (a collective: every rank must call it)."""
        problems = self.ranks.allgather(problem)
        unanimous = len(set(problems)) == 1
        for rank, found in enumerate(problems):
            if found:
                return f"rank {rank}: {found}" if name_rank and not unanimous else found
        return None

    def per_rank(self, values: list[float]) -> dict[str, Any]:
        everyone = self.ranks.allgather(values)
        if self.args.iter_stats:
            return {f"rank{r}": stats(v) for r, v in enumerate(everyone)}
        return {f"rank{r}": (sum(v) / len(v) if v else 0.0) for r, v in enumerate(everyone)}

    # -- backends ----------------------------------------------------------------------------
    def build(self, name: str, api: Any, unavailable: str | None) -> Any | None:
        shape = self.shape
        backend, problem = None, None
        if name in REFERENCE:
            # refbackends: sizes for backends with fixed workspaces; a backend that cannot run here says why.
            try:
                backend = REFERENCE[name](
                    self.ranks.rank, self.ranks.world_size, shape.num_experts // self.ranks.world_size,
                    self.args.extra_combine_passes, max_num_tokens_per_rank=shape.max_num_tokens_per_rank,
                    hidden_size=shape.hidden_size, top_k=shape.top_k)
            except BackendUnavailable as exc:
                problem = str(exc)
        elif api is None:
            problem = unavailable
        else:
            try:
                backend = TrtllmBackend(
                    api, name, rank=self.ranks.rank, ep_size=self.ranks.world_size, hidden_size=shape.hidden_size,
                    top_k=shape.top_k, num_experts=shape.num_experts, quant_algo=shape.quant_algo,
                    max_num_tokens_per_rank=shape.max_num_tokens_per_rank)
                if not backend.available:
                    problem = "factory returned None."
            except Exception as exc:  # the factory's own refusal: report it as the contract's skip
                problem = f"{type(exc).__name__}: {exc}"
        problem = self.agree(problem)
        if problem:
            self.skip(name, problem)
            return None
        return backend

    def run_size(self, backend: Any, size: int) -> None:
        shape, device = self.shape, self.ranks.device
        all_rank_num_tokens = self.ranks.allgather(size)
        is_trtllm = isinstance(backend, TrtllmBackend)
        if is_trtllm:
            problem = None
            try:
                if not backend.feasible(all_rank_num_tokens):
                    problem = "workload not feasible."
            except Exception as exc:
                problem = f"feasibility check failed: {exc}"
            problem = self.agree(problem, name_rank=False)
            if problem:
                self.skip(backend.name, problem, size)
                return
        generator = torch.Generator(device=device).manual_seed(SEED + 7919 * self.ranks.rank + size)
        routing = make_routing(size, shape.hidden_size, shape.top_k, shape.num_experts, device, generator)
        if is_trtllm:
            backend.prepare(routing, all_rank_num_tokens, quantize=False)
        else:
            backend.prepare(routing)
        failure = self.agree(check_round_trip(backend, routing))
        if failure:
            self.check_failures += 1
            message = f"correctness check failed: {failure}"
            if self.ranks.rank == 0:
                print(f"{PREFIX} ERROR: {backend.name} @ local_batch_size={size}: {message}", file=sys.stderr, flush=True)
            self.skip(backend.name, message, size)
            return
        if is_trtllm:
            backend.prepare(routing, all_rank_num_tokens, quantize=True)
        times = time_phases(
            backend.dispatch, lambda received: backend.combine(backend.timed_expert_output(received)),
            device=device, iters=self.args.iters, warmup=self.args.warmup,
            kernel_breakdown=self.args.kernel_breakdown, cuda_graph=self.args.cuda_graph,
        )
        for note in times.notes:
            if self.ranks.rank == 0:
                print(f"{PREFIX} note: {backend.name} @ local_batch_size={size}: {note}", file=sys.stderr, flush=True)
        self.report(backend, routing, size, times)

    def report(self, backend: Any, routing: Any, size: int, times: PhaseTimes) -> None:
        output: dict[str, Any] = {
            "backend": backend.name,
            "local_batch_size": size,
            "dispatch_us": self.per_rank(times.dispatch_us),
            "combine_us": self.per_rank(times.combine_us),
            "payload_dtype": str(backend.payload_dtype),
            "payload_bytes": backend.payload_bytes(routing),
            "timing_method": times.method,
        }
        if times.kernels is not None:
            for phase in ("dispatch", "combine", "other"):
                output[f"{phase}_kernels"] = self.kernel_list(times.kernels.get(phase, {}))
            output["profiler_us"] = {phase: self.per_rank(times.profiler_us[phase]) for phase in ("dispatch", "combine")}
            output["kernel_span_us"] = {phase: self.per_rank(times.kernel_span_us[phase]) for phase in ("dispatch", "combine")}
        if self.args.copy_baseline and self.ranks.device.type == "cuda":
            output["copy_us"] = self.per_rank(time_copy(output["payload_bytes"], self.ranks.device, self.args.iters))
        if self.args.a2a_baseline:  # refbackends: a collective, so every rank passes every rank's bytes
            output["a2a_us"] = self.per_rank(time_all_to_all(
                self.ranks.allgather(output["payload_bytes"]), self.ranks.rank, self.ranks.device, self.args.iters))
        self.emit(output)
        self.results.append(output)
        self.ranks.barrier()

    def kernel_list(self, mine: dict[str, list[float]]) -> list[dict[str, Any]]:
        everyone = self.ranks.allgather(mine)
        names = sorted({name for per_rank in everyone for name in per_rank})
        entries = []
        for name in names:
            per_rank_times = [per_rank.get(name, []) for per_rank in everyone]
            entry = {
                "name": name,
                "count": max(len(t) for t in per_rank_times),
                "per_rank": {
                    f"rank{r}": (stats(t) if self.args.iter_stats else (sum(t) / len(t) if t else 0.0))
                    for r, t in enumerate(per_rank_times)
                },
            }
            entries.append(entry)
        mean = lambda e: sum(v["mean"] if isinstance(v, dict) else v for v in e["per_rank"].values())  # noqa: E731
        return sorted(entries, key=mean, reverse=True)

    def run(self) -> int:
        args, shape, ranks = self.args, self.shape, self.ranks
        names = [args.backend] if args.backend else list(ALL_BACKENDS)
        api, unavailable = (None, None)
        if any(n in TRTLLM_BACKENDS for n in names):
            api, unavailable = load_api()
        timing_method = "monotonic_clock" if ranks.device.type == "cpu" else (
            "cuda_events+cuda_graph" if args.cuda_graph else "cuda_events")
        header = {
            "bench": "bench_moe_comm",
            "launcher": "mpirun",
            "profile": args.profile,
            "backend": args.backend,
            "ep_size": ranks.world_size,
            "hidden_size": shape.hidden_size,
            "local_batch_size": list(shape.local_batch_sizes),
            "top_k": shape.top_k,
            "dtype": str(torch.bfloat16),
            "quant_algo": shape.quant_algo,
            "experts_per_rank": shape.num_experts // ranks.world_size,
            "num_experts_total": shape.num_experts,
            "max_num_tokens_per_rank": shape.max_num_tokens_per_rank,
            "device_count": torch.cuda.device_count() if ranks.device.type == "cuda" else 0,
            "cuda_graph": ranks.device.type == "cuda" and args.cuda_graph,
            "extra_combine_passes": args.extra_combine_passes,
            "provenance": ranks_mod.provenance(ranks, timing_method, {"version": api.version, "commit": api.commit} if api else {}),
        }
        self.emit(header)
        for name in names:
            backend = self.build(name, api, unavailable)
            if backend is None:
                continue
            for size in shape.local_batch_sizes:
                self.run_size(backend, size)
        if ranks.rank == 0 and args.output_file and self.results:
            with open(args.output_file, "w", encoding="utf-8") as handle:
                json.dump({"benchmark_metadata": header, "results": self.results}, handle, indent=2)
            print(f"Report written to {args.output_file}", flush=True)
        return 1 if self.check_failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    comm, rank, world_size, local_rank = ranks_mod.mpi_world()
    ep_size = 8 if args.ep_size is None else args.ep_size
    if ep_size != world_size:
        parser.error(
            f"--ep_size {ep_size} does not match the MPI world size {world_size}: start one rank per GPU, "
            f"e.g. mpirun -np {ep_size} python -m moecomm_tasks.bench --ep_size {ep_size} ..."
        )
    try:
        shape = resolve(args, ep_size)
    except ValueError as exc:
        parser.error(str(exc))
    os.environ.setdefault("TRTLLM_CAN_USE_DEEP_EP", "1")
    try:
        device = ranks_mod.pick_device(args.device, local_rank)
        ranks_mod.init_process_group(comm, rank, world_size, device, args.timeout_s)
        ranks = ranks_mod.Ranks(comm, rank, world_size, local_rank, device)
        code = Worker(args, shape, ranks).run()
        dist.destroy_process_group()
        return code
    except Exception:
        sys.stderr.write(
            "[bench_moe_comm worker] uncaught exception:\n"
            f"rank={rank}/{world_size} local_rank={local_rank} pid={os.getpid()}\n"
            f"Worker traceback:\n{traceback.format_exc()}\n"
        )
        sys.stderr.flush()
        if world_size > 1:
            comm.Abort(1)
        return 1
