"""TEST DOUBLE of TensorRT-LLM's communication strategies and factory (see the package docstring).

The strategies follow TensorRT-LLM's all-gather/reduce-scatter contract: dispatch gathers every
rank's tokens, expert slots and router scales; the caller's experts produce one output per
gathered token (already weighted); combine sums them across ranks (reduce-scatter). Each method
name behaves as a real backend can: work (ALLGATHER; NVLINK_ONE_SIDED too in today's layout, with a
combine input region in its workspace), refuse at construction (NVLINK_ONE_SIDED in the older
layout), be absent (NVLINK_TWO_SIDED), refuse a size (DEEPEP), fail a feasibility check
(DEEPEPLOWLATENCY) and return wrong results (NCCL_EP).

The factory refuses keywords that today's upstream would not pass (`alltoall_result_do_sum` must
be True, `use_flashinfer` False); the older layout's factory has no `use_flashinfer` at all.
"""

import torch
import torch.distributed as dist


class AllGather:
    def __init__(self, ep_size, wrong=False):
        self.ep_size = ep_size
        self.wrong = wrong

    def supports_post_quant_dispatch(self):
        return True

    def is_workload_feasible(self, all_rank_num_tokens, num_chunks):
        return True

    def prepare_dispatch(self, token_selected_slots, all_rank_num_tokens):
        self.tokens = all_rank_num_tokens

    def _gather(self, tensor):
        out = torch.empty(self.ep_size * tensor.shape[0], *tensor.shape[1:], dtype=tensor.dtype, device=tensor.device)
        dist.all_gather_into_tensor(out, tensor.contiguous())
        return out

    def dispatch(self, hidden_states, hidden_states_sf, token_selected_slots, token_final_scales, all_rank_num_tokens):
        return (self._gather(hidden_states), None, self._gather(token_selected_slots),
                self._gather(token_final_scales))

    def combine(self, final_hidden_states, all_rank_max_num_tokens):
        rows = self.ep_size * all_rank_max_num_tokens
        final_hidden_states = final_hidden_states[:rows]
        out = torch.empty(rows // self.ep_size, final_hidden_states.shape[1],
                          dtype=final_hidden_states.dtype, device=final_hidden_states.device)
        dist.reduce_scatter_tensor(out, final_hidden_states.contiguous())
        return out * 0.5 if self.wrong else out


class OlderAllGather(AllGather):
    def prepare_dispatch(self, token_selected_slots, all_rank_num_tokens, local_statistic_tensor):
        self.tokens = all_rank_num_tokens


class OneSided(AllGather):
    """Keeps a combine input region in its workspace, sized for the workspace's largest batch;
    a view of it holds one batch's rows."""

    def __init__(self, ep_size, workspace_tokens):
        super().__init__(ep_size)
        self.workspace_tokens = workspace_tokens

    def get_combine_payload_tensor_in_workspace(self, max_num_tokens, hidden_size, dtype):
        assert max_num_tokens <= self.workspace_tokens
        if not hasattr(self, "region"):
            self.region = torch.zeros(self.ep_size * self.workspace_tokens, hidden_size, dtype=dtype)
        return self.region[: self.ep_size * max_num_tokens]


class Infeasible(AllGather):
    def is_workload_feasible(self, all_rank_num_tokens, num_chunks):
        return max(all_rank_num_tokens) <= 16


class FeasibilityError(AllGather):
    def is_workload_feasible(self, all_rank_num_tokens, num_chunks):
        raise RuntimeError("NVSHMEM is not initialised (test double)")


def _create(method, model_config, older):
    ep_size = model_config.mapping.moe_ep_size
    base = OlderAllGather if older else AllGather
    if method == "ALLGATHER":
        return base(ep_size)
    if method == "NVLINK_ONE_SIDED":
        if older:
            raise RuntimeError("MNNVL is not supported on this platform (test double)")
        return OneSided(ep_size, model_config.moe_max_num_tokens)
    if method == "NVLINK_TWO_SIDED":
        return None
    if method == "DEEPEP":
        return Infeasible(ep_size)
    if method == "DEEPEPLOWLATENCY":
        return FeasibilityError(ep_size)
    if method == "NCCL_EP":
        return base(ep_size, wrong=True)
    raise ValueError(f"unknown method {method}")


class CommunicationFactory:
    """Today's factory (`tensorrt_llm._torch.moe.fused_moe.communication`)."""

    @staticmethod
    def _create_forced_method(method, model_config, num_experts, num_slots, top_k, expert_size_per_partition,
                              payload_in_workspace=False, alltoall_result_do_sum=False, use_flashinfer=True):
        if alltoall_result_do_sum is not True or use_flashinfer is not False:
            raise TypeError("called unlike today's upstream benchmark (test double)")
        return _create(method, model_config, older=False)


class OlderCommunicationFactory:
    """The older factory (`tensorrt_llm._torch.modules.fused_moe...`): no `use_flashinfer`."""

    @staticmethod
    def _create_forced_method(method, model_config, num_experts, num_slots, top_k, expert_size_per_partition,
                              payload_in_workspace=False, alltoall_result_do_sum=False):
        if alltoall_result_do_sum is not True:
            raise TypeError("called unlike upstream's benchmark (test double)")
        return _create(method, model_config, older=True)


class CutlassFusedMoE(torch.nn.Module):
    """Quantize-before-dispatch: the payload's dtype says which layout's quantizer ran (today's:
    float16, the older: float32), since the factory and the quantizer must come from one layout."""

    payload_dtype = torch.float16

    def __init__(self, routing_method, num_experts, hidden_size, intermediate_size, dtype, reduce_results,
                 model_config, init_load_balancer):
        super().__init__()
        self.routing_method = routing_method

    def quantize_input(self, hidden_states, post_quant_comm):
        assert post_quant_comm
        return hidden_states.to(self.payload_dtype), None


class OlderCutlassFusedMoE(CutlassFusedMoE):
    payload_dtype = torch.float32


class DefaultMoeRoutingMethod:
    def __init__(self, top_k):
        self.top_k = top_k
