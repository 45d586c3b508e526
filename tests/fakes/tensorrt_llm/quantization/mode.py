"""TEST DOUBLE of tensorrt_llm.quantization.mode (see the package docstring)."""

import enum


class QuantAlgo(enum.Enum):
    FP8_BLOCK_SCALES = "FP8_BLOCK_SCALES"
    W4A8_MXFP4_MXFP8 = "W4A8_MXFP4_MXFP8"
    NO_QUANT = "NO_QUANT"
