"""TEST DOUBLE of tensorrt_llm.models.modeling_utils (see the package docstring)."""


class QuantConfig:
    def __init__(self, quant_algo=None):
        self.quant_algo = quant_algo
