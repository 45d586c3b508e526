"""TEST DOUBLE of tensorrt_llm._torch.moe.fused_moe (see the package docstring)."""

from tensorrt_llm._comm import CutlassFusedMoE  # noqa: F401
