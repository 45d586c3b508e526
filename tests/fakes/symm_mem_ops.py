"""TEST DOUBLE: PyTorch's NVSHMEM kernels (`torch.ops.symm_mem.all_to_all_vdev_2d` and
`all_to_all_vdev_2d_offset`) need GPUs and cannot run here. This stands in for them over gloo, so
that TORCH_SYMM_MEM's own bookkeeping (slots, splits, where received rows land, which are padding,
the way back, the sum per token) is checked at EP 2 on CPUs. It follows the kernels' documented
semantics (torch 2.11 `nvshmem_extension.cu`); that the real kernels agree is what
tests/benchmarks/symm_mem_smoke.py checks on GPUs.

* all_to_all_vdev_2d(input, out, in_splits, out_splits_offsets, group, major_align): `in_splits`
  [EP * ne] counts rows for (destination rank, slot), rank-major, packed from row 0. The receiver
  lays its rows out slot-major, then by source rank; each slot's total is rounded up to
  `major_align` and is at least `major_align`. out_splits_offsets[0][e * EP + src] is the count,
  [1][e * EP + src] where it starts.
* all_to_all_vdev_2d_offset(input, out, in_splits_offsets, out_splits_offsets, group):
  in_splits_offsets [2, ne * EP] gives, slot-major, the count and start of the rows going back to
  each rank; the receiver packs them rank-major, then by slot, from row 0, no padding.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from moecomm_tasks.bench.symm_mem import TorchSymmMem


class FakeSymmetricMemory:
    """`symm_mem.empty` and `rendezvous`: plain CPU tensors, nothing to exchange."""

    @staticmethod
    def empty(shape, dtype, device):
        return torch.full(shape, -3, dtype=dtype, device=device) if dtype == torch.int64 else \
            torch.full(shape, float("nan"), dtype=dtype, device=device)

    @staticmethod
    def rendezvous(tensor, group_name):
        return None


def _everyone(*tensors):
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, [t.clone() for t in tensors])
    return gathered


class FakeOps:
    """The two kernels, over gloo (every rank gathers everything and keeps its own part)."""

    @staticmethod
    def all_to_all_vdev_2d(inp, out, in_splits, out_splits_offsets, group_name, major_align=None):
        align = major_align or 1
        world, me = dist.get_world_size(), dist.get_rank()
        slots = in_splits.numel() // world
        everyone = _everyone(inp, in_splits)
        offset = 0
        for e in range(slots):
            total = 0
            for src, (rows, splits) in enumerate(everyone):
                index = me * slots + e
                start, count = int(splits[:index].sum()), int(splits[index])
                out[offset + total: offset + total + count] = rows[start:start + count]
                out_splits_offsets[0, e * world + src] = count
                out_splits_offsets[1, e * world + src] = offset + total
                total += count
            offset += max(-(-total // align) * align, align)

    @staticmethod
    def all_to_all_vdev_2d_offset(inp, out, in_splits_offsets, out_splits_offsets, group_name):
        world, me = dist.get_world_size(), dist.get_rank()
        slots = in_splits_offsets.shape[1] // world
        everyone = _everyone(inp, in_splits_offsets)
        offset = 0
        for src, (rows, splits_offsets) in enumerate(everyone):
            for e in range(slots):
                count, start = (int(v) for v in splits_offsets[:, e * world + me])
                out[offset: offset + count] = rows[start:start + count]
                out_splits_offsets[0, src * slots + e] = count
                out_splits_offsets[1, src * slots + e] = offset
                offset += count


class TorchSymmMemOnGloo(TorchSymmMem):
    """TEST DOUBLE: TORCH_SYMM_MEM with the kernels above instead of NVSHMEM's (CPUs, gloo)."""

    def _connect(self):
        return FakeSymmetricMemory, FakeOps, torch.device("cpu")
