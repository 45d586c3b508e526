"""The benchmark worker: one process per rank, started by `mpirun -np EP` (or `srun`).

Rank 0 prints the contract's JSON (`shared/reference/contract.md`, today's upstream version): a
run header, one result object per (backend, local_batch_size), skip lines; `--output_file` also
writes `{"benchmark_metadata": ..., "results": [...]}`. Every decision that could split the ranks
(a backend that cannot be built, an infeasible size, a failed correctness check, a size whose
kernel spans could not be attributed) is agreed on by all ranks first, so that no rank waits
forever in a collective; an exception on one rank aborts the whole MPI job with the contract's
worker traceback on stderr.
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
from moecomm_tasks.bench.args import ALL_BACKENDS, TRTLLM_BACKENDS, Shape, build_parser, resolve
from moecomm_tasks.bench.kernel_spans import KernelTrace, SpanError
from moecomm_tasks.bench.baselines import time_all_to_all
from moecomm_tasks.bench.reference import REFERENCE, BackendUnavailable
from moecomm_tasks.bench.timing import PhaseTimes, stats, time_copy, time_phases
from moecomm_tasks.bench.trtllm import TrtllmBackend, load_api
from moecomm_tasks.bench.workload import check_round_trip, make_routing, rank_generator

PREFIX = "[bench_moe_comm]"
# Variables set for TensorRT-LLM before it is imported, as upstream sets them for its workers.
TRTLLM_ENV = {"TRTLLM_CAN_USE_DEEP_EP": "1"}
# Set by the launchers that start ranks themselves (Open MPI's mpirun, PMIx, Slurm's srun).
EXTERNAL_LAUNCH_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "SLURM_PROCID")


def span_warning(reason: str) -> str:
    """The text that says a run (or one size of it) is timed by CUDA events instead of kernel
    spans; it starts as upstream's does, so that readers of either find it."""
    return (
        "CUPTI kernel-span timing is unavailable; timing with CUDA events instead, which also count "
        "the idle time before a phase's first kernel and after its last. Reason: " + reason
    )


