"""Summarise GPU benchmark reports: CUDA events beside profiler kernel totals, and copy bandwidth.

Usage: python tests/benchmarks/summarize_gpu.py REPORT.json...   (reports from --output_file)
Prints, per (run, backend, size): the dispatch and combine times from CUDA events and from the
profiler's timeline for the same iterations (rank 0 means) with their difference, the span of
the phase's kernels alone, the time
of a device-to-device copy of the dispatch payload, and the dispatch payload bandwidth as a
fraction of that copy's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def mean(value) -> float:
    return value["mean"] if isinstance(value, dict) else float(value)


def main(paths: list[str]) -> None:
    print("| run | backend | tokens | dispatch µs (events) | (profiler) | diff | (kernel span) | combine µs (events) "
          "| (profiler) | diff | (kernel span) | payload MB | copy µs | dispatch GB/s | fraction of copy |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        report = json.loads(Path(path).read_text())
        for r in report["results"]:
            d, c = mean(r["dispatch_us"]["rank0"]), mean(r["combine_us"]["rank0"])
            pd = mean(r["profiler_us"]["dispatch"]["rank0"]) if "profiler_us" in r else float("nan")
            pc = mean(r["profiler_us"]["combine"]["rank0"]) if "profiler_us" in r else float("nan")
            sd = mean(r["kernel_span_us"]["dispatch"]["rank0"]) if "kernel_span_us" in r else float("nan")
            sc = mean(r["kernel_span_us"]["combine"]["rank0"]) if "kernel_span_us" in r else float("nan")
            copy = mean(r["copy_us"]["rank0"]) if "copy_us" in r else float("nan")
            mb = r["payload_bytes"] / 1e6
            print(f"| {Path(path).stem} | {r['backend']} | {r['local_batch_size']} | {d:.1f} | {pd:.1f} | "
                  f"{(d - pd) / d * 100:+.1f}% | {sd:.1f} | {c:.1f} | {pc:.1f} | {(c - pc) / c * 100:+.1f}% | {sc:.1f} | {mb:.1f} | "
                  f"{copy:.1f} | {r['payload_bytes'] / d / 1e3:.0f} | {copy / d * 100:.0f}% |")


if __name__ == "__main__":
    main(sys.argv[1:])
