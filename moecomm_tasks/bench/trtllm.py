"""TensorRT-LLM's communication backends, through its `CommunicationFactory`.

`tensorrt_llm` is an optional extra (it needs NVIDIA GPUs). When it does not import, every
TensorRT-LLM backend is reported with a contract skip line that says why. The factory has lived
at two module paths upstream; both are tried. Each backend is built once per run.

Not run on NVIDIA hardware here: this adapter is exercised against a test double of the factory's
interface (tests/fakes/tensorrt_llm), under real `mpirun` ranks.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

import torch

FACTORY_MODULES = (
    "tensorrt_llm._torch.modules.fused_moe.communication",
    "tensorrt_llm._torch.modules.fused_moe.communication.communication_factory",
)


@dataclass(frozen=True)
class _PretrainedConfig:
    """The two attributes the factory reads from a model's pretrained config."""

    hidden_size: int
    torch_dtype: torch.dtype


@dataclass
class TrtllmApi:
    factory: Any
    Mapping: Any
    ModelConfig: Any
    QuantConfig: Any
    QuantAlgo: Any
    version: str | None
    commit: str | None


def load_api() -> tuple[TrtllmApi | None, str | None]:
    """(the API, None), or (None, why it is unavailable)."""
    try:
        trtllm = importlib.import_module("tensorrt_llm")
    except Exception as exc:  # an optional extra: any import failure means "not available"
        return None, f"tensorrt_llm is not available ({type(exc).__name__}: {exc})"
    factory = None
    for path in FACTORY_MODULES:
        try:
            factory = getattr(importlib.import_module(path), "CommunicationFactory")
            break
        except (ImportError, AttributeError):
            continue
    if factory is None:
        return None, f"tensorrt_llm {getattr(trtllm, '__version__', '?')} has no CommunicationFactory at {' or '.join(FACTORY_MODULES)}"
    try:
        api = TrtllmApi(
            factory=factory,
            Mapping=importlib.import_module("tensorrt_llm.mapping").Mapping,
            ModelConfig=importlib.import_module("tensorrt_llm._torch.model_config").ModelConfig,
            QuantConfig=importlib.import_module("tensorrt_llm.models.modeling_utils").QuantConfig,
            QuantAlgo=importlib.import_module("tensorrt_llm.quantization.mode").QuantAlgo,
            version=getattr(trtllm, "__version__", None),
            commit=getattr(trtllm, "__git_commit__", None) or getattr(trtllm, "__commit__", None),
        )
    except (ImportError, AttributeError) as exc:
        return None, f"tensorrt_llm is missing part of the communication API: {type(exc).__name__}: {exc}"
    return api, None


