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


def test_cuda_graph_is_opt_in():
    assert (parse().cuda_graph, parse("--cuda_graph").cuda_graph, parse("--no_cuda_graph").cuda_graph) == (False, True, False)
    with pytest.raises(SystemExit) as raised:
        parse("--cuda_graph", "--no_cuda_graph")
    assert raised.value.code == 2