class Worker:
    def __init__(self, args: argparse.Namespace, shape: Shape, ranks: ranks_mod.Ranks,
                 trace: KernelTrace | None, warning: str | None) -> None:
        self.args = args
        self.shape = shape
        self.ranks = ranks
        self.trace = trace
        self.cuda_graph = ranks.device.type == "cuda" and not args.no_cuda_graph
        self.header: dict[str, Any] = {}
        self.warning = warning
        self.warned = False
        self.results: list[dict[str, Any]] = []
        self.check_failures = 0

    # -- output (rank 0 only) ----------------------------------------------------------------
    def say(self, line: str, stream: Any = None) -> None:
        if self.ranks.rank == 0:
            print(f"{PREFIX} {line}", file=stream or sys.stdout, flush=True)

    def emit(self, obj: Any) -> None:
        if self.ranks.rank == 0:
            print(json.dumps(obj, indent=2), flush=True)

    def skip(self, backend: str, reason: str, size: int | None = None) -> None:
        where = f"{backend} @ local_batch_size={size}" if size is not None else backend
        self.say(f"Skipping {where}: {reason}")

    def warn(self, warning: str) -> None:
        """Add to the run's `warning` (kept in the output file's metadata); print the line once."""
        self.warning = f"{self.warning}\n{warning}" if self.warning else warning
        if not self.warned:
            self.say(f"WARNING: {warning}")
            self.warned = True

    def agree(self, problem: str | None, name_rank: bool = True) -> str | None:
        """The first rank's problem, if any rank has one (a collective: every rank must call it)."""
        problems = self.ranks.allgather(problem)
        unanimous = len(set(problems)) == 1
        for rank, found in enumerate(problems):
            if found:
                return f"rank {rank}: {found}" if name_rank and not unanimous else found
        return None

    def per_rank(self, values: list[float] | None) -> dict[str, Any]:
        everyone = self.ranks.allgather(values)
        return {f"rank{r}": self._summary(v) for r, v in enumerate(everyone)}

    def _summary(self, values: list[float] | None) -> Any:
        if values is None:
            return None
        if self.args.iter_stats:
            return stats(values)
        return sum(values) / len(values) if values else 0.0

    # -- backends ----------------------------------------------------------------------------
    def build(self, name: str, api: Any, unavailable: str | None) -> Any | None:
        shape, args = self.shape, self.args
        backend, problem = None, None
        if name in REFERENCE:
            # Sizes for backends with fixed workspaces; a backend that cannot run here says why.
            try:
                backend = REFERENCE[name](
                    self.ranks.rank, self.ranks.world_size, shape.num_experts // self.ranks.world_size,
                    args.extra_combine_passes, max_num_tokens_per_rank=shape.max_num_tokens_per_rank,
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
                    max_num_tokens_per_rank=shape.max_num_tokens_per_rank,
                    payload_in_workspace=not args.no_payload_in_workspace,
                    low_precision_combine=args.use_low_precision_combine)
                if not backend.available:
                    problem = "factory returned None."
            except Exception as exc:  # the factory's own refusal: report it as the contract's skip
                problem = f"{type(exc).__name__}: {exc}"
        problem = self.agree(problem)
        if problem:
            self.skip(name, problem)
            return None
        return backend

    def knobs(self, backend: Any) -> dict[str, Any]:
        """What this backend is timed with, as asked or as it can; says once what it cannot honour."""
        args = self.args
        if isinstance(backend, TrtllmBackend):
            if not args.no_payload_in_workspace and not backend.payload_in_workspace:
                self.say(f"{backend.name} has no combine input region; timing it without payload_in_workspace.")
            return {"payload_in_workspace": backend.payload_in_workspace,
                    "low_precision_combine": bool(args.use_low_precision_combine), "pdl": bool(args.pdl)}
        if not args.no_payload_in_workspace:
            self.say(f"{backend.name} has no combine input region; timing it without payload_in_workspace.")
        unhonoured = []
        if args.pdl:
            unhonoured.append("--pdl: it launches no TensorRT-LLM kernels")
        if args.use_low_precision_combine:
            unhonoured.append("--use_low_precision_combine: it combines in bf16")
        for line in unhonoured:
            flag, why = line.split(": ", 1)
            self.say(f"{backend.name} cannot honour {flag} ({why}); timing it without.")
        knobs: dict[str, Any] = {"payload_in_workspace": False, "low_precision_combine": False, "pdl": False}
        if unhonoured:
            knobs["unhonoured"] = unhonoured
        return knobs

    def run_size(self, backend: Any, size: int, knobs: dict[str, Any]) -> None:
        shape, device, args = self.shape, self.ranks.device, self.args
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
        # Every backend and size sees the same inputs on a rank: seeded with random_seed + rank.
        generator = rank_generator(args.random_seed, self.ranks.rank, device)
        routing = make_routing(size, shape.hidden_size, shape.top_k, shape.num_experts, device, generator,
                               perfect_router=args.perfect_router, rank=self.ranks.rank,
                               ep_size=self.ranks.world_size)
        if is_trtllm:
            backend.prepare(routing, all_rank_num_tokens, quantize=False)
        else:
            backend.prepare(routing)
        failure = self.agree(check_round_trip(backend, routing))
        if failure:
            self.check_failures += 1
            message = f"correctness check failed: {failure}"
            self.say(f"ERROR: {backend.name} @ local_batch_size={size}: {message}", sys.stderr)
            self.skip(backend.name, message, size)
            return
        if is_trtllm:
            backend.prepare(routing, all_rank_num_tokens, quantize=True)
        times = time_phases(
            backend.dispatch, backend.timed_expert_output, backend.combine, device=device, iters=args.iters,
            warmup=args.warmup, method=args.timing_method, cuda_graph=self.cuda_graph,
            kernel_breakdown=args.kernel_breakdown, trace=self.trace,
        )
        for note in times.notes:
            self.say(f"note: {backend.name} @ local_batch_size={size}: {note}", sys.stderr)
        self.settle_method(backend.name, size, times)
        self.report(backend, routing, size, times, knobs)

    def settle_method(self, name: str, size: int, times: PhaseTimes) -> None:
        """One timing method per size on every rank: CUDA events on all of them when any rank's
        kernel spans could not be attributed (that rank says why in the run's warning)."""
        reasons = self.ranks.allgather(times.fallback)
        if not any(reasons):
            return
        if times.method == "kernel_span":
            events = times.alternatives.pop("cuda_events")
            times.alternatives["kernel_span"] = {"dispatch": times.dispatch_us, "combine": times.combine_us}
            times.dispatch_us, times.combine_us, times.method = events["dispatch"], events["combine"], "cuda_events"
        why = "; ".join(f"rank{r}: {reason}" for r, reason in enumerate(reasons) if reason)
        self.warn(span_warning(f"{name} @ local_batch_size={size}: {why}"))

    def report(self, backend: Any, routing: Any, size: int, times: PhaseTimes, knobs: dict[str, Any]) -> None:
        output: dict[str, Any] = {
            "backend": backend.name,
            "payload_in_workspace": knobs["payload_in_workspace"],
            "local_batch_size": size,
            "dispatch_us": self.per_rank(times.dispatch_us),
            "combine_us": self.per_rank(times.combine_us),
            "timing_method": times.method,
            "low_precision_combine": knobs["low_precision_combine"],
            "pdl": knobs["pdl"],
            "payload_dtype": str(backend.payload_dtype),
            "payload_bytes": backend.payload_bytes(routing),
        }
        if "unhonoured" in knobs:
            output["unhonoured"] = knobs["unhonoured"]
        if self.args.kernel_breakdown:
            kernels = times.kernels or {}
            for phase in ("dispatch", "combine", "other"):
                output[f"{phase}_kernels"] = self.kernel_list(kernels.get(phase, {}))
            alternatives = self.alternatives(times)
            if alternatives:
                output["timing_alternatives"] = alternatives
        if self.args.copy_baseline and self.ranks.device.type == "cuda":
            output["copy_us"] = self.per_rank(time_copy(output["payload_bytes"], self.ranks.device, self.args.iters))
        if self.args.a2a_baseline:  # a collective: every rank passes every rank's bytes
            output["a2a_us"] = self.per_rank(time_all_to_all(
                self.ranks.allgather(output["payload_bytes"]), self.ranks.rank, self.ranks.device, self.args.iters))
        self.emit(output)
        self.results.append(output)
        self.ranks.barrier()

    def alternatives(self, times: PhaseTimes) -> dict[str, Any]:
        """The same iterations measured by the other method(s) every rank has, per phase and rank."""
        everyone = self.ranks.allgather(times.alternatives)
        shared = set.intersection(*(set(a) for a in everyone))
        return {
            method: {f"{phase}_us": {f"rank{r}": self._summary(a[method][phase]) for r, a in enumerate(everyone)}
                     for phase in ("dispatch", "combine")}
            for method in sorted(shared)
        }

    def kernel_list(self, mine: dict[str, list[float]]) -> list[dict[str, Any]]:
        everyone = self.ranks.allgather(mine)
        names = sorted({name for per_rank in everyone for name in per_rank})
        entries = []
        for name in names:
            per_rank_times = [per_rank.get(name, []) for per_rank in everyone]
            entries.append({
                "name": name,
                "count": max(len(t) for t in per_rank_times),
                # A rank that did not run the kernel shows 0.0 (or all-zero stats), as upstream's.
                "per_rank": {f"rank{r}": self._summary(t) for r, t in enumerate(per_rank_times)},
            })
        mean = lambda e: sum(v["mean"] if isinstance(v, dict) else v for v in e["per_rank"].values())  # noqa: E731
        return sorted(entries, key=mean, reverse=True)

    def make_header(self, api: Any) -> dict[str, Any]:
        args, shape, ranks = self.args, self.shape, self.ranks
        cuda = ranks.device.type == "cuda"
        method = args.timing_method if cuda else "host_clock"
        external = any(v in os.environ for v in EXTERNAL_LAUNCH_VARIABLES)
        return {
            "bench": "bench_moe_comm",
            "launcher": "external_mpi" if external else "singleton",
            "profile": args.profile,
            "backend": args.backend,
            "ep_size": ranks.world_size,
            "hidden_size": shape.hidden_size,
            "local_batch_size": list(shape.local_batch_sizes),
            "top_k": shape.top_k,
            "dtype": str(torch.bfloat16),
            "quant_algo": shape.quant_algo,
            "perfect_router": bool(args.perfect_router),
            "experts_per_rank": shape.num_experts // ranks.world_size,
            "num_experts_total": shape.num_experts,
            "max_num_tokens_per_rank": shape.max_num_tokens_per_rank,
            "random_seed": args.random_seed,
            "device_count": torch.cuda.device_count() if cuda else 0,
            "cuda_graph": self.cuda_graph,
            "pdl": bool(args.pdl),
            "payload_in_workspace": not args.no_payload_in_workspace,
            "cupti_enabled": self.trace is not None,
            "warning": self.warning,
            "use_low_precision_combine": bool(args.use_low_precision_combine),
            "timing_method": method,
            "iters": args.iters,
            "warmup": args.warmup,
            "extra_combine_passes": args.extra_combine_passes,
            "provenance": ranks_mod.provenance(ranks, method, api.describe() if api else {}),
        }

    def run(self) -> int:
        args, shape, ranks = self.args, self.shape, self.ranks
        names = [args.backend] if args.backend else list(ALL_BACKENDS)
        api, unavailable = (None, None)
        if any(n in TRTLLM_BACKENDS for n in names):
            api, unavailable = load_api()
        self.header = self.make_header(api)
        self.emit(self.header)
        if self.warning:
            self.say(f"WARNING: {self.warning}")
            self.warned = True
        for name in names:
            backend = self.build(name, api, unavailable)
            if backend is None:
                continue
            knobs = self.knobs(backend)
            for size in shape.local_batch_sizes:
                self.run_size(backend, size, knobs)
        if ranks.rank == 0 and args.output_file and self.results:
            self.header["warning"] = self.warning
            directory = os.path.dirname(args.output_file)
            if directory:
                os.makedirs(directory, exist_ok=True)
            with open(args.output_file, "w", encoding="utf-8") as handle:
                json.dump({"benchmark_metadata": self.header, "results": self.results}, handle, indent=2)
            print(f"Report written to {args.output_file}", flush=True)
        return 1 if self.check_failures else 0


