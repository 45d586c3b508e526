"""Timing of the two phases, per iteration, on one rank.

GPUs, three methods (`args.TIMING_METHODS`):

* `kernel_span` and `cuda_events` (upstream's, the default): after the correctness check (an eager
  run that also discovers shapes and warms NCCL up), the warm-up and timed iterations run as one
  sequence — L2 flush, dispatch between two CUDA events, the expert output staged, combine between
  two events — captured together in one CUDA graph and replayed once (or run eagerly with
  `cuda_graph=False`). With a `KernelTrace` (CUPTI) the time of each phase is its kernel span
  inside its events; without one, or when the record cannot be attributed, its events' time.
* `cuda_events_spin` (ours): each phase launched behind a spin kernel that keeps the GPU ahead of
  the host, so its events time the GPU's work and not the host's launch latency; eager launches
  behind a ~2 ms spin, or each phase replayed from a graph of its own behind a shorter one.
  With a `KernelTrace` the same iterations' kernel spans are reported beside.

CPUs: a monotonic clock brackets each phase (gloo collectives are synchronous), and
`kernel_breakdown` times the ops under each phase with torch.profiler.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from moecomm_tasks.bench.kernel_spans import KernelTrace, SpanError

PHASES = ("dispatch", "combine")


@dataclass
class PhaseTimes:
    """One size's per-iteration phase times on this rank, and how they were measured.

    `method` is what `dispatch_us`/`combine_us` hold; `alternatives` holds the same iterations
    measured another way (method -> phase -> µs); `fallback` says why kernel spans were wanted
    but could not be used on this rank.
    """

    dispatch_us: list[float]
    combine_us: list[float]
    method: str
    kernels: dict[str, dict[str, list[float]]] | None = None
    alternatives: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    fallback: str | None = None
    notes: list[str] = field(default_factory=list)


def stats(values: list[float]) -> dict[str, float]:
    """mean, median, population stdev, min and max of per-iteration times."""
    if not values:
        return {"mean": 0.0, "median": 0.0, "stdev": 0.0, "min": 0.0, "max": 0.0}
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "stdev": statistics.pstdev(values),
        "min": min(values),
        "max": max(values),
    }


# GPU clock cycles of the spin before each phase (at ~2 GHz): ~2 ms for eager launches, several
# times what the host needs to enqueue one phase's kernels and NCCL calls (on an H100 host,
# 200 µs was too short below ~1,000 tokens); ~200 µs for one graph launch.
EAGER_SPIN_CYCLES = 4_000_000
GRAPH_SPIN_CYCLES = 400_000


def _hold_gpu(cycles: int = GRAPH_SPIN_CYCLES) -> None:
    """Keep the GPU busy outside the timed windows while the host enqueues the next phase."""
    torch.cuda._sleep(cycles)


def _l2_flush_buffer(device: torch.device) -> torch.Tensor:
    """Zeroing this (twice the L2 size) before each dispatch evicts what the last one cached."""
    l2_bytes = torch.cuda.get_device_properties(device).L2_cache_size
    return torch.empty(max(2 * l2_bytes // 4, 1), dtype=torch.int32, device=device)


# Cycles of the spin between two events recorded to learn their CUPTI ids (~0.1 µs), so that no
# two share a timestamp.
ID_SPIN_CYCLES = 200


def _events(iters: int, external: bool, trace: KernelTrace | None) -> tuple[list[list[torch.cuda.Event]], Any]:
    """Four timing events per iteration, created (recorded once) so that each has a handle, and
    their CUPTI ids per iteration when `trace` is given (None where CUPTI cannot give them; the
    reason then goes with the times). `external` events keep their timestamps inside a graph."""
    kwargs = {"enable_timing": True, **({"external": True} if external else {})}
    marks = [[torch.cuda.Event(**kwargs) for _ in range(4)] for _ in range(iters)]
    flat = [e for row in marks for e in row]
    if trace is not None:
        trace.clear()
    for event in flat:
        event.record()
        if trace is not None:
            _hold_gpu(ID_SPIN_CYCLES)
    torch.cuda.synchronize()
    if trace is None:
        return marks, None
    try:
        ids = trace.event_ids(flat)
        if ids is None:
            ids = trace.recorded_event_ids(len(flat))
    except SpanError as exc:
        return marks, str(exc)
    return marks, [tuple(ids[4 * i: 4 * i + 4]) for i in range(iters)]


def _event_times(marks: list[list[torch.cuda.Event]]) -> dict[str, list[float]]:
    return {
        "dispatch": [a.elapsed_time(b) * 1000.0 for a, b, _, _ in marks],
        "combine": [c.elapsed_time(d) * 1000.0 for _, _, c, d in marks],
    }


def _spans(trace: KernelTrace | None, ids: Any) -> tuple[Any, str | None]:
    """The CUPTI kernel spans of the timed iterations whose events have `ids` (or the reason
    their ids are unknown), or (None, why not)."""
    if trace is None:
        return None, None
    if isinstance(ids, str):
        return None, ids
    try:
        return trace.spans(ids), None
    except SpanError as exc:
        return None, str(exc)
    except Exception as exc:  # a CUPTI call that failed while reading its own records
        return None, f"{type(exc).__name__}: {exc}"


def _time_upstream(
    dispatch: Callable[[], Any], stage: Callable[[Any], Any], combine: Callable[[Any], Any], *,
    device: torch.device, iters: int, warmup: int, cuda_graph: bool, trace: KernelTrace | None,
) -> PhaseTimes:
    """Upstream's method: warm-up and timed iterations in one graph (or eager), events around
    each phase, kernel spans from CUPTI where it can give them."""
    flush = _l2_flush_buffer(device)
    marks, ids = _events(iters, external=cuda_graph, trace=trace)

    def run_iterations() -> None:
        for _ in range(warmup):
            flush.zero_()
            combine(stage(dispatch()))
        for d0, d1, c0, c1 in marks:
            flush.zero_()
            d0.record()
            received = dispatch()
            d1.record()
            staged = stage(received)
            c0.record()
            combine(staged)
            c1.record()

    notes: list[str] = []
    graph = None
    if cuda_graph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            run_iterations()
    if trace is not None:
        trace.clear()
    torch.cuda.synchronize()
    if graph is not None:
        graph.replay()
    else:
        run_iterations()
    torch.cuda.synchronize()
    events = _event_times(marks)
    spans, why = _spans(trace, ids)
    del graph
    if spans is not None:
        return PhaseTimes(spans.span_us["dispatch"], spans.span_us["combine"], "kernel_span",
                          kernels=spans.kernels, alternatives={"cuda_events": events}, notes=notes)
    return PhaseTimes(events["dispatch"], events["combine"], "cuda_events", fallback=why, notes=notes)


def _capture_phases(dispatch: Callable[[], Any], stage: Callable[[Any], Any], combine: Callable[[Any], Any]):
    """One CUDA graph per phase; returns their replay functions."""
    dispatch_graph, combine_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(dispatch_graph):
        received = dispatch()
    staged = stage(received)
    with torch.cuda.graph(combine_graph):
        combine(staged)
    torch.cuda.synchronize()

    def replay_dispatch() -> Any:
        dispatch_graph.replay()
        return received

    return replay_dispatch, (lambda _staged: combine_graph.replay())


def _time_spin(
    dispatch: Callable[[], Any], stage: Callable[[Any], Any], combine: Callable[[Any], Any], *,
    device: torch.device, iters: int, warmup: int, cuda_graph: bool, trace: KernelTrace | None,
) -> PhaseTimes:
    """Ours: each phase behind a spin kernel, events around it; kernel spans of the same iterations
    reported beside when CUPTI records them."""
    notes: list[str] = []
    for _ in range(warmup):
        combine(stage(dispatch()))
    torch.cuda.synchronize()
    flush = _l2_flush_buffer(device)
    run_dispatch, run_combine, spin = dispatch, combine, EAGER_SPIN_CYCLES
    if cuda_graph:
        try:
            run_dispatch, run_combine = _capture_phases(dispatch, stage, combine)
            spin = GRAPH_SPIN_CYCLES
        except Exception as exc:  # capture is an optimisation here: fall back to eager launches
            notes.append(f"CUDA graph capture failed, timing eager launches: {type(exc).__name__}: {exc}")
            torch.cuda.synchronize()
    marks, ids = _events(iters, external=False, trace=trace)
    if trace is not None:
        trace.clear()
    torch.cuda.synchronize()
    for d0, d1, c0, c1 in marks:
        flush.zero_()
        _hold_gpu(spin)
        d0.record()
        received = run_dispatch()
        d1.record()
        staged = stage(received)
        _hold_gpu(spin)
        c0.record()
        run_combine(staged)
        c1.record()
    torch.cuda.synchronize()
    events = _event_times(marks)
    spans, _ = _spans(trace, ids)
    result = PhaseTimes(events["dispatch"], events["combine"], "cuda_events_spin", notes=notes)
    if spans is not None:
        result.kernels = spans.kernels
        result.alternatives["kernel_span"] = spans.span_us
    return result


def _time_host(
    dispatch: Callable[[], Any], stage: Callable[[Any], Any], combine: Callable[[Any], Any], *,
    iters: int, warmup: int, kernel_breakdown: bool,
) -> PhaseTimes:
    """CPUs: a monotonic clock around each phase; the profiler's ops under each phase marker."""
    for _ in range(warmup):
        combine(stage(dispatch()))
    dispatch_us, combine_us = [], []
    profile = _host_profiler() if kernel_breakdown else contextlib.nullcontext()
    with profile as prof:
        for _ in range(iters):
            with torch.profiler.record_function("dispatch"):
                t0 = time.perf_counter_ns()
                received = dispatch()
                t1 = time.perf_counter_ns()
            staged = stage(received)
            with torch.profiler.record_function("combine"):
                t2 = time.perf_counter_ns()
                combine(staged)
                t3 = time.perf_counter_ns()
            dispatch_us.append((t1 - t0) / 1000.0)
            combine_us.append((t3 - t2) / 1000.0)
    result = PhaseTimes(dispatch_us, combine_us, "host_clock")
    if kernel_breakdown:
        result.kernels = _host_ops(list(prof.events()))
    return result


