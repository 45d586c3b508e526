"""Collective baselines timed in the same run as the backends: what the library can do with the bytes.

`time_all_to_all` is NCCL's (gloo's on CPUs) `all_to_all_single` of exactly the bytes a dispatch
sends, in equal splits (each rank sends its bytes / EP to every rank, itself included): the
reference a specialised dispatch is measured against (`--a2a_baseline`, reported as `a2a_us`).
`time_all_gather` is `all_gather_into_tensor` of a given number of bytes per rank (the bandwidth an
all-gather dispatch can reach). Both are timed like the copy baseline (`timing.time_copy`): on GPUs
CUDA events on the working stream around each call, L2 flushed and a spin kernel before it so that
the host's launch latency is not timed; on CPUs a monotonic clock around each (synchronous) call.
Every rank must call them together, with the same arguments: they are collectives.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.distributed as dist

from moecomm_tasks.bench.timing import _hold_gpu, _l2_flush_buffer

_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
# NCCL moves 16-byte-aligned chunks fastest; a split is rounded up to it (at most 15 bytes more).
CHUNK_ALIGN = 16
WARMUP = 5


def _chunk(nbytes: int, ranks: int) -> int:
    per_rank = -(-nbytes // ranks)
    return -(-per_rank // CHUNK_ALIGN) * CHUNK_ALIGN


def _time(op: Callable[[], object], device: torch.device, iters: int) -> list[float]:
    """Per-iteration time (µs) of `op`, after a short warm-up."""
    for _ in range(WARMUP):
        op()
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            start = time.perf_counter_ns()
            op()
            times.append((time.perf_counter_ns() - start) / 1000.0)
        return times
    flush = _l2_flush_buffer(device)
    marks = [[torch.cuda.Event(enable_timing=True) for _ in range(2)] for _ in range(iters)]
    torch.cuda.synchronize()
    for start, end in marks:
        flush.zero_()
        _hold_gpu()
        start.record()
        op()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) * 1000.0 for s, e in marks]


def time_all_to_all(bytes_per_rank: list[int], rank: int, device: torch.device, iters: int) -> list[float]:
    """Per-iteration time (µs) of an all-to-all in which rank r sends bytes_per_rank[r] in equal splits."""
    ranks = len(bytes_per_rank)
    chunks = [_chunk(nbytes, ranks) for nbytes in bytes_per_rank]
    send = torch.empty(chunks[rank] * ranks, dtype=torch.uint8, device=device)
    recv = torch.empty(sum(chunks), dtype=torch.uint8, device=device)
    send_splits = [chunks[rank]] * ranks
    return _time(lambda: dist.all_to_all_single(recv, send, chunks, send_splits), device, iters)


def time_all_gather(nbytes: int, ranks: int, device: torch.device, iters: int) -> list[float]:
    """Per-iteration time (µs) of an all-gather of `nbytes` from every rank."""
    send = torch.empty(nbytes, dtype=torch.uint8, device=device)
    recv = torch.empty(nbytes * ranks, dtype=torch.uint8, device=device)
    return _time(lambda: _all_gather(recv, send), device, iters)
