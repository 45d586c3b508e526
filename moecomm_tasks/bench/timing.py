"""Timing of the two phases, per iteration, on one rank.

On GPUs each phase is bracketed by CUDA events recorded on the stream that does the work (the
current stream, which waits for NCCL's), after warm-up, with L2 flushed (a buffer twice the L2
size zeroed) before every dispatch. A spin kernel before each phase keeps the GPU busy while the
host enqueues the whole phase, so that the events time the GPU's work and not the host's launch
latency: by default the phase's kernels and NCCL calls are launched eagerly behind a ~2 ms spin;
with `cuda_graph` each phase is replayed from a captured CUDA graph (a shorter spin suffices),
which adds the graph's launch and completion to every phase. On CPUs a monotonic clock brackets
each phase (gloo collectives are synchronous). With `--kernel_breakdown` the same iterations run
under torch.profiler: the spin kernels (outside the event windows) separate the phases, each
device activity is attributed to a phase by its place on the GPU timeline, and each phase's span
(first activity's start to last activity's end) is reported beside the event times.
"""

from __future__ import annotations

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
    # phase -> per-iteration time on the profiler's timeline, and the span of its kernels (µs)
    profiler_us: dict[str, list[float]] | None = None
    kernel_span_us: dict[str, list[float]] | None = None
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


SEPARATOR_KERNEL = "spin_kernel"
# GPU clock cycles of the spin before each phase (at ~2 GHz): ~2 ms for eager launches, several
# times what the host needs to enqueue one phase's kernels and NCCL calls with the profiler on
# (on an H100 host, 200 µs was too short below ~1,000 tokens); ~200 µs for one graph launch.
EAGER_SPIN_CYCLES = 4_000_000
GRAPH_SPIN_CYCLES = 400_000


def _hold_gpu(cycles: int = GRAPH_SPIN_CYCLES) -> None:
    """Keep the GPU busy outside the timed windows while the host enqueues the next phase.

    Without it the events would also time the host's launch latency whenever the GPU catches up
    with the host. The spin kernel also marks the phase boundary on the GPU timeline.
    """
    torch.cuda._sleep(cycles)


def _attribute_device(raw_events: Any) -> tuple[dict, dict, dict]:
    """GPU: each device activity goes to the phase between the spins around it.

    Every iteration is, in stream order, the L2 flush, a spin, the dispatch activities, a spin,
    the combine activities; the spins lie outside both event windows. Attribution by position on
    the GPU timeline works alike for eager launches, NCCL's own stream and graph replays (whose
    kernels the profiler does not link to the host range that replayed them). Per iteration and
    phase it measures the window (end of the spin before the phase to the end of its last
    activity: what the CUDA events bracket, read from the profiler's own timestamps) and the
    kernel span (first activity's start to last activity's end).
    """
    cpu = torch.autograd.DeviceType.CPU
    activities = sorted(
        (e.start_ns(), e.start_ns() + e.duration_ns(), e.name())
        for e in raw_events if e.device_type() != cpu and e.name() not in PHASES
    )
    kernels: dict[str, dict[str, list[float]]] = {p: defaultdict(list) for p in (*PHASES, "other")}
    windows: dict[str, list[float]] = {p: [] for p in PHASES}
    spans: dict[str, list[float]] = {p: [] for p in PHASES}
    phase, spins, opened_at, segment = "other", 0, 0, []

    def close() -> None:
        if phase in PHASES and segment:
            last_end = max(end for _, end, _ in segment)
            windows[phase].append((last_end - opened_at) / 1000.0)
            spans[phase].append((last_end - min(begin for begin, _, _ in segment)) / 1000.0)
        for begin, end, name in segment:
            kernels[phase][name].append((end - begin) / 1000.0)

    for begin, end, name in activities:
        if SEPARATOR_KERNEL not in name:
            segment.append((begin, end, name))
            continue
        if spins % 2 == 0 and segment and phase == "combine":
            flush = segment.pop()  # the next iteration's L2 flush
            kernels["other"][flush[2]].append((flush[1] - flush[0]) / 1000.0)
        close()
        phase, opened_at, segment = ("dispatch" if spins % 2 == 0 else "combine"), end, []
        spins += 1
    close()
    return {p: dict(k) for p, k in kernels.items()}, windows, spans


def _attribute_host(events: Any) -> tuple[dict, dict, dict]:
    """CPU: the ops directly under a phase marker stand for kernels; a phase's time is their sum."""
    cpu = torch.autograd.DeviceType.CPU
    kernels: dict[str, dict[str, list[float]]] = {p: defaultdict(list) for p in (*PHASES, "other")}
    totals: dict[int, float] = defaultdict(float)
    markers = sorted((e.time_range.start, e.id, e.name) for e in events if e.name in PHASES and e.device_type == cpu)
    for event in events:
        parent = event.cpu_parent
        if event.device_type == cpu and parent is not None and parent.name in PHASES:
            kernels[parent.name][event.name].append(float(event.cpu_time_total))
            totals[parent.id] += float(event.cpu_time_total)
    per_iteration = {p: [totals.get(ident, 0.0) for _, ident, name in markers if name == p] for p in PHASES}
    return {p: dict(k) for p, k in kernels.items()}, per_iteration, per_iteration


def attribute_kernels(prof: Any, device: torch.device) -> tuple[dict, dict, dict]:
    """(phase -> kernel -> durations, phase -> per-iteration window, phase -> per-iteration kernel span), in µs.

    On CPUs both the window and the span of a phase are the sum of its ops' times.
    """
    if device.type == "cuda":
        return _attribute_device(prof.profiler.kineto_results.events())
    return _attribute_host(list(prof.events()))


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
        method, spin = "cuda_events", EAGER_SPIN_CYCLES
        if cuda_graph:
            try:
                replay_dispatch, replay_combine = _capture(dispatch, combine)
                run_dispatch, run_combine = replay_dispatch, (lambda _received: replay_combine())
                method, spin = "cuda_events+cuda_graph", GRAPH_SPIN_CYCLES
            except Exception as exc:  # capture is an optimisation: fall back to eager launches
                notes.append(f"CUDA graph capture failed, timing eager launches: {type(exc).__name__}: {exc}")
                torch.cuda.synchronize()
        marks = [[torch.cuda.Event(enable_timing=True) for _ in range(4)] for _ in range(iters)]
        profile = _profiler(device) if kernel_breakdown else contextlib.nullcontext()
        with profile as prof:
            torch.cuda.synchronize()
            for dispatch_start, dispatch_end, combine_start, combine_end in marks:
                flush.zero_()
                _hold_gpu(spin)
                with torch.profiler.record_function("dispatch"):
                    dispatch_start.record()
                    received = run_dispatch()
                    dispatch_end.record()
                _hold_gpu(spin)
                with torch.profiler.record_function("combine"):
                    combine_start.record()
                    run_combine(received)
                    combine_end.record()
            torch.cuda.synchronize()
        dispatch_us = [a.elapsed_time(b) * 1000.0 for a, b, _, _ in marks]
        combine_us = [c.elapsed_time(d) * 1000.0 for _, _, c, d in marks]
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
        result.kernels, result.profiler_us, result.kernel_span_us = attribute_kernels(prof, device)
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
        _hold_gpu()
        start.record()
        dst.copy_(src)
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1000.0 for s, e in marks]
