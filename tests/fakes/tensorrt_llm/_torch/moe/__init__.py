"""TEST DOUBLE of tensorrt_llm._torch.moe, today's layout (see the package docstring)."""

import os

if os.environ.get("MOECOMM_FAKE_TRTLLM_LAYOUT", "new") != "new":
    raise ImportError("this test double is an older TensorRT-LLM without tensorrt_llm._torch.moe")
