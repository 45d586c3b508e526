"""CUPTI kernel spans: which kernels ran inside each phase's CUDA events, and for how long.

Upstream's timing (the contract, "The newest upstream version"): CUPTI records every kernel and
the GPU timestamp of every CUDA event; a phase's time in one iteration is its kernel span, from
the first kernel's start to the last kernel's end between the phase's two events (kernels that
overlap, as PDL launches do, count once; the gaps between kernels count, the bubbles before the
first and after the last do not). The `cupti` module comes from NVIDIA's `cupti-python` package
(the `gpu` extra); its activity API must be enabled before the CUDA context is created, or it
misses the events.

`attribute` is pure: it takes the recorded (name, start, end) kernels and (event id, timestamp)
events, and raises `SpanError` with a reason whenever the record cannot be trusted (a missing or
duplicate event, phases out of order, a kernel that crosses a phase boundary, an iteration with no
kernel in a phase); the worker then times that size by its CUDA events instead.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Sequence

PHASES = ("dispatch", "combine")
# Bytes per activity buffer CUPTI asks for; records of a size's iterations fit in a few buffers.
BUFFER_BYTES = 8 * 1024 * 1024
# A bound on the records kept per size, whatever a backend launches: 220 iterations of a phase
# with hundreds of kernels stay far below it.
MAX_RECORDS = 2_000_000


class SpanError(RuntimeError):
    """The CUPTI record of a size cannot give kernel spans; the message says why."""


@dataclass(frozen=True)
class Spans:
    """Per-iteration kernel spans of each phase (µs) and each kernel's durations by phase (µs)."""

    span_us: dict[str, list[float]]
    kernels: dict[str, dict[str, list[float]]]


def _demangler() -> Any:
    """Demangle names as upstream does when `cxxfilt` is installed; otherwise keep them."""
    try:
        import cxxfilt
    except ImportError:
        return lambda name: name

    def demangle(name: str) -> str:
        try:
            return cxxfilt.demangle(name)
        except Exception:  # a name cxxfilt cannot read stays as it was
            return name

    return demangle


def stamps_by_id(
    events: Sequence[tuple[int, int]], iteration_event_ids: Sequence[tuple[int, int, int, int]]
) -> list[tuple[int, int, int, int]]:
    """Each timed iteration's four event timestamps, found by CUPTI's event ids."""
    wanted = {event_id for ids in iteration_event_ids for event_id in ids}
    if len(wanted) != 4 * len(iteration_event_ids):
        raise SpanError("two timing events share one CUPTI event id")
    stamp: dict[int, int] = {}
    for event_id, timestamp in events:
        if event_id not in wanted:
            continue
        if timestamp <= 0 or event_id in stamp:
            raise SpanError(f"CUPTI reported an invalid or repeated timestamp for event {event_id}")
        stamp[event_id] = timestamp
    if len(stamp) != len(wanted):
        raise SpanError(
            f"CUPTI recorded {len(stamp)} of {len(wanted)} timing events (event tracing must be "
            "enabled before the CUDA context is created)"
        )
    return [tuple(stamp[i] for i in ids) for ids in iteration_event_ids]


def ids_in_record_order(events: Sequence[tuple[int, int]], expected: int) -> list[int]:
    """The ids of `expected` (event id, timestamp) records, oldest first; refused unless there
    are exactly that many, with distinct timestamps (else their order would be a guess)."""
    records = sorted(events, key=lambda record: record[1])
    distinct = len({stamp for _, stamp in records})
    if len(records) != expected or distinct != expected:
        raise SpanError(f"CUPTI recorded {len(records)} CUDA events ({distinct} distinct timestamps) where "
                        f"{expected} were recorded to learn their ids")
    return [event_id for event_id, _ in records]


def attribute(kernels: Sequence[tuple[str, int, int]], iteration_stamps: Sequence[tuple[int, int, int, int]]) -> Spans:
    """Kernel spans of each iteration's phases; `iteration_stamps` holds each timed iteration's
    (dispatch start, dispatch end, combine start, combine end) event timestamps. Times in ns."""
    if not kernels:
        raise SpanError("CUPTI recorded no kernels in the timed iterations")
    # windows[i] = (start, end, phase, iteration), in time order; they must not overlap.
    windows: list[tuple[int, int, str, int]] = []
    for iteration, (d0, d1, c0, c1) in enumerate(iteration_stamps):
        if not 0 < d0 <= d1 <= c0 <= c1:
            raise SpanError("CUPTI's event timestamps are not in dispatch-then-combine order")
        if windows and d0 < windows[-1][1]:
            raise SpanError("the timed iterations' event windows overlap")
        windows += [(d0, d1, "dispatch", iteration), (c0, c1, "combine", iteration)]
    starts = [w[0] for w in windows]
    bounds: dict[str, list[list[int] | None]] = {p: [None] * len(iteration_stamps) for p in PHASES}
    demangle = _demangler()
    names: dict[str, str] = {}
    durations: dict[str, dict[str, list[float]]] = {p: defaultdict(list) for p in (*PHASES, "other")}
    for name, begin, end in sorted(kernels, key=lambda k: k[1]):
        if begin <= 0 or end < begin:
            raise SpanError(f"CUPTI reported invalid timestamps for kernel {name}")
        phase = "other"
        at = bisect.bisect_right(starts, begin) - 1
        for w_start, w_end, w_phase, iteration in windows[max(at, 0): at + 2]:
            if w_start <= begin and end <= w_end:
                phase = w_phase
                span = bounds[phase][iteration]
                if span is None:
                    bounds[phase][iteration] = [begin, end]
                else:
                    span[0], span[1] = min(span[0], begin), max(span[1], end)
                break
            if begin < w_end and end > w_start:
                raise SpanError(f"kernel {name} crosses the boundary of a {w_phase} window")
        readable = names.get(name) or names.setdefault(name, demangle(name))
        durations[phase][readable].append((end - begin) / 1000.0)
    span_us: dict[str, list[float]] = {}
    for phase in PHASES:
        if any(b is None for b in bounds[phase]):
            raise SpanError(f"CUPTI recorded no {phase} kernel in one or more timed iterations")
        span_us[phase] = [(b[1] - b[0]) / 1000.0 for b in bounds[phase]]
    return Spans(span_us, {p: dict(k) for p, k in durations.items()})


