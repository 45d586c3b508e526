"""TEST DOUBLE of tensorrt_llm._torch.model_config (see the package docstring)."""


class ModelConfig:
    def __init__(self, **fields):
        self.__dict__.update(fields)
