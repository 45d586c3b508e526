"""TEST DOUBLE of tensorrt_llm.mapping (see the package docstring)."""

from dataclasses import dataclass


@dataclass
class Mapping:
    rank: int
    tp_size: int
    moe_ep_size: int
    enable_attention_dp: bool
    world_size: int
