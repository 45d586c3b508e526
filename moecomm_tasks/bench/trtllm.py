"""TensorRT-LLM's communication backends, through its `CommunicationFactory`.

`tensorrt_llm` is an optional extra (it needs NVIDIA GPUs). When it does not import, every
TensorRT-LLM backend is reported with a contract skip line that says why. Two module layouts are
known, tried newest first; the factory, the fused-MoE quantizer and the router all come from the
layout whose factory imported:

* today's: `tensorrt_llm._torch.moe.fused_moe` (`.communication` for the factory, `.routing`);
* the older: `tensorrt_llm._torch.modules.fused_moe` (the factory in `.communication` or
  `.communication.communication_factory`, `.routing`).

The factory is called as today's upstream calls it (`payload_in_workspace`,
`alltoall_result_do_sum=True`, `use_flashinfer=False`); keywords an older factory does not take
are left out. Each backend is built once per run.

Not run on NVIDIA hardware here: this adapter is exercised against test doubles of both layouts
(tests/fakes/tensorrt_llm), under real `mpirun` ranks.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Layout:
    """Where one TensorRT-LLM version keeps the MoE communication API."""

    name: str
    factory_modules: tuple[str, ...]
    fused_moe: str
    routing: str


LAYOUTS = (
    Layout("tensorrt_llm._torch.moe", ("tensorrt_llm._torch.moe.fused_moe.communication",),
           "tensorrt_llm._torch.moe.fused_moe", "tensorrt_llm._torch.moe.fused_moe.routing"),
    Layout("tensorrt_llm._torch.modules", (
        "tensorrt_llm._torch.modules.fused_moe.communication",
        "tensorrt_llm._torch.modules.fused_moe.communication.communication_factory",
    ), "tensorrt_llm._torch.modules.fused_moe", "tensorrt_llm._torch.modules.fused_moe.routing"),
)


@dataclass(frozen=True)
class _PretrainedConfig:
    """The two attributes the factory reads from a model's pretrained config."""

    hidden_size: int
    torch_dtype: torch.dtype


@dataclass
class TrtllmApi:
    factory: Any
    layout: Layout
    Mapping: Any
    ModelConfig: Any
    QuantConfig: Any
    QuantAlgo: Any
    version: str | None
    commit: str | None

    def describe(self) -> dict[str, Any]:
        """What a run's provenance says of TensorRT-LLM."""
        return {"version": self.version, "commit": self.commit, "module": self.layout.name}

    def fused_moe(self) -> Any:
        return importlib.import_module(self.layout.fused_moe)

    def routing(self) -> Any:
        return importlib.import_module(self.layout.routing)


def _find_factory() -> tuple[Any, Layout] | None:
    for layout in LAYOUTS:
        for path in layout.factory_modules:
            try:
                return getattr(importlib.import_module(path), "CommunicationFactory"), layout
            except (ImportError, AttributeError):
                continue
    return None


