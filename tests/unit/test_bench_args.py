"""The worker's command line: the contract's defaults, sweeps and error messages."""

from __future__ import annotations

import pytest

from moecomm_tasks.bench.args import build_parser, local_batch_sizes, resolve


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_defaults_follow_the_contract():
    args = parse()
    assert (args.ep_size, args.backend, args.profile, args.iters, args.warmup) == (None, None, "deepseek_v3", 200, 20)
    assert local_batch_sizes(args) == [640]
    shape = resolve(args, 8)
    assert (shape.hidden_size, shape.top_k, shape.num_experts, shape.quant_algo) == (7168, 8, 256, "FP8_BLOCK_SCALES")
    assert shape.max_num_tokens_per_rank == 640


def test_gpt_oss_profile_and_overrides():
    shape = resolve(parse("--profile", "gpt_oss", "--hidden_size", "1024", "--quant", "no_quant"), 4)
    assert (shape.hidden_size, shape.top_k, shape.num_experts, shape.quant_algo) == (1024, 4, 128, "NO_QUANT")


@pytest.mark.parametrize("argv, sizes", [
    (["-b", "128", "-e", "512"], [128, 256, 384, 512]),
    (["-b", "128", "-e", "4096", "-f", "2"], [128, 256, 512, 1024, 2048, 4096]),
    (["-b", "100", "-e", "300", "-i", "100"], [100, 200, 300]),
    (["-b", "10", "-e", "30", "-f", "1.5"], [10, 15, 22]),
])
def test_sweeps(argv, sizes):
    assert local_batch_sizes(parse(*argv)) == sizes


@pytest.mark.parametrize("argv, ep, message", [
    (["-i", "2", "-f", "2"], 2, "Only one of -i/--stepbatch or -f/--stepfactor should be used."),
    (["-b", "0"], 2, "--minbatch must be > 0"),
    (["-b", "64", "-e", "32"], 2, "--maxbatch must be >= --minbatch"),
    (["-f", "1.0"], 2, "--stepfactor must be > 1.0"),
    (["-i", "0"], 2, "--stepbatch must be > 0"),
    (["-b", "64", "-e", "192", "--max_num_tokens_per_rank", "100"], 2,
     "--max_num_tokens_per_rank must be >= the maximum scanned local_batch_size (from -b/--minbatch..-e/--maxbatch)."),
    (["--num_experts", "100"], 3, "num_experts (100) must be divisible by ep_size (3)"),
    ([], 0, "--ep_size must be > 0"),
    (["--top_k", "300"], 2, "top_k (300) must be <= num_experts (256)"),
    (["--iters", "0"], 2, "--iters must be >= 1"),
])
def test_bad_combinations_raise_the_contract_messages(argv, ep, message):
    with pytest.raises(ValueError) as raised:
        resolve(parse(*argv), ep)
    assert str(raised.value) == message


@pytest.mark.parametrize("argv", [["--backend", "NOPE"], ["--profile", "llama"], ["--quant", "FP3"], ["--iters", "x"]])
def test_unknown_choices_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        parse(*argv)
    assert raised.value.code == 2
    assert "invalid" in capsys.readouterr().err


def test_backend_is_case_insensitive():
    assert parse("--backend", "torch_alltoall").backend == "TORCH_ALLTOALL"
    assert parse("--backend", "nccl_ep").backend == "NCCL_EP"


def test_cuda_graph_replay_is_the_default_and_no_cuda_graph_turns_it_off():
    assert (parse().no_cuda_graph, parse("--cuda_graph").no_cuda_graph, parse("--no_cuda_graph").no_cuda_graph) == (
        False, False, True)
    with pytest.raises(SystemExit) as raised:
        parse("--cuda_graph", "--no_cuda_graph")
    assert raised.value.code == 2


def test_upstream_flags_and_their_defaults():
    args = parse()
    assert (args.random_seed, args.perfect_router, args.use_low_precision_combine, args.no_payload_in_workspace,
            args.pdl, args.timing_method) == (1234, False, False, False, False, "kernel_span")
    args = parse("--random_seed", "7", "--perfect_router", "--use_low_precision_combine", "--no_payload_in_workspace",
                 "--pdl", "--timing_method", "cuda_events_spin")
    assert (args.random_seed, args.perfect_router, args.use_low_precision_combine, args.no_payload_in_workspace,
            args.pdl, args.timing_method) == (7, True, True, True, True, "cuda_events_spin")


@pytest.mark.parametrize("profile, shape", [
    ("deepseek_v3", (7168, 8, 256, "FP8_BLOCK_SCALES")),
    ("gpt_oss", (2880, 4, 128, "W4A8_MXFP4_MXFP8")),
    ("deepseek_v4_flash", (4096, 6, 256, "W4A8_MXFP4_MXFP8")),
    ("deepseek_v4_pro", (7168, 6, 384, "W4A8_MXFP4_MXFP8")),
    ("kimi_k3", (3584, 16, 896, "W4A8_MXFP4_MXFP8")),
    ("qwen3p8_2p4t_a95b", (8192, 10, 512, "NO_QUANT")),
])
def test_the_six_profiles_of_todays_upstream(profile, shape):
    resolved = resolve(parse("--profile", profile), 8)
    assert (resolved.hidden_size, resolved.top_k, resolved.num_experts, resolved.quant_algo) == shape


def test_without_a_profile_all_four_shape_flags_are_required():
    message = "No --profile specified; must provide --hidden_size, --top_k, --num_experts, and --quant."
    with pytest.raises(ValueError, match=message):
        resolve(parse("--profile", "none", "--hidden_size", "512", "--top_k", "2", "--num_experts", "8"), 2)
    shape = resolve(parse("--profile", "none", "--hidden_size", "512", "--top_k", "2", "--num_experts", "8",
                          "--quant", "no_quant"), 2)
    assert (shape.hidden_size, shape.top_k, shape.num_experts, shape.quant_algo) == (512, 2, 8, "NO_QUANT")
