"""TEST DOUBLE of the `tensorrt_llm` package: only the communication-factory interface that
`moecomm_tasks.bench.trtllm` uses, implemented on torch.distributed so that it runs on CPUs.

TensorRT-LLM itself needs NVIDIA GPUs and cannot run here. The double has both module layouts the
adapter knows (`_torch.moe.fused_moe`, today's, and `_torch.modules.fused_moe`, the older), chosen
by `MOECOMM_FAKE_TRTLLM_LAYOUT`: `new` (both present, as in a version that kept the old path),
`old` (only the older), `old-submodule` (only the older, the factory only in its
`communication_factory` submodule). Its backends cover each way a real one can behave (see
`_comm.py`).
"""

__version__ = "0.0.0+test-double"
__git_commit__ = "0123456789abcdef0123456789abcdef01234567"
