"""Timing of the two phases, per iteration, on one rank.

On GPUs each phase is bracketed by CUDA events recorded on the stream that does the work (the
current stream, which waits for NCCL's), after warm-up, with L2 flushed (a buffer twice the L2
size zeroed) before every dispatch; by default each phase is a captured CUDA graph, so that host
launch overhead is not counted as communication time. On CPUs a monotonic clock brackets each
phase (gloo collectives are synchronous). With `--kernel_breakdown` the same iterations run under
torch.profiler: each kernel is attributed to the phase whose `record_function` range launched it
(on the host, where NCCL's kernels are launched too), and the per-phase kernel totals are reported
beside the event times.
"""

from __future__ import annotations

import bisect
import contextlib
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

PHASES = ("dispatch", "combine")


@dataclass
class PhaseTimes:
    dispatch_us: list[float]
    combine_us: list[float]
    method: str
    # phase -> kernel name -> durations of each occurrence (µs)
    kernels: dict[str, dict[str, list[float]]] | None = None
    # phase -> per-iteration total of that phase's kernels (µs)
    profiler_us: dict[str, list[float]] | None = None
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


def _profiler(device: torch.device) -> Any:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities, record_shapes=False, with_stack=False)


def _phase_of(event: Any, intervals: list[tuple[float, float, int, str]], starts: list[float]) -> tuple[str, int] | None:
    parent = event
    while parent is not None:
        if parent.name in PHASES and parent.device_type == torch.autograd.DeviceType.CPU:
            return parent.name, parent.id
        parent = parent.cpu_parent
    index = bisect.bisect_right(starts, event.time_range.start) - 1
    if index >= 0:
        begin, end, ident, name = intervals[index]
        if begin <= event.time_range.start <= end:
            return name, ident
    return None


def attribute_kernels(prof: Any, device: torch.device) -> tuple[dict, dict]:
    """(phase -> kernel -> occurrence durations, phase -> per-iteration totals) from a profile."""
    events = list(prof.events())
    cpu = torch.autograd.DeviceType.CPU
    markers = sorted(
        (e.time_range.start, e.time_range.end, e.id, e.name)
        for e in events if e.name in PHASES and e.device_type == cpu
    )
    starts = [m[0] for m in markers]
    kernels: dict[str, dict[str, list[float]]] = {p: defaultdict(list) for p in (*PHASES, "other")}
    totals: dict[str, dict[int, float]] = {p: {m[2]: 0.0 for m in markers if m[3] == p} for p in PHASES}
    for event in events:
        if event.device_type != cpu or event.name in PHASES:
            continue
        if device.type == "cuda":
            launched = [(k.name, float(k.duration)) for k in event.kernels]
        elif event.cpu_parent is not None and event.cpu_parent.name in PHASES:
            launched = [(event.name, float(event.cpu_time_total))]
        else:
            launched = []
        if not launched:
            continue
        where = _phase_of(event, markers, starts)
        phase = where[0] if where else "other"
        for name, duration in launched:
            kernels[phase][name].append(duration)
            if where:
                totals[phase][where[1]] += duration
    return (
        {p: dict(k) for p, k in kernels.items()},
        {p: [totals[p][m[2]] for m in markers if m[3] == p] for p in PHASES},
    )


def _capture(dispatch: Callable[[], torch.Tensor], combine: Callable[[torch.Tensor], Any]):
    """Capture each phase in a CUDA graph; return their replay functions."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        combine(dispatch())
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    dispatch_graph, combine_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(dispatch_graph):
        received = dispatch()
    with torch.cuda.graph(combine_graph):
        combine(received)
    torch.cuda.synchronize()
    return dispatch_graph.replay, combine_graph.replay


def time_phases(
    dispatch: Callable[[], torch.Tensor],
    combine: Callable[[torch.Tensor], Any],
    *,
    device: torch.device,
    iters: int,
    warmup: int,
    kernel_breakdown: bool,
    cuda_graph: bool,
) -> PhaseTimes:
    """Time `iters` iterations of dispatch then combine (combine consumes dispatch's output)."""
    notes: list[str] = []
    for _ in range(warmup):
        combine(dispatch())
    if device.type == "cuda":
        torch.cuda.synchronize()
        l2_bytes = torch.cuda.get_device_properties(device).L2_cache_size
        flush = torch.empty(max(2 * l2_bytes // 4, 1), dtype=torch.int32, device=device)
        run_dispatch, run_combine = dispatch, combine
        method = "cuda_events"
        if cuda_graph:
            try:
                replay_dispatch, replay_combine = _capture(dispatch, combine)
                run_dispatch, run_combine = replay_dispatch, (lambda _received: replay_combine())
                method = "cuda_events+cuda_graph"
            except Exception as exc:  # capture is an optimisation: fall back to eager launches
                notes.append(f"CUDA graph capture failed, timing eager launches: {type(exc).__name__}: {exc}")
                torch.cuda.synchronize()
        marks = [[torch.cuda.Event(enable_timing=True) for _ in range(3)] for _ in range(iters)]
        profile = _profiler(device) if kernel_breakdown else contextlib.nullcontext()
        with profile as prof:
            torch.cuda.synchronize()
            for start, middle, end in marks:
                flush.zero_()
                with torch.profiler.record_function("dispatch"):
                    start.record()
                    received = run_dispatch()
                    middle.record()
                with torch.profiler.record_function("combine"):
                    run_combine(received)
                    end.record()
            torch.cuda.synchronize()
        dispatch_us = [s.elapsed_time(m) * 1000.0 for s, m, _ in marks]
        combine_us = [m.elapsed_time(e) * 1000.0 for _, m, e in marks]
    else:
        method = "monotonic_clock"
        dispatch_us, combine_us = [], []
        profile = _profiler(device) if kernel_breakdown else contextlib.nullcontext()
        with profile as prof:
            for _ in range(iters):
                with torch.profiler.record_function("dispatch"):
                    t0 = time.perf_counter_ns()
                    received = dispatch()
                    t1 = time.perf_counter_ns()
                with torch.profiler.record_function("combine"):
                    combine(received)
                    t2 = time.perf_counter_ns()
                dispatch_us.append((t1 - t0) / 1000.0)
                combine_us.append((t2 - t1) / 1000.0)
    result = PhaseTimes(dispatch_us, combine_us, method, notes=notes)
    if kernel_breakdown:
        result.kernels, result.profiler_us = attribute_kernels(prof, device)
    return result


def time_copy(nbytes: int, device: torch.device, iters: int) -> list[float]:
    """Per-iteration time (µs) of a device-to-device copy of `nbytes`, L2 flushed before each."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    l2_bytes = torch.cuda.get_device_properties(device).L2_cache_size
    flush = torch.empty(max(2 * l2_bytes // 4, 1), dtype=torch.int32, device=device)
    for _ in range(3):
        dst.copy_(src)
    marks = [[torch.cuda.Event(enable_timing=True) for _ in range(2)] for _ in range(iters)]
    torch.cuda.synchronize()
    for start, end in marks:
        flush.zero_()
        start.record()
        dst.copy_(src)
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1000.0 for s, e in marks]
