"""TEST DOUBLE of tensorrt_llm._torch.modules.fused_moe, the older layout (see the package docstring)."""

from tensorrt_llm._comm import OlderCutlassFusedMoE as CutlassFusedMoE  # noqa: F401
