"""The MoE communication benchmark worker (`python -m moecomm_tasks.bench`).

Same command line and JSON as TensorRT-LLM's `bench_moe_comm.py` (see the contract), run as
`mpirun -np EP python -m moecomm_tasks.bench --ep_size EP ...`, with TensorRT-LLM's backends when
`tensorrt_llm` is installed and reference backends on `torch.distributed` everywhere.
"""
