"""The benchmark's command line, as the contract (`shared/reference/contract.md`) states it.

Same flags, defaults and error messages as today's upstream `bench_moe_comm.py` (the version the
contract names: six profiles, `--random_seed`, `--perfect_router`, `--use_low_precision_combine`,
`--no_payload_in_workspace`, CUDA-graph replay by default with `--no_cuda_graph`, `--pdl`), plus
flags of our own: `--device`, `--cuda_graph` (the default, said explicitly), `--timing_method`,
`--copy_baseline`, `--a2a_baseline`, `--extra_combine_passes`, `--timeout_s`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

TRTLLM_BACKENDS = ("ALLGATHER", "NVLINK_ONE_SIDED", "NVLINK_TWO_SIDED", "DEEPEP", "DEEPEPLOWLATENCY", "NCCL_EP")
# Ours, on torch.distributed (and torch's NVSHMEM kernels for TORCH_SYMM_MEM).
REFERENCE_BACKENDS = ("TORCH_ALLTOALL", "TORCH_ALLTOALL_PER_EXPERT", "TORCH_ALLGATHER", "TORCH_SYMM_MEM")
ALL_BACKENDS = TRTLLM_BACKENDS + REFERENCE_BACKENDS

# TensorRT-LLM's QuantAlgo names, used when tensorrt_llm is not installed to check --quant.
QUANT_ALGOS = (
    "W8A16", "W4A16", "W4A16_AWQ", "W4A8_AWQ", "W8A16_GPTQ", "W4A16_GPTQ", "W8A8_SQ_PER_CHANNEL",
    "W8A8_SQ_PER_TENSOR_PLUGIN", "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
    "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN", "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN",
    "W4A8_QSERVE_PER_GROUP", "W4A8_QSERVE_PER_CHANNEL", "FP8", "FP8_PER_CHANNEL_PER_TOKEN",
    "FP8_BLOCK_SCALES", "INT8", "MIXED_PRECISION", "NVFP4", "W4A8_NVFP4_FP8", "W4A8_MXFP4_FP8",
    "W4A8_MXFP4_MXFP8", "W4A16_MXFP4", "NVFP4_AWQ", "NO_QUANT",
)


@dataclass(frozen=True)
class Profile:
    name: str
    hidden_size: int
    top_k: int
    num_experts: int
    quant_algo: str


PROFILES = {
    "deepseek_v3": Profile("deepseek_v3", 7168, 8, 256, "FP8_BLOCK_SCALES"),
    "gpt_oss": Profile("gpt_oss", 2880, 4, 128, "W4A8_MXFP4_MXFP8"),
    "deepseek_v4_flash": Profile("deepseek_v4_flash", 4096, 6, 256, "W4A8_MXFP4_MXFP8"),
    "deepseek_v4_pro": Profile("deepseek_v4_pro", 7168, 6, 384, "W4A8_MXFP4_MXFP8"),
    # The all-to-all carries Kimi's latent MoE activations (3584 wide), not its 7168-wide states.
    "kimi_k3": Profile("kimi_k3", 3584, 16, 896, "W4A8_MXFP4_MXFP8"),
    "qwen3p8_2p4t_a95b": Profile("qwen3p8_2p4t_a95b", 8192, 10, 512, "NO_QUANT"),
}
# `--profile none`: no profile; then --hidden_size, --top_k, --num_experts and --quant are required.
NO_PROFILE = "none"
DEFAULT_SEED = 1234
# How a phase is timed on GPUs (stored as each result's `timing_method`):
#   kernel_span       upstream's: CUPTI kernel span of the phase, CUDA events where CUPTI cannot;
#   cuda_events       CUDA events around each phase (no CUPTI);
#   cuda_events_spin  ours: CUDA events, each phase launched behind a spin kernel that keeps the
#                     GPU ahead of the host (eager, or one graph per phase with --cuda_graph).
# On CPUs every method is the host's monotonic clock (`host_clock`).
TIMING_METHODS = ("kernel_span", "cuda_events", "cuda_events_spin")


@dataclass(frozen=True)
class Shape:
    """The resolved layer shape and sweep of one run."""

    hidden_size: int
    top_k: int
    num_experts: int
    quant_algo: str
    local_batch_sizes: tuple[int, ...]
    max_num_tokens_per_rank: int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moecomm_tasks.bench",
        description="MoE communication microbenchmark (dispatch and combine), one MPI rank per GPU.",
    )
    upper = lambda s: str(s).upper()  # noqa: E731
    parser.add_argument("--ep_size", type=int, default=None, help="number of ranks (default 8); must equal the MPI world size")
    parser.add_argument("--backend", type=upper, default=None, choices=ALL_BACKENDS, help="one backend (default: all)")
    parser.add_argument("--profile", type=str, default="deepseek_v3", choices=[*sorted(PROFILES), NO_PROFILE],
                        help="layer shape and quantization (default deepseek_v3); 'none': give all four of "
                             "--hidden_size, --top_k, --num_experts and --quant")
    parser.add_argument("--hidden_size", type=int, default=None)
    parser.add_argument("-b", "--minbatch", type=int, default=640, help="smallest local_batch_size (tokens per rank)")
    parser.add_argument("-e", "--maxbatch", type=int, default=None, help="largest local_batch_size (default: = min)")
    parser.add_argument("-i", "--stepbatch", type=int, default=None, help="additive step (default 128)")
    parser.add_argument("-f", "--stepfactor", type=float, default=None, help="multiplicative step")
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--num_experts", type=int, default=None)
    parser.add_argument("--quant", type=upper, default=None, choices=QUANT_ALGOS)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--max_num_tokens_per_rank", type=int, default=None)
    parser.add_argument("--kernel_breakdown", action="store_true")
    parser.add_argument("--iter_stats", action="store_true")
    parser.add_argument("--output_file", type=str, default=None)
    parser.add_argument("--random_seed", type=int, default=DEFAULT_SEED,
                        help="base seed of the inputs; rank r seeds with random_seed + r (default 1234)")
    parser.add_argument("--perfect_router", action="store_true",
                        help="deterministic balanced routing instead of uniform random experts")
    parser.add_argument("--use_low_precision_combine", action="store_true",
                        help="FP8 combine where the backend has one")
    parser.add_argument("--no_payload_in_workspace", action="store_true",
                        help="write the simulated expert output outside the backend's workspace, so combine "
                             "pays its staging copy (default: into the combine input region where one exists)")
    graphs = parser.add_mutually_exclusive_group()
    graphs.add_argument("--no_cuda_graph", action="store_true",
                        help="launch the iterations eagerly instead of replaying them from a CUDA graph")
    graphs.add_argument("--cuda_graph", action="store_true",
                        help="replay the iterations from a CUDA graph (the default; kept for older matrices)")
    parser.add_argument("--pdl", action="store_true",
                        help="Programmatic Dependent Launch for TensorRT-LLM's kernels (TRTLLM_ENABLE_PDL=1)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="where the reference backends run (auto: CUDA when available)")
    parser.add_argument("--timing_method", choices=TIMING_METHODS, default="kernel_span",
                        help="GPU timing: CUPTI kernel spans as upstream (falling back to CUDA events), "
                             "plain CUDA events, or CUDA events behind a spin kernel (ours)")
    parser.add_argument("--copy_baseline", action="store_true",
                        help="also time a device-to-device copy of each dispatch payload")
    parser.add_argument("--a2a_baseline", action="store_true",
                        help="also time NCCL's (gloo's on CPUs) all_to_all_single of each dispatch's payload "
                             "bytes in equal splits (a2a_us)")
    parser.add_argument("--extra_combine_passes", type=int, default=0,
                        help="reference backends only: N extra read-modify-write passes over the combine "
                             "output (real work; used to show that a slowdown is caught)")
    parser.add_argument("--timeout_s", type=float, default=600.0,
                        help="collective timeout: a rank that waits longer fails instead of hanging")
    return parser


def local_batch_sizes(args: argparse.Namespace) -> list[int]:
    """The sweep, nccl-tests style (`-b -e -i -f`). Raises ValueError with the contract's messages."""
    if args.stepbatch is not None and args.stepfactor is not None:
        raise ValueError("Only one of -i/--stepbatch or -f/--stepfactor should be used.")
    if args.minbatch is None and args.maxbatch is None:
        raise ValueError("Must specify at least one of -b/--minbatch or -e/--maxbatch.")
    low = int(args.minbatch) if args.minbatch is not None else int(args.maxbatch)
    if low <= 0:
        raise ValueError("--minbatch must be > 0")
    high = int(args.maxbatch) if args.maxbatch is not None else low
    if high < low:
        raise ValueError("--maxbatch must be >= --minbatch")
    if args.stepfactor is not None:
        factor = float(args.stepfactor)
        if factor <= 1.0:
            raise ValueError("--stepfactor must be > 1.0")
        sizes: list[int] = []
        value = float(low)
        while int(value) <= high:
            if not sizes or sizes[-1] != int(value):
                sizes.append(int(value))
            value *= factor
        return sizes
    step = 128 if args.stepbatch is None else int(args.stepbatch)
    if step <= 0:
        raise ValueError("--stepbatch must be > 0")
    return list(range(low, high + 1, step))