def _host_profiler() -> Any:
    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=False)


def _host_ops(events: Any) -> dict[str, dict[str, list[float]]]:
    """The ops directly under each phase marker stand for its kernels on CPUs."""
    cpu = torch.autograd.DeviceType.CPU
    kernels: dict[str, dict[str, list[float]]] = {p: defaultdict(list) for p in (*PHASES, "other")}
    for event in events:
        parent = event.cpu_parent
        if event.device_type == cpu and parent is not None and parent.name in PHASES:
            kernels[parent.name][event.name].append(float(event.cpu_time_total))
    return {p: dict(k) for p, k in kernels.items()}


def time_phases(
    dispatch: Callable[[], Any],
    stage: Callable[[Any], Any],
    combine: Callable[[Any], Any],
    *,
    device: torch.device,
    iters: int,
    warmup: int,
    method: str,
    cuda_graph: bool,
    kernel_breakdown: bool = False,
    trace: KernelTrace | None = None,
) -> PhaseTimes:
    """Time `iters` iterations of dispatch, then combine of what `stage` makes of its output.

    `stage` runs between the phases, outside both (upstream zeroes the simulated expert output
    there); `method` is one of `args.TIMING_METHODS` (ignored on CPUs).
    """
    if device.type != "cuda":
        return _time_host(dispatch, stage, combine, iters=iters, warmup=warmup, kernel_breakdown=kernel_breakdown)
    timer = _time_spin if method == "cuda_events_spin" else _time_upstream
    return timer(dispatch, stage, combine, device=device, iters=iters, warmup=warmup, cuda_graph=cuda_graph,
                 trace=trace if method != "cuda_events" else None)


def time_copy(nbytes: int, device: torch.device, iters: int) -> list[float]:
    """Per-iteration time (µs) of a device-to-device copy of `nbytes`, L2 flushed before each."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    flush = _l2_flush_buffer(device)
    for _ in range(3):
        dst.copy_(src)
    marks = [[torch.cuda.Event(enable_timing=True) for _ in range(2)] for _ in range(iters)]
    torch.cuda.synchronize()
    for start, end in marks:
        flush.zero_()
        _hold_gpu()
        start.record()
        dst.copy_(src)
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1000.0 for s, e in marks]
