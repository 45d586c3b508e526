"""Read what `bench_moe_comm.py` (any upstream version) or our worker printed, into typed records.

Two kinds of input, in any mix:

* a captured stream (stdout, stderr, or both in one file): pretty-printed JSON objects (the
  launcher header, the run header, one result object per backend and size) between plain lines
  (skip lines, `WARNING` lines, `Report written to`, worker tracebacks, library logs; a log line
  may even land inside a pretty-printed object, and is set aside);
* an `--output_file`: a JSON list of result objects (seed version) or
  `{"benchmark_metadata": {...}, "results": [...]}` (newer versions).

Nothing is lost silently and nothing raises: every object that is truncated, malformed, beyond a
limit (`moecomm_tasks.limits`) or invalid (non-positive, NaN or infinite times, rank keys that do
not match the EP size, names with control characters) becomes a `Dropped` record with its reason,
and every complete, valid object is kept. A result object given twice in one input is reported;
the copy of it in the output file beside its stdout is not. Inputs are read as streams, in
bounded memory (`jsonscan`). Each result carries the knobs it was measured with (`knobs`). A
rank's `null` is kept as an absent rank; a kernel a rank did not run (`0.0` or all-zero stats) is
absent for that rank. No database or Airflow import here.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, TextIO

from moecomm_tasks import jsonscan, knobs, limits
from moecomm_tasks.limits import Invalid
from moecomm_tasks.records import (
    OPS,
    Dropped,
    KernelTiming,
    ParsedJob,
    ParsedOutput,
    RunHeader,
    Skip,
    Stats,
    Timing,
    WorkerFailure,
)

SKIP_LINE = re.compile(
    r"^\[bench_moe_comm\] Skipping (?P<backend>[^\s:@]+)"
    r"(?: @ local_batch_size=(?P<size>\d{1,12}))?: (?P<reason>.*)$"
)
WARNING_LINE = re.compile(r"^\[bench_moe_comm\] WARNING: (?P<text>.*)$")
REPORT_LINE = re.compile(r"^Report written to (?P<path>.+?)\s*$")
WORKER_FAILURE = "[bench_moe_comm worker] uncaught exception:"
WORKER_IDENTITY = re.compile(r"rank=(?P<rank>\d{1,7})/(?P<world>\d{1,7})(?: local_rank=\d+)? pid=(?P<pid>\d{1,10})")
RANK_KEY = re.compile(r"^rank(0|[1-9]\d{0,6})$")
STAT_KEYS = ("mean", "median", "stdev", "min", "max")
KERNEL_LISTS = {"dispatch_kernels": "dispatch", "combine_kernels": "combine", "other_kernels": "other"}
HEADER_INTS = {  # header key: (RunHeader field, lowest, highest)
    "ep_size": ("ep_size", 1, limits.MAX_EP_SIZE),
    "hidden_size": ("hidden_size", 1, limits.MAX_SHAPE),
    "top_k": ("top_k", 1, limits.MAX_TOP_K),
    "num_experts_total": ("num_experts", 1, limits.MAX_SHAPE),
    "experts_per_rank": ("experts_per_rank", 1, limits.MAX_SHAPE),
    "max_num_tokens_per_rank": ("max_num_tokens_per_rank", 1, limits.MAX_INT),
    "device_count": ("device_count", 0, 65_535),
}
HEADER_NAMES = {"profile", "quant_algo", "dtype", "backend", "launcher", "bench"}
HEADER_FLAGS = ("cuda_graph", "pdl", "perfect_router", "payload_in_workspace", "use_low_precision_combine",
                "cupti_enabled")
PROVENANCE_TEXT = ("gpu_model", "driver_version", "cuda_version", "nccl_version", "torch_version",
                   "trtllm_version", "trtllm_commit")
PROFILE_WHEN_NONE = "custom"
EXCERPT_CHARS = 200
MAX_UNHONOURED = 32
MAX_REASON_CHARS = 2_000
MAX_REPORTS = 100
MAX_FAILURE_LINES = 400


def _excerpt(text: str) -> str:
    text = " ".join(text[: 4 * EXCERPT_CHARS].split())
    return limits.text(text, EXCERPT_CHARS)


def _json_excerpt(obj: Any) -> str:
    try:
        return _excerpt(json.dumps(limits.json_safe(obj))[: 4 * EXCERPT_CHARS])
    except (TypeError, ValueError):
        return ""


# ---- validation of single objects -------------------------------------------------------------

def _provenance(value: Any, notes: list[str]) -> dict[str, Any]:
    """The provenance our worker reports in its header, each field checked; a bad field is left
    out with a note."""
    if not isinstance(value, Mapping):
        notes.append(f"run header: provenance is not an object ({_json_excerpt(value)}); left out")
        return {}
    kept: dict[str, Any] = {}
    for key, item in value.items():
        try:
            if key in PROVENANCE_TEXT:
                kept[key] = limits.optional_name(item, f"provenance.{key}", 256)
            elif key == "gpu_count":
                kept[key] = None if item is None else limits.integer(item, "provenance.gpu_count", 0, 65_535)
            elif key in ("hosts", "command"):
                if not isinstance(item, list) or len(item) > 4_096 or not all(isinstance(v, str) for v in item):
                    raise Invalid(f"provenance.{key}: expected a list of strings")
                kept[key] = [limits.text(v, 4_096) for v in item]
            elif key == "environment":
                if not isinstance(item, Mapping):
                    raise Invalid("provenance.environment: expected an object")
                kept[key] = limits.json_safe(dict(item))
            else:
                kept[limits.text(str(key), 200)] = limits.json_safe(item)
        except Invalid as exc:
            notes.append(f"run header: {exc}; left out")
    return kept


def _header_from(obj: Mapping[str, Any], launcher: Mapping[str, Any] | None,
                 notes: list[str]) -> RunHeader:
    """The run header (merged over the launcher header); raises Invalid when a field that
    identifies the configuration is invalid."""
    merged = dict(launcher or {})
    merged.update(obj)
    fields: dict[str, Any] = {}
    for key, (name, low, high) in HEADER_INTS.items():
        value = merged.get(key)
        fields[name] = None if value is None else limits.integer(value, key, low, high)
    if fields["ep_size"] is None:
        raise Invalid("no ep_size")
    for key in HEADER_NAMES:
        fields[key] = limits.optional_name(merged.get(key), key)
    for key in HEADER_FLAGS:
        if merged.get(key) is not None:
            limits.flag(merged[key], key)
    sizes = merged.get("local_batch_size")
    sizes = [] if sizes is None else sizes if isinstance(sizes, list) else [sizes]
    if len(sizes) > limits.MAX_RESULTS_PER_JOB:
        raise Invalid(f"local_batch_size: a list of {len(sizes)} sizes (more than {limits.MAX_RESULTS_PER_JOB})")
    local_batch_sizes = tuple(limits.integer(s, "local_batch_size", 1, limits.MAX_LOCAL_BATCH_SIZE) for s in sizes)
    warning = merged.get("warning")
    if warning is not None and not isinstance(warning, str):
        raise Invalid(f"warning: expected text, got {_json_excerpt(warning)}")
    extra = {}
    for key, value in merged.items():
        if key in HEADER_INTS or key in HEADER_NAMES or key == "local_batch_size":
            continue
        if key == "provenance":
            extra[key] = _provenance(value, notes)
        elif key == "warning":
            extra[key] = None if value is None else limits.text(value, limits.MAX_WARNING_CHARS)
        else:
            extra[limits.text(str(key), 200)] = limits.json_safe(value)
    return RunHeader(
        profile=fields["profile"] or PROFILE_WHEN_NONE,
        ep_size=fields["ep_size"],
        hidden_size=fields["hidden_size"],
        top_k=fields["top_k"],
        num_experts=fields["num_experts"],
        quant_algo=fields["quant_algo"],
        dtype=fields["dtype"],
        local_batch_sizes=local_batch_sizes,
        experts_per_rank=fields["experts_per_rank"],
        max_num_tokens_per_rank=fields["max_num_tokens_per_rank"],
        device_count=fields["device_count"],
        backend=fields["backend"].upper() if fields["backend"] else None,
        launcher=fields["launcher"],
        extra=extra,
    )


def _zero(value: Any) -> bool:
    return type(value) in (int, float) and value == 0 and math.copysign(1.0, value) > 0


def _is_zero(value: Any) -> bool:
    """`0.0` or all-zero stats: what upstream prints for a rank with no times (absent)."""
    if isinstance(value, Mapping):
        return value.get("mean") is not None and all(_zero(value[k]) for k in STAT_KEYS if k in value)
    return _zero(value)


def _stats(value: Any, what: str) -> Stats:
    if isinstance(value, Mapping):
        if value.get("mean") is None:
            raise Invalid(f"{what}: stats object without a 'mean'")
        found = {k: limits.time_us(value[k], f"{what}.{k}", zero_ok=(k == "stdev"))
                 for k in STAT_KEYS if value.get(k) is not None}
        return Stats(mean_us=found["mean"], median_us=found.get("median"), stdev_us=found.get("stdev"),
                     min_us=found.get("min"), max_us=found.get("max"))
    return Stats(mean_us=limits.time_us(value, what))


def _rank_values(value: Any, ep_size: int | None, what: str) -> list[Any]:
    """The values of an object of `rankN` keys, as a list indexed by rank."""
    if not isinstance(value, Mapping) or not value:
        raise Invalid(f"{what}: expected an object of rankN keys, got {_json_excerpt(value)}")
    expected = ep_size if ep_size is not None else len(value)
    if len(value) != expected or expected > limits.MAX_EP_SIZE:
        raise Invalid(f"{what}: {len(value)} rank keys do not match EP size {expected} "
                      f"(expected rank0..rank{expected - 1})")
    values: list[Any] = [None] * expected
    for key, item in value.items():
        match = RANK_KEY.match(str(key))
        if not match or int(match.group(1)) >= expected:
            raise Invalid(f"{what}: unexpected key {limits.text(str(key), 40)!r} (expected rank0..rank{expected - 1})")
        values[int(match.group(1))] = item
    return values


@dataclass
class _Result:
    """One validated result object, before its knobs are resolved (that needs the whole job)."""

    backend: str
    size: int
    source: int
    where: str
    phases: dict[str, list[Stats | None]]
    kernels: list[KernelTiming]
    payload_dtype: str | None
    stated: dict[str, Any]
    unhonoured: tuple[str, ...]
    notes: list[str]

    @property
    def values(self) -> int:
        return sum(len(r) for r in self.phases.values()) + len(self.kernels)

    def same_measurement(self, other: _Result) -> bool:
        return (self.phases, self.kernels, self.payload_dtype, self.stated, self.unhonoured) == (
            other.phases, other.kernels, other.payload_dtype, other.stated, other.unhonoured)


def _result(obj: Mapping[str, Any], ep_size: int | None, source: int, where: str) -> _Result:
    """Validate one result object; raises Invalid with the reason it is dropped."""
    backend = limits.name(obj.get("backend"), "backend").upper()
    size = limits.integer(obj.get("local_batch_size"), "local_batch_size", 1, limits.MAX_LOCAL_BATCH_SIZE)
    payload_dtype = limits.optional_name(obj.get("payload_dtype"), "payload_dtype")
    stated: dict[str, Any] = {}
    for knob in knobs.FLAGS:
        if obj.get(knob) is not None:
            stated[knob] = limits.flag(obj[knob], knob)
    if obj.get("timing_method") is not None:
        stated["timing_method"] = limits.name(obj["timing_method"], "timing_method", 64)
    unhonoured = obj.get("unhonoured") or []
    if not isinstance(unhonoured, list) or len(unhonoured) > MAX_UNHONOURED or not all(
            isinstance(u, str) for u in unhonoured):
        raise Invalid(f"unhonoured: expected a list of at most {MAX_UNHONOURED} strings")
    notes: list[str] = []
    phases: dict[str, list[Stats | None]] = {}
    for op in OPS:
        if f"{op}_us" not in obj:
            continue
        values = _rank_values(obj[f"{op}_us"], ep_size, f"{op}_us")
        if all(_is_zero(v) for v in values):
            notes.append(f"{backend} @ {size}: {op}_us is 0 on every rank: the phase was not measured")
            continue
        ranks: list[Stats | None] = []
        for rank, value in enumerate(values):
            if value is None or _is_zero(value):
                if value is not None:
                    notes.append(f"{backend} @ {size}: {op}_us.rank{rank} is 0 (no measurement): kept as absent")
                ranks.append(None)
            else:
                ranks.append(_stats(value, f"{op}_us.rank{rank}"))
        if all(r is None for r in ranks):
            notes.append(f"{backend} @ {size}: {op}_us is null on every rank: the phase was not measured")
            continue
        phases[op] = ranks
    if not phases and not notes:
        raise Invalid("no 'dispatch_us' or 'combine_us' in the result object")
    kernels: list[KernelTiming] = []
    for key, phase in KERNEL_LISTS.items():
        entries = obj.get(key) or []
        if not isinstance(entries, list):
            raise Invalid(f"{key}: expected a list")
        seen: set[str] = set()
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise Invalid(f"{key}: an entry that is not an object")
            kernel = limits.name(entry.get("name"), f"{key}: kernel name", limits.MAX_KERNEL_NAME_CHARS)
            count = limits.integer(entry.get("count", 0), f"{key}[{kernel[:60]}].count", 0, limits.MAX_INT)
            per_rank = _rank_values(entry.get("per_rank"), ep_size, f"{key}[{kernel[:60]}].per_rank")
            if kernel in seen:
                notes.append(f"{backend} @ {size}: kernel {kernel[:200]!r} is listed twice in {key}; the first is kept")
                continue
            seen.add(kernel)
            kernels.extend(
                KernelTiming(backend, size, phase, kernel, rank, count, _stats(v, f"{key}[{kernel[:60]}].rank{rank}"))
                for rank, v in enumerate(per_rank) if v is not None and not _is_zero(v))
    return _Result(backend, size, source, where, phases, kernels, payload_dtype, stated,
                   tuple(limits.text(u.strip(), 500) for u in unhonoured), notes)


# ---- collecting records across inputs ----------------------------------------------------------

_INVALID_HEADER = "\x00invalid"  # the current job after a run header that was dropped


@dataclass
class _JobBuilder:
    header: RunHeader | None
    results: dict[tuple[str, int], _Result] = field(default_factory=dict)
    skips: dict[tuple, Skip] = field(default_factory=dict)
    warnings: dict[str, None] = field(default_factory=dict)  # ordered set of warning lines

    def warn(self, text: str | None) -> None:
        for line in (text or "").splitlines():
            if line.strip() and len(self.warnings) < 1_000:
                self.warnings.setdefault(limits.text(line.strip(), limits.MAX_WARNING_CHARS), None)

    def build(self, drop) -> ParsedJob:
        header_keys = dict(self.header.extra) if self.header else {}
        fallbacks = knobs.fallback_sizes(self.warnings)
        timings: list[Timing] = []
        kernels: list[KernelTiming] = []
        for result in self.results.values():
            try:
                knob = knobs.resolve(result.stated, header_keys, result.backend, result.size, fallbacks)
            except ValueError as exc:
                drop(result.where, f"invalid result object: {exc}")
                continue
            timings.extend(Timing(result.backend, result.size, op, rank, stats, result.payload_dtype, knob,
                                  result.unhonoured)
                           for op, ranks in result.phases.items() for rank, stats in enumerate(ranks))
            kernels.extend(result.kernels)
        warning = "\n".join(self.warnings) or None
        return ParsedJob(header=self.header, timings=tuple(timings), kernels=tuple(kernels),
                         skips=tuple(self.skips.values()),
                         warning=None if warning is None else limits.text(warning, limits.MAX_WARNING_CHARS))


class _Collector:
    """Accumulates records across inputs, within the limits of `moecomm_tasks.limits`."""

    def __init__(self, default_header: RunHeader | None = None) -> None:
        self.jobs: dict[str | None, _JobBuilder] = {}
        self.current: str | None = None
        self.launcher: dict[str, Any] | None = None
        self.dropped: list[Dropped] = []
        self.kept_drops: Counter = Counter()
        self.omitted: Counter = Counter()
        self.failures: dict[tuple, WorkerFailure] = {}
        self.reports: list[str] = []
        self.pending_warnings: list[str] = []
        self.values = 0
        self.source = 0
        if default_header is not None:
            self._enter(default_header, "(default header):0")

    def _job_key(self) -> str | None:
        return None if self.current == _INVALID_HEADER else self.current

    def drop(self, where: str, reason: str, text: str = "") -> None:
        """Record a dropped item (`where` is `source:line`), or only count it beyond the limit."""
        key = self._job_key()
        if self.kept_drops[key] >= limits.MAX_DROPPED_PER_JOB:
            self.omitted[key] += 1
            return
        self.kept_drops[key] += 1
        source, _, line = where.rpartition(":")
        self.dropped.append(Dropped(limits.text(source, 1_000), int(line) if line.isdigit() else 0,
                                    limits.text(reason, MAX_REASON_CHARS), _excerpt(text), key))

    def _enter(self, header: RunHeader, where: str) -> None:
        key = header.job_key()
        if key not in self.jobs and len(self.jobs) >= limits.MAX_JOBS:
            self.current = _INVALID_HEADER
            self.drop(where, f"more than {limits.MAX_JOBS} run headers in one input: this one is not kept")
            return
        job = self.jobs.setdefault(key, _JobBuilder(header))
        job.warn(header.extra.get("warning"))
        for warning in self.pending_warnings:
            job.warn(warning)
        self.pending_warnings.clear()
        self.current = key

    def _job(self) -> _JobBuilder | None:
        if self.current == _INVALID_HEADER:
            return None
        if self.current is None and self.launcher is not None:
            self.header({}, "(launcher header):0")
            return self._job()
        return self.jobs.setdefault(self.current, _JobBuilder(None))

    def header(self, obj: Mapping[str, Any], where: str) -> None:
        notes: list[str] = []
        try:
            header = _header_from(obj, self.launcher, notes)
        except Invalid as exc:
            self.current = _INVALID_HEADER
            self.drop(where, f"invalid run header (its results are dropped too): {exc}", _json_excerpt(obj))
            return
        self._enter(header, where)
        for note in notes:
            self.drop(where, note)

    def result(self, obj: Mapping[str, Any], where: str) -> None:
        job = self._job()
        if job is None:
            self.drop(where, "result object of a run header that was not kept", _json_excerpt(obj))
            return
        try:
            result = _result(obj, job.header.ep_size if job.header else None, self.source, where)
        except Invalid as exc:
            self.drop(where, f"invalid result object: {exc}", _json_excerpt(obj))
            return
        for note in result.notes:
            self.drop(where, note, _json_excerpt(obj))
        if not result.phases:
            return
        key = (result.backend, result.size)
        first = job.results.get(key)
        if first is not None:
            if first.source == self.source:
                self.drop(where, f"duplicate result object for {result.backend} @ {result.size} "
                                 f"(the first, at {first.where}, is kept)")
            elif not first.same_measurement(result):
                self.drop(where, f"result object for {result.backend} @ {result.size} differs from the one "
                                 f"at {first.where} (that one is kept)")
            return
        if len(job.results) >= limits.MAX_RESULTS_PER_JOB:
            self.drop(where, f"more than {limits.MAX_RESULTS_PER_JOB} result objects in one job: not kept")
            return
        if self.values + result.values > limits.MAX_RANK_VALUES:
            self.drop(where, f"more than {limits.MAX_RANK_VALUES} rank values in one input: not kept")
            return
        self.values += result.values
        job.results[key] = result

    def json_object(self, obj: Any, where: str, text: str = "") -> None:
        if not isinstance(obj, Mapping):
            self.drop(where, "a JSON value that is not an object", text or _json_excerpt(obj))
        elif "backend" in obj and ("dispatch_us" in obj or "combine_us" in obj):
            self.result(obj, where)
        elif "hidden_size" in obj or isinstance(obj.get("local_batch_size"), list):
            self.header(obj, where)
        elif "launcher" in obj and "ep_size" in obj:
            self.launcher = dict(obj)
        elif "backend" in obj and "local_batch_size" in obj:
            self.result(obj, where)
        else:
            keys = sorted(str(k)[:40] for k in list(obj)[:20])
            self.drop(where, f"unrecognised JSON object (keys: {keys})", text or _json_excerpt(obj))

    def skip(self, where: str, backend: str, size: str | None, reason: str) -> None:
        job = self._job()
        if job is None:
            return
        try:
            skip = Skip(limits.name(backend, "skip line: backend").upper(),
                        None if size is None else limits.integer(int(size), "skip line: local_batch_size", 1,
                                                                 limits.MAX_LOCAL_BATCH_SIZE),
                        limits.text(reason.strip(), MAX_REASON_CHARS))
        except Invalid as exc:
            self.drop(where, f"invalid skip line: {exc}", reason)
            return
        if (skip.backend, skip.local_batch_size) not in job.skips and len(job.skips) >= limits.MAX_SKIPS_PER_JOB:
            self.drop(where, f"more than {limits.MAX_SKIPS_PER_JOB} skip lines in one job: not kept")
            return
        job.skips.setdefault((skip.backend, skip.local_batch_size), skip)

    def warning(self, text: str) -> None:
        job = self.jobs.get(self.current) if self.current not in (None, _INVALID_HEADER) else None
        if job is not None:
            job.warn(text)
        elif len(self.pending_warnings) < 100:
            self.pending_warnings.append(text)

    def failure(self, failure: WorkerFailure) -> None:
        key = (failure.rank, failure.pid)
        if key in self.failures:
            return
        if len(self.failures) >= limits.MAX_DROPPED_PER_JOB:
            self.omitted[None] += 1
            return
        self.failures[key] = failure

    def finish(self) -> ParsedOutput:
        jobs = []
        for key, builder in self.jobs.items():
            self.current = key
            job = builder.build(self.drop)
            if key is None and job.loadable:
                self.drop(
                    "(inputs):0",
                    f"{len({(t.backend, t.local_batch_size) for t in job.timings})} result objects "
                    "and their skips have no run header to say which profile and EP size they "
                    "belong to: load the run's stdout together with its output file",
                )
                continue
            if key is not None:
                jobs.append(job)
        return ParsedOutput(jobs=tuple(jobs), dropped=tuple(self.dropped),
                            failures=tuple(self.failures.values()), reports_written=tuple(self.reports),
                            omitted=dict(self.omitted))


# ---- streams -----------------------------------------------------------------------------------

def _is_object_line(line: str) -> bool:
    """Inside a pretty-printed object every line is indented or closes a bracket."""
    return line[:1] in (" ", "\t", "}", "]") or not line.strip()


def _scan_stream(lines: jsonscan.Lines, source: str, out: _Collector) -> None:
    for number, line in lines:
        where = f"{source}:{number}"
        if line is None:
            out.drop(where, f"a line of more than {limits.MAX_OBJECT_CHARS} characters")
        elif line.startswith("{"):
            _read_object(lines, number, line, source, out)
        elif line.startswith("[bench_moe_comm]"):
            stripped = line.strip()
            if (match := SKIP_LINE.match(stripped)) is not None:
                out.skip(where, match["backend"], match["size"], match["reason"])
            elif (match := WARNING_LINE.match(stripped)) is not None:
                out.warning(match["text"])
        elif WORKER_FAILURE in line:
            _read_failure(lines, line, source, out)
        elif (match := REPORT_LINE.match(line.strip())) is not None and len(out.reports) < MAX_REPORTS:
            out.reports.append(limits.text(match["path"], 4_096))


def _read_object(lines: jsonscan.Lines, start: int, first: str, source: str, out: _Collector) -> None:
    """Read the object that begins with `first` (line `start`)."""
    where = f"{source}:{start}"
    first = first.rstrip()
    if first.endswith("}") and first != "{":
        _decode(first, where, out)
        return
    body, size, oversized = [first], len(first), False
    for number, line in lines:
        if line is None:
            oversized = True  # a line beyond the limit inside the object
            continue
        if line.startswith("{") or (not _is_object_line(line) and (
                SKIP_LINE.match(line.strip()) or WORKER_FAILURE in line)):
            lines.push_back((number, line))
            break
        if not _is_object_line(line):
            continue  # a log line that landed inside the object
        size += len(line) + 1
        if size > limits.MAX_OBJECT_CHARS:
            oversized, body = True, body[:1]
        elif not oversized:
            body.append(line)
        if line.rstrip() == "}":
            if oversized:
                out.drop(where, f"a JSON object of more than {limits.MAX_OBJECT_CHARS} characters", first)
            else:
                _decode("\n".join(body), where, out)
            return
    out.drop(where, "truncated JSON object (it never closes)", "\n".join(body[:50]))


def _decode(text: str, where: str, out: _Collector) -> None:
    try:
        obj = jsonscan.loads(text)
    except Invalid as exc:
        out.drop(where, str(exc), text)
        return
    out.json_object(obj, where, text)


def _read_failure(lines: jsonscan.Lines, first: str, source: str, out: _Collector) -> None:
    block, size = [first], len(first)
    for number, line in lines:
        if line is None:
            continue
        if line.startswith("{") or SKIP_LINE.match(line.strip()) or WORKER_FAILURE in line \
                or len(block) >= MAX_FAILURE_LINES:
            lines.push_back((number, line))
            break
        if size < limits.MAX_TRACEBACK_CHARS:
            block.append(line[: limits.MAX_TRACEBACK_CHARS])
            size += len(block[-1]) + 1
    text = limits.text("\n".join(block).strip(), limits.MAX_TRACEBACK_CHARS)
    ident = WORKER_IDENTITY.search(text)
    rank = int(ident["rank"]) if ident else None
    world = int(ident["world"]) if ident else None
    pid = int(ident["pid"]) if ident else None
    out.failure(WorkerFailure(limits.text(source, 1_000), rank, world, pid, text))


# ---- output files ------------------------------------------------------------------------------

REPORT_START = re.compile(r'^\s*(\[\s*($|[{\]])|\{\s*"(benchmark_metadata|results)")')
HEAD_CHARS = 64 * 1024


def looks_like_output_file(text: str) -> bool:
    """True for an `--output_file` report (a JSON list, or an object with `benchmark_metadata`),
    judged by its beginning."""
    return REPORT_START.match(text[:HEAD_CHARS]) is not None


def _read_output_file(stream: TextIO, source: str, out: _Collector) -> None:
    for event in jsonscan.read_output_file(stream):
        where = f"{source}:{event.line}"
        if event.kind == "metadata":
            if isinstance(event.value, Mapping):
                out.header(event.value, where)
            else:
                out.drop(where, "benchmark_metadata is not an object")
        elif event.kind == "item":
            out.json_object(event.value, where)
        elif event.kind == "dropped":
            out.drop(where, event.reason)
        else:
            out.drop(f"{source}:0", f"truncated or malformed output file {event.reason}")


# ---- entry points ------------------------------------------------------------------------------

def parse_streams(inputs: Iterable[tuple[str, TextIO]], default_header: RunHeader | None = None) -> ParsedOutput:
    """Parse (source name, seekable text stream) pairs of one or more invocations into one
    `ParsedOutput`, streams first, then output files.

    Output files without a header of their own (the seed version's bare list) take
    `default_header`, or the single run header found in the streams among `inputs`.
    """
    streams, reports = [], []
    for index, (source, stream) in enumerate(inputs):
        head = stream.read(HEAD_CHARS)
        stream.seek(0)
        (reports if looks_like_output_file(head) else streams).append((index, source, stream))
    out = _Collector(default_header)
    for index, source, stream in streams:
        out.source = index
        _scan_stream(jsonscan.Lines(stream), source, out)
    if default_header is None:
        keyed = [job.header for key, job in out.jobs.items() if key is not None]
        if len(keyed) == 1:
            default_header = keyed[0]
    for index, source, stream in reports:
        out.source = index
        out.current = default_header.job_key() if default_header is not None else None
        out.launcher = None
        _read_output_file(stream, source, out)
    return out.finish()


def parse_texts(inputs: Iterable[tuple[str, str]], default_header: RunHeader | None = None) -> ParsedOutput:
    """Parse (source name, text) pairs; see `parse_streams`."""
    return parse_streams([(source, io.StringIO(text, newline=None)) for source, text in inputs], default_header)


def parse_paths(paths: Iterable[str | Path], default_header: RunHeader | None = None) -> ParsedOutput:
    """Read files (stdout, stderr, output files) as streams and parse them together; see
    `parse_streams`. Bytes that are not UTF-8 are read as U+FFFD. Raises OSError for a file that
    cannot be opened."""
    handles = []
    try:
        for path in paths:
            handles.append((str(path), open(path, encoding="utf-8", errors="replace", newline=None)))
        return parse_streams(handles, default_header)
    finally:
        for _, handle in handles:
            handle.close()