def resolve(args: argparse.Namespace, ep_size: int) -> Shape:
    """The layer shape and sweep for this run. Raises ValueError with the contract's messages."""
    if ep_size <= 0:
        raise ValueError("--ep_size must be > 0")
    sizes = local_batch_sizes(args)
    profile = PROFILES.get(args.profile)
    if profile is None and None in (args.hidden_size, args.top_k, args.num_experts, args.quant):
        raise ValueError(
            "No --profile specified; must provide --hidden_size, --top_k, --num_experts, and --quant."
        )
    hidden = int(args.hidden_size or profile.hidden_size)
    top_k = int(args.top_k or profile.top_k)
    experts = int(args.num_experts or profile.num_experts)
    quant = args.quant or profile.quant_algo
    for name, value in (("hidden_size", hidden), ("top_k", top_k), ("num_experts", experts)):
        if value <= 0:
            raise ValueError(f"--{name} must be > 0")
    largest = max(sizes)
    max_tokens = int(args.max_num_tokens_per_rank or largest)
    if max_tokens < largest:
        raise ValueError(
            "--max_num_tokens_per_rank must be >= the maximum scanned local_batch_size "
            "(from -b/--minbatch..-e/--maxbatch)."
        )
    if experts % ep_size != 0:
        raise ValueError(f"num_experts ({experts}) must be divisible by ep_size ({ep_size})")
    if top_k > experts:
        raise ValueError(f"top_k ({top_k}) must be <= num_experts ({experts})")
    for name in ("iters", "warmup", "extra_combine_passes"):
        if getattr(args, name) < (1 if name == "iters" else 0):
            raise ValueError(f"--{name} must be >= {1 if name == 'iters' else 0}")
    return Shape(hidden, top_k, experts, quant, tuple(sizes), max_tokens)
