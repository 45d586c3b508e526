"""Probe: list the nodes of the CUDA graphs the worker captures (type, kernel name), to see what
follows the NCCL kernel. Usage: mpirun -np 1 python tests/benchmarks/graph_dump_probe.py WORKER-ARGS --cuda_graph"""
import ctypes
import runpy
import sys

import torch

TYPES = {0: "kernel", 1: "memcpy", 2: "memset", 3: "host", 4: "child-graph", 5: "empty", 6: "event-wait",
         7: "event-record", 8: "ext-sem-signal", 9: "ext-sem-wait", 10: "mem-alloc", 11: "mem-free",
         12: "batch-mem-op", 13: "conditional"}


def cudart():
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "libcudart.so" in line:
                return ctypes.CDLL(line.split()[-1])
    return ctypes.CDLL("libcudart.so")


class KernelParams(ctypes.Structure):
    _fields_ = [("func", ctypes.c_void_p), ("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3),
                ("shared", ctypes.c_uint), ("params", ctypes.c_void_p), ("extra", ctypes.c_void_p)]


def describe(graph_ptr, label):
    rt = cudart()
    n = ctypes.c_size_t(0)
    print(f"[probe] {label}: cudaGraphGetNodes ->", rt.cudaGraphGetNodes(ctypes.c_void_p(graph_ptr), None, ctypes.byref(n)), "count", n.value, flush=True)
    nodes = (ctypes.c_void_p * n.value)()
    rt.cudaGraphGetNodes(ctypes.c_void_p(graph_ptr), nodes, ctypes.byref(n))
    for i, node in enumerate(nodes):
        kind = ctypes.c_int(-1)
        rt.cudaGraphNodeGetType(ctypes.c_void_p(node), ctypes.byref(kind))
        name = ""
        if kind.value == 0:
            p = KernelParams()
            err = rt.cudaGraphKernelNodeGetParams(ctypes.c_void_p(node), ctypes.byref(p))
            cname = ctypes.c_char_p()
            err2 = rt.cudaFuncGetName(ctypes.byref(cname), ctypes.c_void_p(p.func)) if err == 0 else -1
            name = (cname.value or b"").decode()[:90] if err2 == 0 else f"(params err {err}, name err {err2}) grid={list(p.grid)}"
        print(f"[probe] {label} node {i}: {TYPES.get(kind.value, kind.value)} {name}", flush=True)


Orig = torch.cuda.CUDAGraph
count = [0]


class Inspecting(Orig):
    def __new__(cls, *args, **kwargs):
        try:
            return super().__new__(cls, keep_graph=True)
        except TypeError:
            return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        try:
            super().__init__(keep_graph=True)
        except TypeError:
            super().__init__()

    def capture_end(self):
        super().capture_end()
        count[0] += 1
        try:
            describe(self.raw_cuda_graph(), f"graph{count[0]}")
        except Exception as exc:  # noqa: BLE001
            print("[probe] cannot inspect:", type(exc).__name__, exc, flush=True)


torch.cuda.CUDAGraph = Inspecting
sys.argv = ["moecomm_tasks.bench"] + sys.argv[1:]
runpy.run_module("moecomm_tasks.bench", run_name="__main__")
