"""Summarise a gpu_multi.sh run: issue 16's targets, then every point, as Markdown.

Usage: python3 tests/benchmarks/summarize_multi.py OUT   (the folder gpu_multi.sh wrote)
Each time is the slowest rank's mean over the timed iterations (a collective is as slow as its
slowest rank), for the phases and for the baselines alike. Targets (issue 16), TORCH_ALLTOALL,
deepseek_v3: at EP 2, dispatch at 4,096 tokens within 1.25x its all-to-all baseline (`a2a_us`) and
under 300 µs, combine under 1.5x dispatch, at 128 tokens dispatch within 2x its baseline; at EP 4,
dispatch at 4,096 tokens within 1.25x its baseline. TORCH_ALLGATHER, every EP > 1: dispatch at
4,096 tokens at least 80% of NCCL's all_gather bandwidth for the same bytes (all_gather time /
dispatch time, from allgather.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TARGET_PROFILE, TARGET_BACKEND, ALLGATHER = "deepseek_v3", "TORCH_ALLTOALL", "TORCH_ALLGATHER"


def slowest(per_rank: dict[str, Any] | None) -> float | None:
    """The slowest rank's mean (µs), or None when absent."""
    if not per_rank:
        return None
    means = [v["mean"] if isinstance(v, dict) else v for v in per_rank.values() if v is not None]
    return max(means) if means else None


def load(out: Path) -> tuple[dict[int, dict[str, list[dict]]], dict[tuple[int, str, int], float]]:
    """({ep: {profile: results}}, {(ep, profile, tokens): all_gather µs})."""
    runs = {}
    for path in sorted(out.glob("ep*.json")):
        bundle = json.loads(path.read_text())
        runs[int(bundle["ep_size"])] = {profile: report["results"] for profile, report in bundle["runs"].items()}
    gathers = {}
    gather_path = out / "allgather.json"
    if gather_path.exists():
        for ep_run in json.loads(gather_path.read_text()):
            for r in ep_run["results"]:
                gathers[(ep_run["ep_size"], r["profile"], r["local_batch_size"])] = slowest(r["all_gather_us"])
    return runs, gathers


def point(runs, ep: int, profile: str, backend: str, tokens: int) -> dict | None:
    for r in runs.get(ep, {}).get(profile, []):
        if r["backend"] == backend and r["local_batch_size"] == tokens:
            return r
    return None


def verdict(value: float | None, limit: float, at_most: bool) -> str:
    if value is None:
        return "not measured"
    ok = value <= limit if at_most else value >= limit
    miss = (value / limit - 1) if at_most else (1 - value / limit)
    return "met" if ok else f"MISSED by {miss * 100:.0f}%"


def targets(runs, gathers) -> list[str]:
    lines = ["| EP | target | measured | limit | result |", "|---:|---|---:|---:|---|"]

    def row(ep, what, value, limit, at_most, fmt="{:.2f}"):
        shown = "-" if value is None else fmt.format(value)
        lines.append(f"| {ep} | {what} | {shown} | {fmt.format(limit)} | {verdict(value, limit, at_most)} |")

    def ratio(a, b):
        return None if a is None or b is None else a / b

    for ep in sorted(e for e in runs if e > 1):
        big = point(runs, ep, TARGET_PROFILE, TARGET_BACKEND, 4096) or {}
        small = point(runs, ep, TARGET_PROFILE, TARGET_BACKEND, 128) or {}
        dispatch, combine = slowest(big.get("dispatch_us")), slowest(big.get("combine_us"))
        row(ep, f"{TARGET_BACKEND} {TARGET_PROFILE} 4096 tokens: dispatch / a2a_baseline",
            ratio(dispatch, slowest(big.get("a2a_us"))), 1.25, True)
        if ep == 2:
            row(ep, f"{TARGET_BACKEND} {TARGET_PROFILE} 4096 tokens: dispatch µs", dispatch, 300.0, True, "{:.1f}")
            row(ep, f"{TARGET_BACKEND} {TARGET_PROFILE} 4096 tokens: combine / dispatch", ratio(combine, dispatch), 1.5, True)
            row(ep, f"{TARGET_BACKEND} {TARGET_PROFILE} 128 tokens: dispatch / a2a_baseline",
                ratio(slowest(small.get("dispatch_us")), slowest(small.get("a2a_us"))), 2.0, True)
        gathered = point(runs, ep, TARGET_PROFILE, ALLGATHER, 4096) or {}
        row(ep, f"{ALLGATHER} {TARGET_PROFILE} 4096 tokens: NCCL all_gather µs / dispatch µs (bandwidth fraction)",
            ratio(gathers.get((ep, TARGET_PROFILE, 4096)), slowest(gathered.get("dispatch_us"))), 0.8, False)
    return lines


def table(runs, gathers) -> list[str]:
    lines = []
    for ep in sorted(runs):
        lines += [f"\n### EP {ep}\n",
                  "| profile | backend | tokens | dispatch µs | combine µs | a2a µs | dispatch / a2a | combine / dispatch "
                  "| copy µs | all_gather µs | payload MB |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for profile, results in runs[ep].items():
            for r in results:
                d, c, a = slowest(r["dispatch_us"]), slowest(r["combine_us"]), slowest(r.get("a2a_us"))
                copy = slowest(r.get("copy_us"))
                gather = gathers.get((ep, profile, r["local_batch_size"])) if r["backend"] == ALLGATHER else None
                cells = [f"{v:.1f}" if v is not None else "-" for v in (d, c, a)]
                cells += [f"{d / a:.2f}" if a else "-", f"{c / d:.2f}" if d else "-"]
                cells += [f"{v:.1f}" if v is not None else "-" for v in (copy, gather)]
                lines.append(f"| {profile} | {r['backend']} | {r['local_batch_size']} | " + " | ".join(cells)
                             + f" | {r['payload_bytes'] / 1e6:.1f} |")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: summarize_multi.py OUT   (the folder gpu_multi.sh wrote)", file=sys.stderr)
        return 2
    runs, gathers = load(Path(argv[0]))
    if not runs:
        print(f"no ep*.json in {argv[0]}: did gpu_multi.sh run?", file=sys.stderr)
        return 1
    print("## Targets (slowest rank's mean)\n")
    print("\n".join(targets(runs, gathers)))
    print("\n## Every point (slowest rank's mean, µs)")
    print("\n".join(table(runs, gathers)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
