"""TEST DOUBLE of tensorrt_llm._torch.moe.fused_moe.communication (see the package docstring)."""

from tensorrt_llm._comm import CommunicationFactory  # noqa: F401
