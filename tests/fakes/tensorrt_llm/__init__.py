"""TEST DOUBLE of the `tensorrt_llm` package: only the communication-factory interface that
`moecomm_tasks.bench.trtllm` uses, implemented on torch.distributed so that it runs on CPUs.

TensorRT-LLM itself needs NVIDIA GPUs and cannot run here. The double's backends cover each way a
real one can behave: work (ALLGATHER), refuse at construction (NVLINK_ONE_SIDED), be absent
(NVLINK_TWO_SIDED), refuse a size (DEEPEP), fail a feasibility check (DEEPEPLOWLATENCY), and
return wrong results (NCCL_EP).
"""

__version__ = "0.0.0+test-double"
__git_commit__ = "0123456789abcdef0123456789abcdef01234567"