def start_trace(args: argparse.Namespace, comm: Any) -> tuple[KernelTrace | None, str | None]:
    """CUPTI tracing on every rank or on none, started before any CUDA context exists.

    Returns (the trace, None), or (None, the warning that says why the run uses CUDA events).
    Not attempted on CPUs, nor when CUDA events were asked for.
    """
    wanted = args.device != "cpu" and args.timing_method != "cuda_events"
    trace, problem = None, None
    if wanted:
        try:
            trace = KernelTrace()
        except SpanError as exc:
            problem = str(exc)
    problems = comm.allgather(problem)
    if not any(problems):
        return trace, None
    if trace is not None:
        trace.close()
    return None, span_warning("; ".join(f"rank{r}: {p}" for r, p in enumerate(problems) if p))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    comm, rank, world_size, local_rank = ranks_mod.mpi_world()
    ep_size = 8 if args.ep_size is None else args.ep_size
    if args.ep_size is not None and ep_size != world_size:
        parser.error(
            f"--ep_size {ep_size} does not match the MPI world size {world_size}: start one rank per GPU, "
            f"e.g. mpirun -np {ep_size} python -m moecomm_tasks.bench --ep_size {ep_size} ..."
        )
    try:
        shape = resolve(args, world_size)
    except ValueError as exc:
        parser.error(str(exc))
    os.environ.update(TRTLLM_ENV)
    os.environ["TRTLLM_ENABLE_PDL"] = "1" if args.pdl else "0"
    try:
        trace, warning = start_trace(args, comm)
        device = ranks_mod.pick_device(args.device, local_rank)
        if device.type != "cuda" and trace is not None:
            trace.close()
            trace = None
        ranks_mod.init_process_group(comm, rank, world_size, device, args.timeout_s)
        ranks = ranks_mod.Ranks(comm, rank, world_size, local_rank, device)
        code = Worker(args, shape, ranks, trace, warning if device.type == "cuda" else None).run()
        dist.destroy_process_group()
        if trace is not None:
            trace.close()
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
