"""GPU smoke test of TORCH_SYMM_MEM's exact calls (and the NCCL backends on GPUs), with diagnostics.

Usage, on one host with >= 2 GPUs, every rank seeing every GPU, from the repository root:
    NCCL_NVLS_ENABLE=0 NVSHMEM_DISABLE_NVLS=1 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 PYTHONPATH=. \\
        timeout 300 mpirun -np 2 python3 tests/benchmarks/symm_mem_smoke.py
(as root add OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1). Steps, each reported per
rank; the first step that fails on any rank ends the run with status 1:
 1. environment: torch, CUDA, NVSHMEM, the ops' schemas, the multicast variables;
 2. the raw kernels with tiny tagged rows: all_to_all_vdev_2d's output splits, offsets and rows
    against a host computation, then all_to_all_vdev_2d_offset must bring every row back;
 3. the backends as the worker builds them (TORCH_SYMM_MEM, TORCH_ALLTOALL,
    TORCH_ALLTOALL_PER_EXPERT, TORCH_ALLGATHER): the round-trip check at a tiny and a deepseek_v3
    shape, then 20 more dispatch/combine rounds and the check again (races between iterations);
 4. CUDA graphs: each backend's dispatch + combine captured once, replayed, checked;
 5. rough times (CUDA events, 20 rounds, deepseek_v3 shape, 4,096 tokens) beside NCCL's
    all_to_all_single of the same bytes.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

import torch
import torch.distributed as dist

from moecomm_tasks.bench import ranks as ranks_mod
from moecomm_tasks.bench.baselines import time_all_to_all
from moecomm_tasks.bench.reference import REFERENCE
from moecomm_tasks.bench.symm_mem import MAJOR_ALIGN, open_symm_mem
from moecomm_tasks.bench.workload import check_round_trip, make_routing

TINY = (16, 64, 4, 64)  # tokens, hidden, top_k, experts
DEEPSEEK = (512, 7168, 8, 256)
SMOKE_HEAP_BYTES = 8 << 30
BACKENDS = ("TORCH_SYMM_MEM", "TORCH_ALLTOALL", "TORCH_ALLTOALL_PER_EXPERT", "TORCH_ALLGATHER")


class Smoke:
    def __init__(self) -> None:
        self.comm, self.rank, self.world, local_rank = ranks_mod.mpi_world()
        self.device = ranks_mod.pick_device("cuda", local_rank)
        ranks_mod.init_process_group(self.comm, self.rank, self.world, self.device, 120)
        self.group = dist.group.WORLD.group_name

    def say(self, text: str) -> None:
        print(f"[rank {self.rank}] {text}", flush=True)

    def step(self, title: str, body: Callable[[], str | None]) -> None:
        """Run one step on every rank; stop everything if it failed anywhere."""
        if self.rank == 0:
            print(f"\n=== {title}", flush=True)
        try:
            problem = body()
        except Exception:
            problem = "raised:\n" + traceback.format_exc()
        self.say(f"{'PASS' if problem is None else 'FAIL'}: {title}" + ("" if problem is None else f": {problem}"))
        if any(self.comm.allgather(problem is not None)):
            if self.rank == 0:
                print(f"\nSTOPPED at: {title}", flush=True)
            sys.exit(1)

    # 1 ---------------------------------------------------------------------------------------
    def environment(self) -> None:
        # Step 2 starts NVSHMEM before any backend could size its heap: make room for step 5's buffers.
        os.environ.setdefault("NVSHMEM_SYMMETRIC_SIZE", str(SMOKE_HEAP_BYTES))
        self.say(f"torch {torch.__version__} cuda {torch.version.cuda} nccl {torch.cuda.nccl.version()} "
                 f"device {self.device} of {torch.cuda.device_count()} ({torch.cuda.get_device_name(self.device)}) "
                 f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}")
        symm = open_symm_mem()
        self.say(f"nvshmem available: {symm.is_nvshmem_available()}; set_backend: {hasattr(symm, 'set_backend')}; "
                 f"backend now: {symm.get_backend(self.device) if hasattr(symm, 'get_backend') else 'n/a'}")
        if self.rank == 0:
            for op in ("all_to_all_vdev_2d", "all_to_all_vdev_2d_offset"):
                print(f"  schema: {getattr(torch.ops.symm_mem, op).default._schema}", flush=True)
        self.say("env: " + " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                                    if k.startswith(("NVSHMEM_", "TORCH_SYMM", "NCCL_NVLS"))))
        self.symm = symm

    # 2 ---------------------------------------------------------------------------------------
    def raw_kernels(self) -> str | None:
        symm, world, slots, width = self.symm, self.world, 2, 4
        gen = torch.Generator().manual_seed(7 + self.rank)
        splits = torch.randint(0, 4, (world * slots,), generator=gen)
        splits[0] = 0  # an empty (rank, slot) pair on every rank
        everyone = self.comm.allgather(splits.tolist())
        cap_in, cap_out = 4 * world * slots, 4 * world * slots * world + slots * MAJOR_ALIGN
        buffers = {}
        for name, shape, dtype in (("inp", (cap_in, width), torch.float32), ("out", (cap_out, width), torch.float32),
                                   ("back_in", (cap_out, width), torch.float32), ("back", (cap_in, width), torch.float32),
                                   ("in_splits", (world * slots,), torch.int64),
                                   ("d_so", (2, world * slots), torch.int64), ("c_so", (2, world * slots), torch.int64)):
            buffers[name] = symm.empty(shape, dtype=dtype, device=self.device)
            symm.rendezvous(buffers[name], self.group)
        b = buffers
        sent = int(splits.sum())
        tags = torch.arange(sent, dtype=torch.float32) + 1000 * self.rank
        b["inp"].fill_(-1)
        b["inp"][:sent] = tags.unsqueeze(1).expand(sent, width).to(self.device)
        b["in_splits"].copy_(splits)
        b["out"].fill_(-7)
        torch.ops.symm_mem.all_to_all_vdev_2d(b["inp"], b["out"], b["in_splits"], b["d_so"], self.group,
                                              major_align=MAJOR_ALIGN)
        torch.cuda.synchronize()
        # Host expectation: slot-major, then source rank; each slot padded to MAJOR_ALIGN (at least one).
        exp_splits, exp_rows, exp_offsets, offset = [], [], [], 0
        for e in range(slots):
            total = 0
            for src in range(world):
                before = sum(everyone[src][: self.rank * slots + e])
                count = everyone[src][self.rank * slots + e]
                exp_splits.append(count)
                exp_offsets.append(offset + total)
                exp_rows += [1000 * src + before + i for i in range(count)]
                total += count
            offset += max(-(-total // MAJOR_ALIGN) * MAJOR_ALIGN, MAJOR_ALIGN)
        got_splits, got_offsets = b["d_so"][0].tolist(), b["d_so"][1].tolist()
        if got_splits != exp_splits:
            return f"dispatch output splits {got_splits}, expected {exp_splits} (input splits of all ranks {everyone})"
        if got_offsets != exp_offsets:
            return f"dispatch output offsets {got_offsets}, expected {exp_offsets}"
        got_rows = []
        for start, count in zip(got_offsets, got_splits):
            got_rows += b["out"][start:start + count, 0].tolist()
        if got_rows != [float(r) for r in exp_rows]:
            return f"dispatch rows {got_rows}, expected {exp_rows}"
        self.say(f"dispatch: splits {got_splits} offsets {got_offsets}")
        b["back_in"].copy_(b["out"])
        b["back"].fill_(-9)
        torch.ops.symm_mem.all_to_all_vdev_2d_offset(b["back_in"], b["back"], b["d_so"], b["c_so"], self.group)
        torch.cuda.synchronize()
        if not torch.equal(b["back"][:sent], b["inp"][:sent]):
            return f"combine returned {b['back'][:sent, 0].tolist()}, expected {b['inp'][:sent, 0].tolist()}"
        self.say(f"combine: splits {b['c_so'][0].tolist()} offsets {b['c_so'][1].tolist()}")
        return None

    # 3-5 -------------------------------------------------------------------------------------
    def build(self, name: str, shape: tuple[int, int, int, int]):
        tokens, hidden, top_k, experts = shape
        backend = REFERENCE[name](self.rank, self.world, experts // self.world, 0, max_num_tokens_per_rank=tokens,
                                  hidden_size=hidden, top_k=top_k)
        routing = make_routing(tokens, hidden, top_k, experts, self.device,
                               torch.Generator(device=self.device).manual_seed(11 + self.rank))
        backend.prepare(routing)
        return backend, routing

    def round_trips(self) -> str | None:
        for name in BACKENDS:
            for shape in (TINY, DEEPSEEK):
                backend, routing = self.build(name, shape)
                first = check_round_trip(backend, routing)
                for _ in range(20):
                    backend.combine(backend.expert_output(backend.dispatch()))
                again = check_round_trip(backend, routing)
                torch.cuda.synchronize()
                if first or again:
                    return f"{name} {shape}: {first or again}"
                self.say(f"{name} {shape}: round trip ok, 21 times")
        return None

    def graphs(self) -> str | None:
        notes = []
        for name in BACKENDS:
            backend, routing = self.build(name, TINY)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                backend.combine(backend.expert_output(backend.dispatch()))
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    out = backend.combine(backend.expert_output(backend.dispatch()))
                for _ in range(3):
                    graph.replay()
                torch.cuda.synchronize()
                expected = routing.hidden.float() * routing.topk_weights.sum(dim=1, keepdim=True)
                error = float((out.float() - expected).abs().max())
                notes.append(f"{name}: captured, replayed 3 times, max error {error:.3g}")
            except Exception as exc:  # a finding, not a failure: the worker falls back to eager launches
                notes.append(f"{name}: capture failed: {type(exc).__name__}: {str(exc)[:300]}")
                torch.cuda.synchronize()
        self.say("; ".join(notes))
        return None

    def timings(self) -> str | None:
        shape = (4096, *DEEPSEEK[1:])
        for name in BACKENDS:
            backend, routing = self.build(name, shape)
            for _ in range(5):
                backend.combine(backend.expert_output(backend.dispatch()))
            marks = [[torch.cuda.Event(enable_timing=True) for _ in range(3)] for _ in range(20)]
            torch.cuda.synchronize()
            for a, b, c in marks:
                dist.barrier()
                a.record()
                received = backend.dispatch()
                b.record()
                backend.combine(backend.expert_output(received))
                c.record()
            torch.cuda.synchronize()
            dispatch = sum(a.elapsed_time(b) for a, b, _ in marks) / len(marks) * 1000
            combine = sum(b.elapsed_time(c) for _, b, c in marks) / len(marks) * 1000
            nbytes = backend.payload_bytes(routing)
            a2a = time_all_to_all(self.comm.allgather(nbytes), self.rank, self.device, 20)
            self.say(f"{name} {shape}: dispatch {dispatch:.1f} µs, combine {combine:.1f} µs, "
                     f"NCCL all_to_all_single of its {nbytes / 1e6:.1f} MB {sum(a2a) / len(a2a):.1f} µs")
            del backend
        return None


def main() -> int:
    smoke = Smoke()
    smoke.step("1. environment and NVSHMEM", smoke.environment)
    smoke.step("2. raw all_to_all_vdev_2d / all_to_all_vdev_2d_offset", smoke.raw_kernels)
    smoke.step("3. backends' round trips", smoke.round_trips)
    smoke.step("4. CUDA graph capture", smoke.graphs)
    smoke.step("5. rough times", smoke.timings)
    if smoke.rank == 0:
        print("\nALL STEPS PASSED", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
