"""The measurement knobs that change a result's number, and how each output version states them.

A series is separated by everything that changes its number (design: "Regression detection"):
CUDA-graph replay or eager launches, PDL, the perfect router, the expert output written into the
backend's workspace, low-precision (FP8) combine, and the timing method. Each result gets all six:

* a knob is the result object's own key when it has one, else the run header's (for
  low-precision combine the header key is `use_low_precision_combine`), else the value that was
  true for the version of the benchmark that printed it: every knob was off in the seed version
  (eager launches under torch.profiler, random routing, `payload_in_workspace=False`,
  `use_low_precision_moe_combine=False`, PDL not enabled) and in our worker before it printed
  these keys. Upstream's newest header has no low-precision key: it is on when the recorded
  command has `--use_low_precision_combine`. PDL, when no key says it, is on when the recorded
  environment has `TRTLLM_ENABLE_PDL=1`. Those two are left None here and completed from the
  provenance by `complete` (the loader has it, the parser does not);
* the timing method (`TIMING_METHODS`) is the result's `timing_method`, normalised: our worker
  before it printed `cupti_enabled` wrote `cuda_events` (eager launches behind a spin kernel),
  `cuda_events+cuda_graph` (the same, replayed from a CUDA graph) and `monotonic_clock` (CPU).
  Without the key: `kernel_span` when the header has `cupti_enabled` true, except the sizes that
  the warning names as fallbacks (`<BACKEND> @ local_batch_size=<N>: rank<r>: <error>`), which
  upstream timed with CUDA events; `cuda_events` when CUPTI could not start (`cupti_enabled`
  false) and for upstream versions between the seed and CUPTI (their header has `cuda_graph`);
  `profiler` for the seed version (no `cuda_graph` in its header).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

TIMING_METHODS = ("kernel_span", "cuda_events", "cuda_events_spin", "profiler", "host_clock")
KNOB_FIELDS = ("cuda_graph", "pdl", "perfect_router", "payload_in_workspace", "low_precision_combine",
               "timing_method")
FLAGS = KNOB_FIELDS[:-1]
HEADER_FLAG_KEYS = {"cuda_graph": "cuda_graph", "pdl": "pdl", "perfect_router": "perfect_router",
                    "payload_in_workspace": "payload_in_workspace",
                    "low_precision_combine": "use_low_precision_combine"}
# What our worker printed before it had `cupti_enabled` in its header: (method, cuda_graph).
_OLD_WORKER_METHODS = {"cuda_events": ("cuda_events_spin", False),
                       "cuda_events+cuda_graph": ("cuda_events_spin", True),
                       "monotonic_clock": ("host_clock", None)}
FALLBACK_REASON = re.compile(r"(?P<backend>[A-Za-z0-9_]+) @ local_batch_size=(?P<size>\d{1,7}): rank\d+: ")


@dataclass(frozen=True, slots=True)
class Knobs:
    """The knobs one result was measured with. `pdl` and `low_precision_combine` are None while
    only the provenance can tell (see `complete`)."""

    cuda_graph: bool = False
    pdl: bool | None = False
    perfect_router: bool = False
    payload_in_workspace: bool = False
    low_precision_combine: bool | None = False
    timing_method: str = "cuda_events"


def fallback_sizes(warnings: Iterable[str]) -> set[tuple[str, int]]:
    """The (backend, local_batch_size) pairs that upstream's warning says fell back to CUDA events."""
    return {(m["backend"].upper(), int(m["size"])) for w in warnings for m in FALLBACK_REASON.finditer(w)}


def resolve(stated: Mapping[str, Any], header: Mapping[str, Any], backend: str, size: int,
            fallbacks: set[tuple[str, int]]) -> Knobs:
    """The knobs of one result from what it states (its own keys, types checked by the parser),
    its run header's keys (`RunHeader.extra`) and the job's fallback sizes. Raises ValueError for
    a timing method outside the vocabulary."""
    flags: dict[str, bool | None] = {}
    for knob in FLAGS:
        value = stated.get(knob)
        flags[knob] = value if value is not None else header.get(HEADER_FLAG_KEYS[knob])
    method = stated.get("timing_method")
    cupti = header.get("cupti_enabled")
    if method is not None and cupti is None and method in _OLD_WORKER_METHODS:
        method, graph = _OLD_WORKER_METHODS[method]
        if graph is not None:
            flags["cuda_graph"] = graph
    elif method is None:
        if cupti is True:
            method = "cuda_events" if (backend, size) in fallbacks else "kernel_span"
        elif cupti is False or "cuda_graph" in header:
            method = "cuda_events"
        else:
            method = "profiler"
    if method not in TIMING_METHODS:
        raise ValueError(f"timing_method {method!r} is none of {', '.join(TIMING_METHODS)}")
    for knob in ("cuda_graph", "perfect_router", "payload_in_workspace"):
        if flags[knob] is None:
            flags[knob] = False
    return Knobs(timing_method=method, **flags)


def complete(knobs: Knobs, provenance: Mapping[str, Any]) -> Knobs:
    """Fill what only the provenance tells: PDL from the recorded environment
    (`TRTLLM_ENABLE_PDL=1`), low-precision combine from the recorded command."""
    if knobs.pdl is not None and knobs.low_precision_combine is not None:
        return knobs
    environment = provenance.get("environment")
    command = provenance.get("command")
    pdl = isinstance(environment, Mapping) and str(environment.get("TRTLLM_ENABLE_PDL")) == "1"
    low = isinstance(command, (list, tuple)) and "--use_low_precision_combine" in command
    return replace(knobs, pdl=pdl if knobs.pdl is None else knobs.pdl,
                   low_precision_combine=low if knobs.low_precision_combine is None else knobs.low_precision_combine)
