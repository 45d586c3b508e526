"""TEST DOUBLE of tensorrt_llm._torch.moe.fused_moe.routing (see the package docstring)."""

from tensorrt_llm._comm import DefaultMoeRoutingMethod  # noqa: F401