class KernelTrace:
    """CUPTI's activity records of kernels and CUDA events, for one process (one rank).

    Create it before anything creates the CUDA context. Raises `SpanError` when CUPTI cannot be
    used here (the package is missing, or the driver refuses the activities).
    """

    def __init__(self) -> None:
        try:
            from cupti import cupti
        except (ImportError, OSError) as exc:
            raise SpanError(f"the cupti package is not usable ({type(exc).__name__}: {exc}); "
                            "pip install cupti-python") from exc
        self._cupti = cupti
        self.kernels: list[tuple[str, int, int]] = []
        self.events: list[tuple[int, int]] = []
        self.overflow = False
        self._kinds: list[Any] = []
        try:
            cupti.activity_register_callbacks(self._buffer_requested, self._buffer_completed)
            for kind in (cupti.ActivityKind.CONCURRENT_KERNEL, cupti.ActivityKind.CUDA_EVENT):
                cupti.activity_enable(kind)
                self._kinds.append(kind)
            cupti.activity_enable_cuda_event_device_timestamps(1)
        except Exception as exc:  # cupti.cuptiError or an API this CUPTI lacks
            self.close()
            raise SpanError(f"CUPTI refused kernel and event tracing ({type(exc).__name__}: {exc})") from exc

    def _buffer_requested(self) -> tuple[int, int]:
        return BUFFER_BYTES, 0

    def _buffer_completed(self, activities: Any) -> None:
        kinds = self._cupti.ActivityKind
        for activity in activities:
            if len(self.kernels) + len(self.events) >= MAX_RECORDS:
                self.overflow = True
                return
            if activity.kind == kinds.CONCURRENT_KERNEL:
                self.kernels.append((activity.name, activity.start, activity.end))
            elif activity.kind == kinds.CUDA_EVENT:
                self.events.append((activity.event_id, activity.device_timestamp))

    @property
    def names_events(self) -> bool:
        """Whether this CUPTI can give a CUDA event's id (cuptiGetCudaEventId, CUPTI 13.4 on)."""
        return hasattr(self._cupti, "get_cuda_event_id")

    def clear(self) -> None:
        """Forget everything recorded so far (flushes CUPTI's buffers first)."""
        self._cupti.activity_flush_all(0)
        self.kernels.clear()
        self.events.clear()
        self.overflow = False

    def event_ids(self, events: Sequence[Any]) -> list[int] | None:
        """CUPTI's ids of these `torch.cuda.Event`s (already created), or None where this CUPTI
        cannot say (before 13.4): then `recorded_event_ids` learns them."""
        if not self.names_events:
            return None
        return [self._cupti.get_cuda_event_id(event.cuda_event) for event in events]

    def recorded_event_ids(self, expected: int) -> list[int]:
        """The ids of the CUDA events recorded since `clear`, in the order they were recorded.

        The caller records exactly `expected` events on one stream, each after a short spin so
        that no two share a timestamp, and nothing else records events meanwhile."""
        self._cupti.activity_flush_all(0)
        return ids_in_record_order(self.events, expected)

    def spans(self, iteration_event_ids: Sequence[tuple[int, int, int, int]]) -> Spans:
        """Flush and attribute what was recorded since `clear`, the timed iterations' events
        named by their ids (dispatch start, dispatch end, combine start, combine end)."""
        self._cupti.activity_flush_all(0)
        if self.overflow:
            raise SpanError(f"more than {MAX_RECORDS} CUPTI records in one size")
        return attribute(self.kernels, stamps_by_id(self.events, iteration_event_ids))

    def close(self) -> None:
        for kind in reversed(self._kinds):
            try:
                self._cupti.activity_disable(kind)
            except Exception:  # disabling is best effort at shutdown
                pass
        self._kinds.clear()