class TrtllmBackend:
    """One TensorRT-LLM `Communication` strategy, behind the same interface as the reference backends."""

    def __init__(self, api: TrtllmApi, name: str, *, rank: int, ep_size: int, hidden_size: int, top_k: int,
                 num_experts: int, quant_algo: str, max_num_tokens_per_rank: int) -> None:
        self.name = name
        self.rank = rank
        self.ep_size = ep_size
        self.top_k = top_k
        self.hidden_size = hidden_size
        self.experts_per_rank = num_experts // ep_size
        mapping = api.Mapping(rank=rank, tp_size=ep_size, moe_ep_size=ep_size, enable_attention_dp=True,
                              world_size=ep_size)
        quant = api.QuantAlgo[quant_algo]
        self.quantized = quant != api.QuantAlgo.NO_QUANT
        quant_config = api.QuantConfig(quant_algo=quant) if self.quantized else api.QuantConfig()
        self.model_config = api.ModelConfig(
            pretrained_config=_PretrainedConfig(hidden_size, torch.bfloat16), mapping=mapping,
            quant_config=quant_config, max_num_tokens=max_num_tokens_per_rank,
            moe_max_num_tokens=max_num_tokens_per_rank, use_cuda_graph=False,
            use_low_precision_moe_combine=False,
        )
        create = api.factory._create_forced_method  # the benchmark forces one method, as upstream's does
        kwargs = {"payload_in_workspace": False, "alltoall_result_do_sum": True}
        if "use_flashinfer" in inspect.signature(create).parameters:
            kwargs["use_flashinfer"] = False
        self.impl = create(name, self.model_config, num_experts, num_experts, top_k, self.experts_per_rank, **kwargs)
        self.num_experts = num_experts
        self.payload_dtype = torch.bfloat16
        self._moe = None

    @property
    def available(self) -> bool:
        return self.impl is not None

    def feasible(self, all_rank_num_tokens: list[int]) -> bool:
        return bool(self.impl.is_workload_feasible(all_rank_num_tokens, num_chunks=1))

    def _quantizer(self) -> Any:
        """Quantize-before-dispatch, outside the timed region, for backends that support it."""
        if not (self.quantized and self.impl.supports_post_quant_dispatch()):
            return None
        if self._moe is None:
            fused_moe = importlib.import_module("tensorrt_llm._torch.modules.fused_moe")
            routing = importlib.import_module("tensorrt_llm._torch.modules.fused_moe.routing")
            self._moe = fused_moe.CutlassFusedMoE(
                routing_method=routing.DefaultMoeRoutingMethod(top_k=self.top_k), num_experts=self.num_experts,
                hidden_size=self.hidden_size, intermediate_size=self.hidden_size * 4, dtype=torch.bfloat16,
                reduce_results=False, model_config=self.model_config, init_load_balancer=False, without_comm=True,
            ).to(torch.device("cuda"))
        return self._moe

    def prepare(self, routing: Any, all_rank_num_tokens: list[int], quantize: bool = True) -> None:
        self.all_rank_num_tokens = all_rank_num_tokens
        self.routing = routing
        self.hidden, self.hidden_sf = routing.hidden, None
        moe = self._quantizer() if quantize else None
        if moe is not None:
            self.hidden, self.hidden_sf = moe.quantize_input(routing.hidden, post_quant_comm=True)
        self.payload_dtype = self.hidden.dtype
        self.impl.prepare_dispatch(routing.topk_ids, all_rank_num_tokens, None)

    def payload_bytes(self, routing: Any) -> int:
        return self.hidden.numel() * self.hidden.element_size()

    def dispatch(self) -> torch.Tensor:
        recv, _sf, self.recv_slots, self.recv_scales = self.impl.dispatch(
            self.hidden, self.hidden_sf, self.routing.topk_ids, self.routing.topk_weights, self.all_rank_num_tokens)
        return recv

    def expert_output(self, received: torch.Tensor) -> torch.Tensor:
        """Identity experts: each received token weighted by the router weights of this rank's experts."""
        slots = self.recv_slots.long()
        local = (slots // self.experts_per_rank) == self.rank
        weight = torch.where(local, self.recv_scales.float(), 0.0).sum(dim=-1, keepdim=True)
        values = torch.nan_to_num(received.float()) if received.is_floating_point() else received.float()
        shape = list(received.shape)
        shape[-1] = self.hidden_size
        return (values.reshape(*shape[:-1], -1)[..., : self.hidden_size] * weight).to(torch.bfloat16).reshape(shape)

    def local_ids(self) -> torch.Tensor:
        slots = self.recv_slots.long().flatten()
        return slots[(slots >= self.rank * self.experts_per_rank) & (slots < (self.rank + 1) * self.experts_per_rank)]

    def combine(self, expert_out: torch.Tensor) -> torch.Tensor:
        return self.impl.combine(expert_out, all_rank_max_num_tokens=max(self.all_rank_num_tokens))

    def timed_expert_output(self, received: torch.Tensor) -> torch.Tensor:
        """The simulated MoE output fed to combine while timing: bf16, shaped like the payload."""
        shape = list(received.shape)
        shape[-1] = self.hidden_size
        if not hasattr(self, "_expert_out") or list(self._expert_out.shape) != shape:
            self._expert_out = torch.zeros(shape, dtype=torch.bfloat16, device=received.device)
        return self._expert_out