def load_api() -> tuple[TrtllmApi | None, str | None]:
    """(the API, None), or (None, why it is unavailable)."""
    try:
        trtllm = importlib.import_module("tensorrt_llm")
    except Exception as exc:  # an optional extra: any import failure means "not available"
        return None, f"tensorrt_llm is not available ({type(exc).__name__}: {exc})"
    found = _find_factory()
    if found is None:
        paths = [p for layout in LAYOUTS for p in layout.factory_modules]
        return None, f"tensorrt_llm {getattr(trtllm, '__version__', '?')} has no CommunicationFactory at {' or '.join(paths)}"
    factory, layout = found
    try:
        api = TrtllmApi(
            factory=factory,
            layout=layout,
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


def _parameters(function: Any) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # a builtin without a readable signature
        return {}


def _accepted(function: Any, wanted: dict[str, Any]) -> dict[str, Any]:
    """The keywords of `wanted` that `function` takes (all of them if it takes **kwargs or its
    signature cannot be read)."""
    parameters = _parameters(function)
    if not parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return wanted
    return {k: v for k, v in wanted.items() if k in parameters}


class TrtllmBackend:
    """One TensorRT-LLM `Communication` strategy, behind the same interface as the reference backends."""

    def __init__(self, api: TrtllmApi, name: str, *, rank: int, ep_size: int, hidden_size: int, top_k: int,
                 num_experts: int, quant_algo: str, max_num_tokens_per_rank: int,
                 payload_in_workspace: bool = True, low_precision_combine: bool = False) -> None:
        self.api = api
        self.name = name
        self.rank = rank
        self.ep_size = ep_size
        self.top_k = top_k
        self.hidden_size = hidden_size
        self.num_experts = num_experts
        self.experts_per_rank = num_experts // ep_size
        self.max_num_tokens_per_rank = max_num_tokens_per_rank
        mapping = api.Mapping(rank=rank, tp_size=ep_size, moe_ep_size=ep_size, enable_attention_dp=True,
                              world_size=ep_size)
        quant = api.QuantAlgo[quant_algo]
        self.quantized = quant != api.QuantAlgo.NO_QUANT
        quant_config = api.QuantConfig(quant_algo=quant) if self.quantized else api.QuantConfig(quant_algo=None)
        self.model_config = api.ModelConfig(
            pretrained_config=_PretrainedConfig(hidden_size, torch.bfloat16), mapping=mapping,
            quant_config=quant_config, max_num_tokens=max_num_tokens_per_rank,
            moe_max_num_tokens=max_num_tokens_per_rank, use_cuda_graph=False,
            use_low_precision_moe_combine=low_precision_combine,
        )
        create = api.factory._create_forced_method  # the benchmark forces one method, as upstream's does
        kwargs = _accepted(create, {"payload_in_workspace": payload_in_workspace, "alltoall_result_do_sum": True,
                                    "use_flashinfer": False})
        self.impl = create(name, self.model_config, num_experts, num_experts, top_k, self.experts_per_rank, **kwargs)
        # Only a backend with a combine input region in its workspace (NVLINK_ONE_SIDED today) can
        # take the expert output there; the others are timed with combine's staging copy.
        self.payload_in_workspace = payload_in_workspace and hasattr(
            self.impl, "get_combine_payload_tensor_in_workspace")
        self.payload_dtype = torch.bfloat16
        self._moe = None
        self._expert_out: torch.Tensor | None = None

    @property
    def available(self) -> bool:
        return self.impl is not None

    def feasible(self, all_rank_num_tokens: list[int]) -> bool:
        return bool(self.impl.is_workload_feasible(all_rank_num_tokens, num_chunks=1))

    def _quantizer(self, device: torch.device) -> Any:
        """Quantize-before-dispatch, outside the timed region, for backends that support it."""
        if not (self.quantized and self.impl.supports_post_quant_dispatch()):
            return None
        if self._moe is None:
            self._moe = self.api.fused_moe().CutlassFusedMoE(
                routing_method=self.api.routing().DefaultMoeRoutingMethod(top_k=self.top_k),
                num_experts=self.num_experts, hidden_size=self.hidden_size, intermediate_size=self.hidden_size * 4,
                dtype=torch.bfloat16, reduce_results=False, model_config=self.model_config, init_load_balancer=False,
            ).to(device)
        return self._moe

    def prepare(self, routing: Any, all_rank_num_tokens: list[int], quantize: bool = True) -> None:
        self.all_rank_num_tokens = all_rank_num_tokens
        self.routing = routing
        self.hidden, self.hidden_sf = routing.hidden, None
        moe = self._quantizer(routing.hidden.device) if quantize else None
        if moe is not None:
            self.hidden, self.hidden_sf = moe.quantize_input(routing.hidden, post_quant_comm=True)
        self.payload_dtype = self.hidden.dtype
        self._expert_out = None
        # Older factories' prepare_dispatch also takes a load-balancer statistic (none here).
        self._prepare_extra = (None,) if "local_statistic_tensor" in _parameters(self.impl.prepare_dispatch) else ()

    def payload_bytes(self, routing: Any) -> int:
        return self.hidden.numel() * self.hidden.element_size()

    def dispatch(self) -> torch.Tensor:
        # Inside the timed phase, as upstream's: a no-op for most backends, not for NVLINK_TWO_SIDED.
        self.impl.prepare_dispatch(self.routing.topk_ids, self.all_rank_num_tokens, *self._prepare_extra)
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
        """The simulated MoE output fed to combine while timing, zeroed between the phases: the
        backend's combine input region when it is used, else a bf16 tensor shaped like the payload."""
        if self._expert_out is None:
            if self.payload_in_workspace:
                self._expert_out = self.impl.get_combine_payload_tensor_in_workspace(
                    max(self.all_rank_num_tokens), self.hidden_size, torch.bfloat16)
            else:
                shape = list(received.shape)
                shape[-1] = self.hidden_size
                self._expert_out = torch.zeros(shape, dtype=torch.bfloat16, device=received.device)
        return self._expert_out.zero_()
