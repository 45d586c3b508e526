"""Read what `bench_moe_comm.py` (any upstream version) or our worker printed, into typed records.

Two kinds of input, in any mix:

* a captured stream (stdout, stderr, or both in one file): pretty-printed JSON objects (the
  launcher header, the run header, one result object per backend and size) between plain lines
  (skip lines, `Report written to`, worker tracebacks, library logs; a log line may even land
  inside a pretty-printed object, and is set aside);
* an `--output_file`: a JSON list of result objects (seed version) or
  `{"benchmark_metadata": {...}, "results": [...]}` (newer versions).

Nothing is lost silently: every object that is truncated, malformed or invalid (negative, NaN or
infinite times, rank keys that do not match the EP size) becomes a `Dropped` record with its
reason, and every complete, valid object is kept. No database or Airflow import here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

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
    r"(?: @ local_batch_size=(?P<size>\d+))?: (?P<reason>.*)$"
)
REPORT_LINE = re.compile(r"^Report written to (?P<path>.+?)\s*$")
WORKER_FAILURE = "[bench_moe_comm worker] uncaught exception:"
WORKER_IDENTITY = re.compile(r"rank=(?P<rank>\d+)/(?P<world>\d+)(?: local_rank=\d+)? pid=(?P<pid>\d+)")
RANK_KEY = re.compile(r"^rank(\d+)$")
STAT_KEYS = ("mean", "median", "stdev", "min", "max")
KERNEL_LISTS = {"dispatch_kernels": "dispatch", "combine_kernels": "combine", "other_kernels": "other"}
HEADER_FIELDS = {
    "profile", "ep_size", "hidden_size", "top_k", "num_experts_total", "quant_algo", "dtype",
    "local_batch_size", "experts_per_rank", "max_num_tokens_per_rank", "device_count", "backend",
    "launcher", "bench",
}
EXCERPT_CHARS = 200


class _Invalid(Exception):
    """A result object that fails validation; the message is the reason it is dropped."""


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Invalid(f"expected an integer, got {value!r}")
    try:
        return int(value)
    except ValueError as exc:
        raise _Invalid(f"expected an integer, got {value!r}") from exc


def _header_from(obj: Mapping[str, Any], launcher: Mapping[str, Any] | None) -> RunHeader:
    merged = dict(launcher or {})
    merged.update(obj)
    sizes = merged.get("local_batch_size") or ()
    if isinstance(sizes, int):
        sizes = (sizes,)
    backend = merged.get("backend")
    quant = merged.get("quant_algo")
    return RunHeader(
        profile=merged.get("profile"),
        ep_size=_optional_int(merged.get("ep_size")),
        hidden_size=_optional_int(merged.get("hidden_size")),
        top_k=_optional_int(merged.get("top_k")),
        num_experts=_optional_int(merged.get("num_experts_total")),
        quant_algo=str(quant) if quant is not None else None,
        dtype=merged.get("dtype"),
        local_batch_sizes=tuple(int(s) for s in sizes),
        experts_per_rank=_optional_int(merged.get("experts_per_rank")),
        max_num_tokens_per_rank=_optional_int(merged.get("max_num_tokens_per_rank")),
        device_count=_optional_int(merged.get("device_count")),
        backend=str(backend).upper() if backend else None,
        launcher=merged.get("launcher"),
        extra={k: v for k, v in merged.items() if k not in HEADER_FIELDS},
    )


def _time(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid(f"{what}: not a number ({value!r})")
    value = float(value)
    if not math.isfinite(value):
        raise _Invalid(f"{what}: not a finite time ({value!r})")
    if value < 0:
        raise _Invalid(f"{what}: negative time ({value!r})")
    return value


def _stats(value: Any, what: str) -> Stats:
    if isinstance(value, Mapping):
        if "mean" not in value:
            raise _Invalid(f"{what}: stats object without 'mean'")
        found = {k: _time(value[k], f"{what}.{k}") for k in STAT_KEYS if value.get(k) is not None}
        return Stats(
            mean_us=found["mean"],
            median_us=found.get("median"),
            stdev_us=found.get("stdev"),
            min_us=found.get("min"),
            max_us=found.get("max"),
        )
    return Stats(mean_us=_time(value, what))


def _per_rank(value: Any, ep_size: int | None, what: str) -> dict[int, Stats]:
    if not isinstance(value, Mapping) or not value:
        raise _Invalid(f"{what}: expected an object of rankN keys, got {_excerpt(repr(value))}")
    ranks: dict[int, Stats] = {}
    for key, item in value.items():
        match = RANK_KEY.match(str(key))
        if not match:
            raise _Invalid(f"{what}: unexpected key {key!r} (expected rank0, rank1, ...)")
        ranks[int(match.group(1))] = _stats(item, f"{what}.{key}")
    expected = ep_size if ep_size is not None else len(ranks)
    if sorted(ranks) != list(range(expected)):
        raise _Invalid(
            f"{what}: rank keys {sorted(ranks)} do not match EP size {expected} "
            f"(expected rank0..rank{expected - 1})"
        )
    return ranks


def _result_records(
    obj: Mapping[str, Any], ep_size: int | None
) -> tuple[list[Timing], list[KernelTiming], list[str]]:
    """Validate one result object; return its timings, kernel timings and notes on lost phases."""
    backend = obj.get("backend")
    if not isinstance(backend, str) or not backend.strip():
        raise _Invalid(f"'backend' is missing or not a name ({backend!r})")
    backend = backend.strip().upper()
    size = obj.get("local_batch_size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise _Invalid(f"'local_batch_size' must be a positive integer, got {size!r}")
    payload_dtype = obj.get("payload_dtype")
    timings: list[Timing] = []
    lost: list[str] = []
    for op in OPS:
        if f"{op}_us" not in obj:
            continue
        ranks = _per_rank(obj[f"{op}_us"], ep_size, f"{op}_us")
        if all(s.mean_us == 0.0 for s in ranks.values()):
            lost.append(f"{backend} @ {size}: {op}_us is 0 on every rank: the phase was not measured")
            continue
        timings.extend(
            Timing(backend, size, op, rank, stats, payload_dtype) for rank, stats in ranks.items()
        )
    if not timings and not lost:
        raise _Invalid("no 'dispatch_us' or 'combine_us' in the result object")
    kernels: list[KernelTiming] = []
    for key, phase in KERNEL_LISTS.items():
        entries = obj.get(key) or []
        if not isinstance(entries, list):
            raise _Invalid(f"{key}: expected a list")
        for entry in entries:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                raise _Invalid(f"{key}: entry without a kernel name")
            count = entry.get("count", 0)
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise _Invalid(f"{key}: kernel {entry['name']!r} has a bad count {count!r}")
            ranks = _per_rank(entry.get("per_rank"), ep_size, f"{key}[{entry['name']}].per_rank")
            kernels.extend(
                KernelTiming(backend, size, phase, entry["name"], rank, count, stats)
                for rank, stats in ranks.items()
            )
    return timings, kernels, lost


@dataclass
class _JobBuilder:
    header: RunHeader | None
    timings: dict[tuple, Timing] = field(default_factory=dict)
    kernels: dict[tuple, KernelTiming] = field(default_factory=dict)
    skips: dict[tuple, Skip] = field(default_factory=dict)

    def build(self) -> ParsedJob:
        return ParsedJob(
            header=self.header,
            timings=tuple(self.timings.values()),
            kernels=tuple(self.kernels.values()),
            skips=tuple(self.skips.values()),
        )


class _Collector:
    """Accumulates records across inputs; a record seen twice (stdout and output file) is kept once."""

    def __init__(self, default_header: RunHeader | None = None) -> None:
        self.jobs: dict[str | None, _JobBuilder] = {}
        self.current: str | None = None
        self.launcher: dict[str, Any] | None = None
        self.default_header = default_header
        self.dropped: list[Dropped] = []
        self.failures: dict[tuple, WorkerFailure] = {}
        self.reports: list[str] = []
        if default_header is not None:
            self._enter(default_header)

    def _enter(self, header: RunHeader) -> None:
        key = header.job_key()
        self.jobs.setdefault(key, _JobBuilder(header))
        self.current = key

    def _job(self) -> _JobBuilder:
        if self.current is None and self.launcher is not None:
            self._enter(_header_from({}, self.launcher))
        return self.jobs.setdefault(self.current, _JobBuilder(None))

    def drop(self, source: str, line: int, reason: str, text: str) -> None:
        self.dropped.append(Dropped(source, line, reason, _excerpt(text), self.current))

    def header(self, obj: Mapping[str, Any], source: str, line: int) -> None:
        try:
            header = _header_from(obj, self.launcher)
        except (_Invalid, ValueError, TypeError) as exc:
            self.drop(source, line, f"invalid run header: {exc}", json.dumps(obj))
            return
        self._enter(header)

    def result(self, obj: Mapping[str, Any], source: str, line: int) -> None:
        job = self._job()
        ep_size = job.header.ep_size if job.header else None
        try:
            timings, kernels, lost = _result_records(obj, ep_size)
        except _Invalid as exc:
            self.drop(source, line, f"invalid result object: {exc}", json.dumps(obj))
            return
        for reason in lost:
            self.drop(source, line, reason, json.dumps(obj))
        for t in timings:
            job.timings.setdefault((t.backend, t.local_batch_size, t.op, t.rank), t)
        for k in kernels:
            job.kernels.setdefault((k.backend, k.local_batch_size, k.phase, k.kernel, k.rank), k)

    def json_object(self, obj: Any, source: str, line: int) -> None:
        if not isinstance(obj, Mapping):
            self.drop(source, line, "a JSON value that is not an object", json.dumps(obj))
        elif "backend" in obj and ("dispatch_us" in obj or "combine_us" in obj):
            self.result(obj, source, line)
        elif "hidden_size" in obj or isinstance(obj.get("local_batch_size"), list):
            self.header(obj, source, line)
        elif "launcher" in obj and "ep_size" in obj:
            self.launcher = dict(obj)
        elif "backend" in obj and "local_batch_size" in obj:
            self.result(obj, source, line)
        else:
            self.drop(source, line, f"unrecognised JSON object (keys: {sorted(obj)})", json.dumps(obj))

    def skip(self, backend: str, size: str | None, reason: str) -> None:
        job = self._job()
        skip = Skip(backend.upper(), int(size) if size else None, reason.strip())
        job.skips.setdefault((skip.backend, skip.local_batch_size), skip)

    def finish(self) -> ParsedOutput:
        jobs = []
        for key, builder in self.jobs.items():
            job = builder.build()
            if key is None and job.loadable:
                self.drop(
                    "(inputs)", 0,
                    f"{len({(t.backend, t.local_batch_size) for t in job.timings})} result objects "
                    "and their skips have no run header to say which profile and EP size they "
                    "belong to: load the run's stdout together with its output file",
                    "",
                )
                continue
            if key is not None:
                jobs.append(job)
        return ParsedOutput(
            jobs=tuple(jobs),
            dropped=tuple(self.dropped),
            failures=tuple(self.failures.values()),
            reports_written=tuple(self.reports),
        )


def _is_object_line(line: str) -> bool:
    """Inside a pretty-printed object every line is indented or closes a bracket."""
    return line[:1] in (" ", "\t", "}", "]") or not line.strip()


def _scan_stream(text: str, source: str, out: _Collector) -> None:
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("{"):
            i = _read_object(lines, i, source, out)
            continue
        stripped = line.strip()
        if (match := SKIP_LINE.match(stripped)) is not None:
            out.skip(match["backend"], match["size"], match["reason"])
        elif (match := REPORT_LINE.match(stripped)) is not None:
            out.reports.append(match["path"])
        elif WORKER_FAILURE in line:
            i = _read_failure(lines, i, source, out)
            continue
        i += 1


def _read_object(lines: list[str], start: int, source: str, out: _Collector) -> int:
    """Read the object that begins at `lines[start]`; return the index of the next line to scan."""
    first = lines[start].rstrip()
    if first.endswith("}") and first != "{":
        try:
            out.json_object(json.loads(first), source, start + 1)
        except json.JSONDecodeError as exc:
            out.drop(source, start + 1, f"malformed JSON object: {exc.msg}", first)
        return start + 1
    body = [first]
    i = start + 1
    while i < len(lines):
        line = lines[i]
        if line.startswith("{"):
            break
        if _is_object_line(line):
            body.append(line)
            if line.rstrip() == "}":
                text = "\n".join(body)
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    out.drop(source, start + 1, f"malformed JSON object: {exc.msg}", text)
                else:
                    out.json_object(obj, source, start + 1)
                return i + 1
        elif SKIP_LINE.match(line.strip()) or WORKER_FAILURE in line:
            break
        i += 1
    out.drop(
        source, start + 1, "truncated JSON object (it never closes)", "\n".join(body)
    )
    return i


def _read_failure(lines: list[str], start: int, source: str, out: _Collector) -> int:
    block = [lines[start]]
    i = start + 1
    while i < len(lines) and i - start < 400:
        line = lines[i]
        if line.startswith("{") or SKIP_LINE.match(line.strip()) or WORKER_FAILURE in line:
            break
        block.append(line)
        i += 1
    text = "\n".join(block).strip()
    ident = WORKER_IDENTITY.search(text)
    rank = int(ident["rank"]) if ident else None
    world = int(ident["world"]) if ident else None
    pid = int(ident["pid"]) if ident else None
    out.failures.setdefault((rank, pid), WorkerFailure(source, rank, world, pid, text))
    return i


_DECODER = json.JSONDecoder()
_WS = re.compile(r"\s*")


def _skip_ws(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()


def _salvage_list(text: str, pos: int) -> tuple[list[Any], str | None]:
    """Decode the list that starts at `text[pos]`, keeping every complete item before an error."""
    items: list[Any] = []
    pos = _skip_ws(text, pos + 1)
    if text.startswith("]", pos):
        return items, None
    while True:
        try:
            item, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            return items, f"after {len(items)} complete result objects: {exc.msg}"
        items.append(item)
        pos = _skip_ws(text, pos)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
        elif text.startswith("]", pos):
            return items, None
        else:
            return items, f"after {len(items)} complete result objects: the list never closes"


def _salvage_report(text: str) -> tuple[dict[str, Any], list[Any], str | None]:
    """Decode a `{benchmark_metadata, results}` report, salvaging what a truncation left."""
    metadata: dict[str, Any] = {}
    results: list[Any] = []
    pos = _skip_ws(text, text.index("{") + 1)
    while pos < len(text) and not text.startswith("}", pos):
        try:
            key, pos = _DECODER.raw_decode(text, pos)
            pos = _skip_ws(text, pos)
            if not text.startswith(":", pos):
                return metadata, results, "malformed report: expected ':' after a key"
            pos = _skip_ws(text, pos + 1)
            if key == "results" and text.startswith("[", pos):
                results, error = _salvage_list(text, pos)
                if error:
                    return metadata, results, error
                pos = _skip_ws(text, _DECODER.raw_decode(text, pos)[1])
            else:
                value, pos = _DECODER.raw_decode(text, pos)
                if key == "benchmark_metadata" and isinstance(value, dict):
                    metadata = value
                pos = _skip_ws(text, pos)
        except json.JSONDecodeError as exc:
            return metadata, results, f"malformed report: {exc.msg}"
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
    return metadata, results, None


REPORT_START = re.compile(r'^\s*(\[\s*($|[{\]])|\{\s*"(benchmark_metadata|results)")')


def looks_like_output_file(text: str) -> bool:
    """True for an `--output_file` report (a JSON list, or an object with `benchmark_metadata`)."""
    return REPORT_START.match(text) is not None


def _read_output_file(text: str, source: str, out: _Collector) -> None:
    if text.lstrip().startswith("["):
        items, error = _salvage_list(text, text.index("["))
    else:
        metadata, items, error = _salvage_report(text)
        if metadata:
            out.header(metadata, source, 1)
    for item in items:
        out.json_object(item, source, 1)
    if error:
        out.drop(source, 0, f"truncated or malformed output file {error}", text[-EXCERPT_CHARS:])


def parse_texts(
    inputs: Iterable[tuple[str, str]], default_header: RunHeader | None = None
) -> ParsedOutput:
    """Parse (source name, text) pairs of one or more invocations into one `ParsedOutput`.

    Output files without a header of their own (the seed version's bare list) take
    `default_header`, or the single run header found in the streams among `inputs`.
    """
    # PostgreSQL text cannot hold NUL, and a crashing process can leave some in its output.
    inputs = [(source, text.replace("\x00", "\ufffd")) for source, text in inputs]
    streams = [(s, t) for s, t in inputs if not looks_like_output_file(t)]
    reports = [(s, t) for s, t in inputs if looks_like_output_file(t)]
    out = _Collector(default_header)
    for source, text in streams:
        _scan_stream(text, source, out)
    if default_header is None:
        keyed = [job.header for key, job in out.jobs.items() if key is not None]
        if len(keyed) == 1:
            default_header = keyed[0]
    for source, text in reports:
        out.current = default_header.job_key() if default_header is not None else None
        out.launcher = None
        _read_output_file(text, source, out)
    return out.finish()


def parse_paths(paths: Iterable[str | Path], default_header: RunHeader | None = None) -> ParsedOutput:
    """Read files (stdout, stderr, output files) and parse them together; see `parse_texts`."""
    inputs = []
    for path in paths:
        path = Path(path)
        inputs.append((str(path), path.read_text(encoding="utf-8", errors="replace")))
    return parse_texts(inputs, default_header)
