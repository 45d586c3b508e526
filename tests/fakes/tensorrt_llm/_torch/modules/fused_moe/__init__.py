"""TEST DOUBLE of tensorrt_llm._torch.modules.fused_moe (see the package docstring)."""
