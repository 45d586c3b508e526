"""TEST DOUBLE of TensorRT-LLM's CommunicationFactory (see the package docstring).

The ALLGATHER strategy follows TensorRT-LLM's all-gather/reduce-scatter contract: dispatch
gathers every rank's tokens, expert slots and router scales; the caller's experts produce one
output per gathered token (already weighted); combine sums them across ranks (reduce-scatter).
"""

import torch
import torch.distributed as dist


class _AllGather:
    def __init__(self, ep_size, wrong=False):
        self.ep_size = ep_size
        self.wrong = wrong

    def supports_post_quant_dispatch(self):
        return False

    def is_workload_feasible(self, all_rank_num_tokens, num_chunks):
        return True

    def prepare_dispatch(self, token_selected_slots, all_rank_num_tokens, local_statistic_tensor):
        self.tokens = all_rank_num_tokens

    def _gather(self, tensor):
        out = torch.empty(self.ep_size * tensor.shape[0], *tensor.shape[1:], dtype=tensor.dtype, device=tensor.device)
        dist.all_gather_into_tensor(out, tensor.contiguous())
        return out

    def dispatch(self, hidden_states, hidden_states_sf, token_selected_slots, token_final_scales, all_rank_num_tokens):
        return (self._gather(hidden_states), None, self._gather(token_selected_slots),
                self._gather(token_final_scales))

    def combine(self, final_hidden_states, all_rank_max_num_tokens):
        out = torch.empty(final_hidden_states.shape[0] // self.ep_size, final_hidden_states.shape[1],
                          dtype=final_hidden_states.dtype, device=final_hidden_states.device)
        dist.reduce_scatter_tensor(out, final_hidden_states.contiguous())
        return out * 0.5 if self.wrong else out


class _Infeasible(_AllGather):
    def is_workload_feasible(self, all_rank_num_tokens, num_chunks):
        return max(all_rank_num_tokens) <= 16


class _FeasibilityError(_AllGather):
    def is_workload_feasible(self, all_rank_num_tokens, num_chunks):
        raise RuntimeError("NVSHMEM is not initialised (test double)")


class CommunicationFactory:
    @staticmethod
    def _create_forced_method(method, model_config, num_experts, num_slots, top_k, expert_size_per_partition,
                              payload_in_workspace=False, alltoall_result_do_sum=True, use_flashinfer=False):
        ep_size = model_config.mapping.moe_ep_size
        if method == "ALLGATHER":
            return _AllGather(ep_size)
        if method == "NVLINK_ONE_SIDED":
            raise RuntimeError("MNNVL is not supported on this platform (test double)")
        if method == "NVLINK_TWO_SIDED":
            return None
        if method == "DEEPEP":
            return _Infeasible(ep_size)
        if method == "DEEPEPLOWLATENCY":
            return _FeasibilityError(ep_size)
        if method == "NCCL_EP":
            return _AllGather(ep_size, wrong=True)
        raise ValueError(f"unknown method {method}")
