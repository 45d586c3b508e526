"""TEST DOUBLE of the older layout's factory module (see the package docstring)."""

from tensorrt_llm._comm import OlderCommunicationFactory as CommunicationFactory  # noqa: F401
