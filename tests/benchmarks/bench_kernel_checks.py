"""Kernel checks at scale: the loader benchmark's matrix with a kernel breakdown every night.

Matrix (tests/benchmarks/bench_load.py): 6 backends x 2 profiles x EP 4, 8, 16 x 16 sizes, every
rank; each (backend, size) launches 4 kernels (2 in dispatch, 1 in combine, 1 other), so a night
holds 21,504 kernel rows (576 kernel series). Timings carry heavy noise (sigma 0.3). From the
middle night on, one series' combine kernel is renamed (1 change); on the last night, one
kernel's launch count doubles in the NCCL_EP EP 4 128-token series of both profiles (2 changes).

Prints, from one run (same process, same server): the load time per night; the full check over
every stored night (`kernel_checks.changes()`, `moecomm detect --full`), the check `detect` runs
(the last 14 days: `changes(since=window_start())`) and the check of the newest night only, each
with the changes it found; and whether the windowed checks agree with the full one on their
nights.

Usage: python tests/benchmarks/bench_kernel_checks.py [--nights 60] (at most 400)
The database server is MOECOMM_DATABASE_URL's (its user must be allowed to create databases)
or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_load import BACKENDS, EP_SIZES, PROFILES, SIZES, START  # noqa: E402  (the loader benchmark's matrix)

from moecomm_tasks import db, kernel_checks, store  # noqa: E402
from moecomm_tasks.records import KernelTiming, ParsedJob, ParsedOutput, RunHeader, Stats, Timing  # noqa: E402

KERNELS = (("dispatch", "_ZN8moe_comm20moeA2ADispatchKernelILi4EEEvPKfPfi"), ("dispatch", "moePrepareKernel"),
           ("combine", "void moe_comm::moeA2ACombineKernel<4>(float const*, float*, int)"),
           ("other", "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<int> >(int, "
                     "at::native::FillFunctor<int>)"))


def night(index: int, nights: int, rng: random.Random) -> ParsedOutput:
    jobs = []
    for profile, (hidden, top_k, experts, quant) in PROFILES.items():
        for ep in EP_SIZES:
            for backend in BACKENDS:
                header = RunHeader(profile=profile, ep_size=ep, hidden_size=hidden, top_k=top_k, num_experts=experts,
                                   quant_algo=quant, dtype="torch.bfloat16", local_batch_sizes=SIZES, backend=backend,
                                   extra={"provenance": {"gpu_model": "NVIDIA H200", "gpu_count": ep}})
                timings, kernels = [], []
                for size in SIZES:
                    for op in ("dispatch", "combine"):
                        base = 20.0 + size * hidden * top_k / 4e6
                        for rank in range(ep):
                            mean = base * rng.lognormvariate(0, 0.3)  # heavy timing noise: no kernels alert
                            timings.append(Timing(backend, size, op, rank, Stats(mean, mean, mean * 0.03, mean * 0.9,
                                                                                 mean * 1.2)))
                    for phase, name in KERNELS:
                        count = 200
                        if (index >= nights // 2 and backend == "DEEPEP" and profile == "gpt_oss" and ep == 8
                                and size == 1024 and phase == "combine"):
                            name = "void moe_comm::moeA2ACombineKernelV2<4>(float const*, float*, int)"
                        if index >= nights - 1 and backend == "NCCL_EP" and ep == 4 and size == 128 and phase == "other":
                            count = 400
                        for rank in range(ep):
                            mean = 10.0 * rng.lognormvariate(0, 0.3)
                            kernels.append(KernelTiming(backend, size, phase, name, rank, count,
                                                        Stats(mean, mean, mean * 0.03, mean * 0.9, mean * 1.2)))
                jobs.append(ParsedJob(header, tuple(timings), tuple(kernels)))
    return ParsedOutput(jobs=tuple(jobs))


def _name(change: kernel_checks.KernelChange) -> str:
    s = change.series
    return f"{s['backend']} {s['profile']} EP{s['ep_size']} {s['local_batch_size']} @ {change.first_bad_run_id}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=60)
    args = parser.parse_args()
    if not 2 <= args.nights <= 400:
        parser.error("--nights: 2 to 400")
    server = db.database_url()
    rng = random.Random(17)
    with db.scratch_database(server, prefix="moecomm_bench_kernels") as url:
        engine = db.make_engine(url)
        started = time.perf_counter()
        loads = []
        for index in range(args.nights):
            parsed = night(index, args.nights, rng)
            t0 = time.perf_counter()
            store.load(engine, parsed, f"night-{index:03d}", START + timedelta(days=index))
            loads.append(time.perf_counter() - t0)
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT count(*) FROM kernel_timing").scalar()
        print(f"{args.nights} nights, {rows:,} kernel rows, loaded in {time.perf_counter() - started:.0f} s "
              f"(load of one night: median {sorted(loads)[len(loads) // 2]:.2f} s, last {loads[-1]:.2f} s)")
        newest = START + timedelta(days=args.nights - 1)
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            timed = {}
            for label, since in (("full check (every night)", None),
                                 (f"detect (last {kernel_checks.WINDOW_DAYS} days)", kernel_checks.window_start(conn)),
                                 ("newest night only", newest)):
                t0 = time.perf_counter()
                found = kernel_checks.changes(conn, since)
                timed[label] = (since, time.perf_counter() - t0, found)
        (_, _, full), = [v for k, v in timed.items() if k.startswith("full")]
        for label, (since, seconds, found) in timed.items():
            agree = found == [c for c in full if since is None or c.first_bad_run_id >= f"night-{(since - START).days:03d}"]
            names = ", ".join(_name(c) for c in found)
            print(f"{label:<28} {seconds:7.2f} s, {len(found)} change(s) [{names}]; agrees with the full check: {agree}")
        engine.dispose()


if __name__ == "__main__":
    main()
