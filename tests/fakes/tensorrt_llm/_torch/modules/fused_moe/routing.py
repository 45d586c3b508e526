"""TEST DOUBLE of tensorrt_llm._torch.modules.fused_moe.routing (see the package docstring)."""

from tensorrt_llm._comm import DefaultMoeRoutingMethod  # noqa: F401
