"""Parsing arbitrarily large or garbage benchmark output in bounded memory (issue 14, item 2).

Writes three inputs of `--size-mb` each (default 1,024 MB) into a temporary folder and parses each
in a fresh process (so that one's peak does not hide another's), printing side by side the peak
resident memory (ru_maxrss of that process), the time, the records kept and the dropped items:

* garbage: random printable lines, some starting with `{` (so the object reader runs on them),
  some NUL bytes and invalid UTF-8;
* repeated: the recorded seed stdout's header, then one valid result object repeated (a worker
  stuck in a loop): one result kept, each copy reported as a duplicate;
* distinct: valid result objects for ever new sizes (the bound on records kept per job shows).

    python tests/benchmarks/bench_parse_memory.py [--size-mb 1024] [--keep DIR]

Target: every peak under 500 MB. Figures and the machine: docs/parser-limits.md.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data"
MB = 1024 * 1024


def write_garbage(path: Path, size: int, rng: random.Random) -> None:
    alphabet = bytes(range(32, 127))
    with path.open("wb") as out:
        written = 0
        while written < size:
            lines = []
            for _ in range(1000):
                body = bytes(rng.choices(alphabet, k=rng.randint(0, 200)))
                kind = rng.random()
                if kind < 0.05:
                    body = b"{" + body
                elif kind < 0.06:
                    body = body + b"\x00\xff\xfe"
                lines.append(body)
            chunk = b"\n".join(lines) + b"\n"
            out.write(chunk)
            written += len(chunk)


def seed_parts() -> tuple[str, str]:
    seed = (DATA / "seed_stdout_2ranks.txt").read_text()
    start = seed.index('{\n  "backend"')
    end = seed.index("\n}\n", start) + 3
    return seed[:start], seed[start:end]


def write_repeated(path: Path, size: int) -> None:
    head, result = seed_parts()
    block = result * max(1, (4 * MB) // len(result))
    with path.open("w") as out:
        out.write(head)
        written = len(head)
        while written < size:
            out.write(block)
            written += len(block)


def write_distinct(path: Path, size: int) -> None:
    head, result = seed_parts()
    obj = json.loads(result)
    with path.open("w") as out:
        out.write(head)
        written, n = len(head), 0
        while written < size:
            n += 1
            obj["local_batch_size"] = n % (1 << 20) + 1
            obj["backend"] = f"B{n >> 20}"
            text = json.dumps(obj, indent=2) + "\n"
            out.write(text)
            written += len(text)


def parse_one(path: str) -> None:
    """In the child: parse `path`, print what was kept as JSON."""
    from moecomm_tasks.parse import parse_paths

    start = time.perf_counter()
    out = parse_paths([path])
    seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds,
        "jobs": len(out.jobs),
        "rank_values": sum(len(j.timings) + len(j.kernels) for j in out.jobs),
        "dropped_kept": len(out.dropped),
        "dropped_counted": sum(out.omitted.values()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--keep", help="write the inputs here and keep them (default: a temporary folder)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        parse_one(args.child)
        return 0
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="moecomm-parse-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    size = args.size_mb * MB
    rng = random.Random(14)
    inputs = {"garbage": write_garbage, "repeated": write_repeated, "distinct": write_distinct}
    rows = []
    try:
        for name, write in inputs.items():
            path = folder / f"{name}.txt"
            write(path, size, rng) if name == "garbage" else write(path, size)
            child = subprocess.run([sys.executable, __file__, "--child", str(path)], capture_output=True, text=True,
                                   timeout=3600, check=True)
            rows.append((name, path.stat().st_size / MB, json.loads(child.stdout.strip().splitlines()[-1])))
            if not args.keep:
                path.unlink()
    finally:
        if not args.keep:
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()
    print(f"{'input':<10} {'MB':>7} {'peak RSS MB':>12} {'seconds':>8} {'MB/s':>6} {'jobs':>5} {'rank values':>12} "
          f"{'dropped kept':>13} {'dropped counted':>16}")
    for name, mb, r in rows:
        print(f"{name:<10} {mb:>7.0f} {r['peak_rss_mb']:>12.0f} {r['seconds']:>8.1f} {mb / r['seconds']:>6.1f} "
              f"{r['jobs']:>5} {r['rank_values']:>12} {r['dropped_kept']:>13} {r['dropped_counted']:>16}")
    worst = max(r["peak_rss_mb"] for _, _, r in rows)
    print(f"largest peak: {worst:.0f} MB (target: under 500 MB)")
    return 0 if worst < 500 else 1


if __name__ == "__main__":
    sys.exit(main())
