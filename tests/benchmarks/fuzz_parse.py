"""A seeded mutation fuzzer for the parser and the loader (issue 14's proof).

Takes the recorded outputs in tests/data (stdout, stderr, output files of every version), mutates
each input one to three times (truncation, bit flips, duplicated slices, deep nesting, extreme
numbers, lone surrogates and control characters, huge sizes, swapped types, garbage and very long
lines, lost lines), parses every input in this process under a time limit, loads a sample into a
PostgreSQL database, and counts:

* exceptions: anything the parser or the loader raised (there must be none: bad input is dropped
  with a reason);
* hangs: inputs that took more than `--hang-s` seconds (2 s) to parse (each is also cut off by an
  alarm at `--limit-s`);
* invalid values accepted: a kept record that breaks the contract or a limit (a time that is not
  positive and finite, -0.0, a name with control characters or lone surrogates, a size or EP size
  out of range, a rank outside the EP size, a knob outside its vocabulary, text PostgreSQL cannot
  store), checked by `invalid_values` independently of the parser's own checks, and in the
  database after each load.

    python tests/benchmarks/fuzz_parse.py [--inputs 20000] [--seed 14] [--load-every 100]
        [--database-url URL]   (default: MOECOMM_TEST_DATABASE_URL, else an embedded server)

Exit status 0 when every count is 0. Figures: docs/parser-limits.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from moecomm_tasks import db, limits, store
from moecomm_tasks.knobs import TIMING_METHODS
from moecomm_tasks.parse import parse_texts
from moecomm_tasks.records import OPS, PHASES

DATA = Path(__file__).resolve().parent.parent / "data"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
EXTREME_NUMBERS = ["1" + "0" * 5000, "1" + "0" * 400, "1e400", "-1e400", "1e-400", "-0.0", "0", "0.0", "-1",
                   "NaN", "Infinity", "-Infinity", "2147483648", "4294967296", "50000000", "9" * 30, "1e300",
                   "3.6e9", "true", "null", '"12"', "[]", "{}"]
STRING_INSERTS = ["\\ud800", "\\udfff", "\\u0000", "\\u001b", "\udc80", "\x00", "\x1b", "\n", "\\\\", '\\"',
                  "ä€😀", "x" * 5000]
SIZE_KEYS = re.compile(r'"(ep_size|local_batch_size|count|hidden_size|top_k|num_experts_total|device_count)": [^,\n}]+')
STORABLE = re.compile(r"[\x00\ud800-\udfff]")
NAME_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class Timeout(Exception):
    pass


def corpus() -> list[tuple[str, str]]:
    files = sorted(p for p in DATA.iterdir() if p.suffix in (".txt", ".json") and p.is_file())
    return [(p.name, p.read_text(encoding="utf-8", errors="replace")) for p in files]


def mutate(text: str, rng: random.Random) -> tuple[str, str]:
    """One mutation: (new text, its name)."""
    kind = rng.choice(["truncate", "bitflip", "duplicate", "nest", "number", "string", "size", "type",
                       "lines", "longline", "splice"])
    n = len(text)
    if kind == "truncate" and n:
        return text[: rng.randrange(n)], kind
    if kind == "bitflip" and n:
        chars = list(text)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(n)
            chars[i] = chr((ord(chars[i]) ^ (1 << rng.randrange(16))) % 0x110000)
        return "".join(chars), kind
    if kind == "duplicate" and n:
        a = rng.randrange(n)
        b = min(n, a + rng.randint(1, 4000))
        copies = rng.choice([1, 2, 10, 200])
        return text[:b] + text[a:b] * copies + text[b:], kind
    if kind == "nest":
        depth = rng.choice([33, 100, 2000, 100_000])
        value = rng.choice(["[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth])
        spots = [m.start() for m in NUMBER.finditer(text)]
        if spots:
            i = rng.choice(spots)
            end = NUMBER.match(text, i).end()
            return text[:i] + value + text[end:], kind
        return value + text, kind
    if kind == "number":
        spots = list(NUMBER.finditer(text))
        if spots:
            m = rng.choice(spots)
            return text[: m.start()] + rng.choice(EXTREME_NUMBERS) + text[m.end():], kind
    if kind == "string":
        spots = list(STRING.finditer(text))
        if spots:
            m = rng.choice(spots)
            at = rng.randint(m.start() + 1, m.end() - 1)
            return text[:at] + rng.choice(STRING_INSERTS) + text[at:], kind
    if kind == "size":
        spots = list(SIZE_KEYS.finditer(text))
        if spots:
            m = rng.choice(spots)
            value = rng.choice(["50000000", "2147483648", "-5", "0", "Infinity", "1" + "0" * 400,
                                "[" + ", ".join(["1048576"] * rng.choice([3, 20000])) + "]", '"8"', "null"])
            return text[: m.start()] + f'"{m.group(1)}": {value}' + text[m.end():], kind
    if kind == "type":
        spots = list(re.finditer(r'": ', text))
        if spots:
            m = rng.choice(spots)
            end = re.compile(r'[^,\n}\]]*').match(text, m.end()).end()
            return text[: m.end()] + rng.choice(["null", "true", '"x"', "[]", "{}", "[1, 2]", '{"rank0": 1}']) + text[end:], kind
    if kind == "lines":
        lines = text.split("\n")
        for _ in range(rng.randint(1, 5)):
            if not lines:
                break
            i = rng.randrange(len(lines))
            op = rng.random()
            if op < 0.4:
                del lines[i]
            elif op < 0.7:
                lines.insert(i, rng.choice(["{", "}", "[bench_moe_comm] Skipping X: y", "garbage ]]]",
                                            "[bench_moe_comm] WARNING: CUPTI Reason: A @ local_batch_size=1: rank0: e",
                                            "[bench_moe_comm worker] uncaught exception:", "\x00\x00"]))
            else:
                j = rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines), kind
    if kind == "longline":
        at = rng.randrange(n + 1)
        return text[:at] + "\n" + rng.choice(["x", "{", " "]) * rng.choice([10_000, 200_000]) + "\n" + text[at:], kind
    if kind == "splice" and n:
        other = rng.choice(CORPUS)[1]
        a = rng.randrange(n)
        return text[:a] + other[rng.randrange(len(other) or 1):], kind
    return text, "none"


def storable(text: object) -> bool:
    return isinstance(text, str) and STORABLE.search(text) is None


def good_name(value: object, max_chars: int = limits.MAX_NAME_CHARS) -> bool:
    return isinstance(value, str) and 0 < len(value) <= max_chars and value == value.strip() \
        and NAME_BAD.search(value) is None


def good_time(value: object, zero_ok: bool = False) -> bool:
    return (type(value) is float and math.isfinite(value) and math.copysign(1.0, value) > 0
            and (value > 0 or (zero_ok and value == 0)) and value <= limits.MAX_TIME_US)


def invalid_values(parsed) -> list[str]:
    """Every kept value that breaks the contract or a limit, checked from scratch."""
    bad = []
    for job in parsed.jobs:
        h = job.header
        if not (isinstance(h.ep_size, int) and 1 <= h.ep_size <= limits.MAX_EP_SIZE):
            bad.append(f"ep_size {h.ep_size!r}")
        if not good_name(h.profile) or not (h.quant_algo is None or good_name(h.quant_algo)):
            bad.append(f"header names {h.profile!r} {h.quant_algo!r}")
        for name in ("hidden_size", "top_k", "num_experts"):
            value = getattr(h, name)
            if value is not None and not (isinstance(value, int) and 0 < value <= limits.MAX_SHAPE):
                bad.append(f"{name} {value!r}")
        try:
            text = json.dumps(dict(h.extra), allow_nan=False, ensure_ascii=False)
            if not storable(text):
                bad.append("header extra not storable")
        except (TypeError, ValueError) as exc:
            bad.append(f"header extra: {exc}")
        if job.warning is not None and not storable(job.warning):
            bad.append("warning not storable")
        for t in job.timings:
            if not good_name(t.backend) or t.op not in OPS or not (0 < t.local_batch_size <= limits.MAX_LOCAL_BATCH_SIZE):
                bad.append(f"timing key {t.backend!r} {t.local_batch_size!r} {t.op!r}")
            if not 0 <= t.rank < h.ep_size:
                bad.append(f"rank {t.rank} of EP {h.ep_size}")
            if t.payload_dtype is not None and not good_name(t.payload_dtype):
                bad.append(f"payload_dtype {t.payload_dtype!r}")
            k = t.knobs
            if k.timing_method not in TIMING_METHODS or not all(
                    isinstance(getattr(k, f), bool) or (f in ("pdl", "low_precision_combine") and getattr(k, f) is None)
                    for f in ("cuda_graph", "pdl", "perfect_router", "payload_in_workspace", "low_precision_combine")):
                bad.append(f"knobs {k!r}")
            if not all(storable(u) for u in t.unhonoured):
                bad.append("unhonoured not storable")
            s = t.stats
            if s is not None and not (good_time(s.mean_us) and all(
                    v is None or good_time(v) for v in (s.median_us, s.min_us, s.max_us))
                    and (s.stdev_us is None or good_time(s.stdev_us, zero_ok=True))):
                bad.append(f"time {s!r}")
        for k in job.kernels:
            if not good_name(k.kernel, limits.MAX_KERNEL_NAME_CHARS) or k.phase not in PHASES \
                    or not 0 <= k.rank < h.ep_size or not 0 <= k.count <= limits.MAX_INT:
                bad.append(f"kernel {k.kernel[:40]!r} {k.rank} {k.count}")
            if not good_time(k.stats.mean_us):
                bad.append(f"kernel time {k.stats!r}")
        for s in job.skips:
            if not good_name(s.backend) or not storable(s.reason) or not (
                    s.local_batch_size is None or 0 < s.local_batch_size <= limits.MAX_LOCAL_BATCH_SIZE):
                bad.append(f"skip {s!r}"[:100])
    for d in parsed.dropped:
        if not (storable(d.reason) and storable(d.excerpt) and storable(d.source)):
            bad.append("dropped record not storable")
    for f in parsed.failures:
        if not storable(f.traceback):
            bad.append("traceback not storable")
    return bad


def _alarm(signum, frame):
    raise Timeout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--load-every", type=int, default=100, help="load every Nth loadable input into PostgreSQL")
    parser.add_argument("--hang-s", type=float, default=2.0)
    parser.add_argument("--limit-s", type=int, default=10)
    parser.add_argument("--database-url", help="a server the fuzzer may create a database on")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    counts: Counter = Counter()
    examples: dict[str, list[str]] = {}
    mutations: Counter = Counter()
    slowest = (0.0, "")
    signal.signal(signal.SIGALRM, _alarm)
    server = args.database_url or os.environ.get("MOECOMM_TEST_DATABASE_URL")
    embedded = None
    if not server:
        from moecomm_tasks.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="moecomm-fuzz-")))
        server = embedded.start()
    started = time.perf_counter()
    try:
        with db.scratch_database(server, prefix="moecomm_fuzz") as url:
            engine = db.make_engine(url)
            for i in range(args.inputs):
                name, text = rng.choice(CORPUS)
                applied = []
                for _ in range(rng.choice([1, 1, 2, 3])):
                    text, kind = mutate(text, rng)
                    applied.append(kind)
                    mutations[kind] += 1
                label = f"#{i} {name} {'+'.join(applied)}"
                companion = []
                if name.endswith("_output.json") or name.startswith("seed_output"):
                    stdout = name.replace("_output.json", "_stdout.txt").replace("seed_output_2ranks.json",
                                                                               "seed_stdout_2ranks.txt")
                    companion = [(stdout, t) for n, t in CORPUS if n == stdout]
                counts["inputs"] += 1
                t0 = time.perf_counter()
                signal.alarm(args.limit_s)
                try:
                    parsed = parse_texts(companion + [(name, text)])
                except Timeout:
                    counts["hangs"] += 1
                    examples.setdefault("hangs", []).append(label)
                    continue
                except Exception:  # noqa: BLE001 - counting every escape is the point
                    counts["exceptions"] += 1
                    examples.setdefault("exceptions", []).append(f"{label}: {traceback.format_exc(limit=3)}")
                    continue
                finally:
                    signal.alarm(0)
                elapsed = time.perf_counter() - t0
                slowest = max(slowest, (elapsed, label))
                if elapsed > args.hang_s:
                    counts["hangs"] += 1
                    examples.setdefault("hangs", []).append(f"{label}: {elapsed:.1f} s")
                bad = invalid_values(parsed)
                if bad:
                    counts["invalid_values_accepted"] += 1
                    examples.setdefault("invalid_values_accepted", []).append(f"{label}: {bad[:3]}")
                counts["loadable"] += parsed.loadable
                if parsed.loadable and counts["loadable"] % args.load_every == 0:
                    counts["loaded"] += 1
                    try:
                        store.load(engine, parsed, f"fuzz-{i}", datetime(2026, 1, 1, tzinfo=timezone.utc))
                    except Exception:  # noqa: BLE001
                        counts["load_exceptions"] += 1
                        examples.setdefault("load_exceptions", []).append(f"{label}: {traceback.format_exc(limit=3)}")
            with engine.connect() as conn:
                from sqlalchemy import text as sql

                counts["invalid_rows_in_database"] = conn.execute(sql(
                    "SELECT count(*) FROM measurement_flat WHERE NOT (mean_us > 0 AND mean_us < 'Infinity') "
                    "OR median_us <= 0 OR min_us <= 0 OR max_us <= 0 OR stdev_us < 0")).scalar()
            engine.dispose()
    finally:
        if embedded is not None:
            embedded.stop()
    seconds = time.perf_counter() - started
    print(f"seed {args.seed}: {counts['inputs']} inputs from {len(CORPUS)} recorded outputs in {seconds:.0f} s; "
          f"{counts['loadable']} loadable, {counts['loaded']} loaded into PostgreSQL")
    print("mutations: " + ", ".join(f"{k} {v}" for k, v in sorted(mutations.items())))
    print(f"slowest parse: {slowest[0]:.2f} s ({slowest[1]})")
    failed = 0
    for key in ("exceptions", "hangs", "invalid_values_accepted", "load_exceptions", "invalid_rows_in_database"):
        print(f"{key}: {counts[key]}")
        failed += counts[key]
        for example in examples.get(key, [])[:5]:
            print(f"  {example}")
    return 1 if failed else 0


CORPUS = corpus()

if __name__ == "__main__":
    sys.exit(main())
