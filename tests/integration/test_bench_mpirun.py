"""The benchmark worker under real `mpirun` ranks (2 ranks, gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from moecomm_tasks.cli import main as cli_main
from moecomm_tasks.mpi import mpirun_argv, mpirun_env
from moecomm_tasks.parse import parse_texts

pytestmark = pytest.mark.integration

FAKES = Path(__file__).parent.parent / "fakes"
EP_CHECK = Path(__file__).parent / "ep_reference_check.py"
SMALL = ["--hidden_size", "256", "-b", "16", "-e", "64", "-f", "2", "--iters", "8", "--warmup", "2"]
TRTLLM = ("ALLGATHER", "NVLINK_ONE_SIDED", "NVLINK_TWO_SIDED", "DEEPEP", "DEEPEPLOWLATENCY", "NCCL_EP")
ON_CPU = ("TORCH_ALLTOALL", "TORCH_ALLTOALL_PER_EXPERT", "TORCH_ALLGATHER")


def bench(ranks: int, *args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    argv = mpirun_argv(ranks, [sys.executable, "-m", "moecomm_tasks.bench", *args])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=mpirun_env(env))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "report.json"
    result = bench(2, "--ep_size", "2", *SMALL, "--iter_stats", "--kernel_breakdown", "--a2a_baseline",
                   "--output_file", str(out))
    return result, out


def test_two_ranks_print_the_contract(full_run):
    result, report = full_run
    assert result.returncode == 0, result.stderr[-3000:]
    parsed = parse_texts([("stdout", result.stdout)])
    assert parsed.dropped == () and parsed.failures == ()
    (job,) = parsed.jobs
    header = job.header
    assert (header.ep_size, header.hidden_size, header.local_batch_sizes, header.profile) == (2, 256, (16, 32, 64), "deepseek_v3")
    assert header.extra["provenance"]["comm_backend"] == "gloo"
    assert header.extra["provenance"]["timing_method"] == "host_clock"
    assert header.launcher == "external_mpi"
    upstream_keys = {"perfect_router": False, "random_seed": 1234, "cuda_graph": False, "pdl": False,
                     "payload_in_workspace": True, "cupti_enabled": False, "warning": None}
    assert {k: header.extra[k] for k in upstream_keys} == upstream_keys
    keys = {(t.backend, t.local_batch_size, t.op, t.rank) for t in job.timings}
    assert keys == {(b, s, op, r) for b in ON_CPU for s in (16, 32, 64) for op in ("dispatch", "combine") for r in (0, 1)}
    assert all(t.stats.median_us is not None and t.stats.min_us <= t.stats.mean_us <= t.stats.max_us for t in job.timings)
    assert {k.phase for k in job.kernels} == {"dispatch", "combine"}
    assert any("all_to_all" in k.kernel or "alltoall" in k.kernel for k in job.kernels)
    skips = {s.backend: s.reason for s in job.skips}
    assert set(skips) == set(TRTLLM) | {"TORCH_SYMM_MEM"}
    assert all("tensorrt_llm is not available" in skips[name] for name in TRTLLM)
    assert skips["TORCH_SYMM_MEM"] == "needs CUDA GPUs with NVSHMEM; this run uses gloo (CPUs)."
    assert parsed.reports_written == (str(report),)


def test_a2a_baseline_is_timed_per_size_and_rank(full_run):
    result, report = full_run
    results = json.loads(report.read_text())["results"]
    assert {(r["backend"], r["local_batch_size"]) for r in results} == {(b, s) for b in ON_CPU for s in (16, 32, 64)}
    for r in results:
        assert set(r["a2a_us"]) == {"rank0", "rank1"}
        assert all(0 < v["min"] <= v["mean"] <= v["max"] for v in r["a2a_us"].values())
    by_key = {(r["backend"], r["local_batch_size"]): r["payload_bytes"] for r in results}
    # DeepEP's layout sends a token once per rank; the per-expert one once per expert (top-k 8).
    assert all(by_key["TORCH_ALLTOALL_PER_EXPERT", s] > 2 * by_key["TORCH_ALLTOALL", s] for s in (16, 32, 64))


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_reference_layouts_across_real_ranks(ranks):
    """Each rank receives exactly the rows routed to it, whatever the token counts (ep_reference_check.py)."""
    argv = mpirun_argv(ranks, [sys.executable, str(EP_CHECK)])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=mpirun_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"checks passed on {ranks} ranks" in result.stdout


def test_output_file_matches_stdout(full_run):
    result, report = full_run
    from_stdout = parse_texts([("stdout", result.stdout)]).jobs[0]
    from_file = parse_texts([("report", report.read_text())]).jobs[0]
    assert from_file.header.job_key() == from_stdout.header.job_key()
    assert set(from_file.timings) == set(from_stdout.timings)
    assert json.loads(report.read_text())["benchmark_metadata"]["ep_size"] == 2


def test_output_loads_with_moecomm_load(full_run, database_url, engine, monkeypatch, tmp_path):
    result, report = full_run
    stdout = tmp_path / "stdout.txt"
    stdout.write_text(result.stdout)
    monkeypatch.setenv("MOECOMM_DATABASE_URL", database_url)
    assert cli_main(["load", str(stdout), str(report), "--run-id", "cpu-ep2"]) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM measurement_flat WHERE run_id = 'cpu-ep2'")).scalar() == 36
        assert conn.execute(sa.text("SELECT count(*) FROM skip")).scalar() == 7
        torch_version = conn.execute(sa.text("SELECT torch_version FROM provenance")).scalar()
    assert torch_version


def test_ep_size_other_than_the_world_size_is_an_error_not_a_hang():
    result = bench(2, "--ep_size", "4", *SMALL, timeout=120)
    assert result.returncode != 0
    assert "--ep_size 4 does not match the MPI world size 2" in result.stderr


def test_bad_combination_exits_with_the_contract_message():
    result = bench(2, "--ep_size", "2", "-i", "2", "-f", "2", timeout=120)
    assert result.returncode != 0
    assert "Only one of -i/--stepbatch or -f/--stepfactor should be used." in result.stderr


def fake_trtllm_env(layout: str) -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKES), os.environ.get("PYTHONPATH", "")]),
                MOECOMM_FAKE_TRTLLM_LAYOUT=layout)


@pytest.mark.parametrize("layout, module, quantized_dtype", [
    ("new", "tensorrt_llm._torch.moe", "torch.float16"),
    ("old", "tensorrt_llm._torch.modules", "torch.float32"),
    ("old-submodule", "tensorrt_llm._torch.modules", "torch.float32"),
])
def test_trtllm_adapter_against_the_factory_test_doubles(layout, module, quantized_dtype, tmp_path):
    """TensorRT-LLM cannot run here: its two module layouts are test doubles (tests/fakes/tensorrt_llm).

    The newest layout is used when it is there, and the quantizer comes from the same layout as the
    factory (the doubles' quantizers leave different payload dtypes)."""
    report = tmp_path / "report.json"
    result = bench(2, "--ep_size", "2", *SMALL, "--profile", "gpt_oss", "--output_file", str(report),
                   env=fake_trtllm_env(layout))
    parsed = parse_texts([("stdout", result.stdout)])
    (job,) = parsed.jobs
    provenance = job.header.extra["provenance"]
    assert (provenance["trtllm_version"], provenance["trtllm_module"]) == ("0.0.0+test-double", module)
    measured = {(t.backend, t.local_batch_size) for t in job.timings}
    assert {("ALLGATHER", s) for s in (16, 32, 64)} <= measured
    assert ("DEEPEP", 16) in measured and ("DEEPEP", 32) not in measured
    skips = {(s.backend, s.local_batch_size): s.reason for s in job.skips}
    assert skips[("NVLINK_TWO_SIDED", None)] == "factory returned None."
    assert skips[("DEEPEP", 32)] == "workload not feasible."
    assert skips[("DEEPEPLOWLATENCY", 16)] == "feasibility check failed: NVSHMEM is not initialised (test double)"
    assert skips[("NCCL_EP", 16)].startswith("correctness check failed:")
    assert not any(b == "NCCL_EP" for b, _ in measured)
    results = {(r["backend"], r["local_batch_size"]): r for r in json.loads(report.read_text())["results"]}
    assert results[("ALLGATHER", 16)]["payload_dtype"] == quantized_dtype
    # Only a backend with a combine input region takes the expert output there.
    assert results[("ALLGATHER", 16)]["payload_in_workspace"] is False
    assert "[bench_moe_comm] ALLGATHER has no combine input region; timing it without payload_in_workspace." in result.stdout
    if layout == "new":
        assert {results[("NVLINK_ONE_SIDED", s)]["payload_in_workspace"] for s in (16, 32, 64)} == {True}
    else:
        assert skips[("NVLINK_ONE_SIDED", None)] == "RuntimeError: MNNVL is not supported on this platform (test double)"
    # A backend that fails its correctness check fails the run visibly.
    assert result.returncode != 0
    assert "ERROR: NCCL_EP @ local_batch_size=16: correctness check failed" in result.stderr


def test_trtllm_adapter_without_payload_in_workspace_and_unquantized(tmp_path):
    """TensorRT-LLM cannot run here: test doubles (tests/fakes/tensorrt_llm), today's layout."""
    report = tmp_path / "report.json"
    result = bench(2, "--ep_size", "2", *SMALL, "--profile", "qwen3p8_2p4t_a95b", "--backend", "NVLINK_ONE_SIDED",
                   "--no_payload_in_workspace", "--output_file", str(report), env=fake_trtllm_env("new"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(report.read_text())
    assert report["benchmark_metadata"]["payload_in_workspace"] is False
    assert {(r["payload_in_workspace"], r["payload_dtype"]) for r in report["results"]} == {(False, "torch.bfloat16")}
    assert "no combine input region" not in result.stdout


def test_reference_backends_say_which_flags_they_cannot_honour(tmp_path):
    report = tmp_path / "report.json"
    result = bench(2, "--ep_size", "2", *SMALL, "--backend", "torch_alltoall", "--pdl", "--use_low_precision_combine",
                   "--perfect_router", "--random_seed", "99", "--output_file", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("[bench_moe_comm] TORCH_ALLTOALL")]
    assert lines == [
        "[bench_moe_comm] TORCH_ALLTOALL has no combine input region; timing it without payload_in_workspace.",
        "[bench_moe_comm] TORCH_ALLTOALL cannot honour --pdl (it launches no TensorRT-LLM kernels); timing it without.",
        "[bench_moe_comm] TORCH_ALLTOALL cannot honour --use_low_precision_combine (it combines in bf16); timing it without.",
    ]
    report = json.loads(report.read_text())
    metadata = report["benchmark_metadata"]
    assert (metadata["pdl"], metadata["use_low_precision_combine"], metadata["perfect_router"], metadata["random_seed"]) == (
        True, True, True, 99)
    for r in report["results"]:
        assert (r["pdl"], r["low_precision_combine"], r["payload_in_workspace"], r["timing_method"]) == (
            False, False, False, "host_clock")
        assert r["unhonoured"] == ["--pdl: it launches no TensorRT-LLM kernels",
                                   "--use_low_precision_combine: it combines in bf16"]


def test_without_a_profile_quant_is_required():
    result = bench(2, "--ep_size", "2", "--profile", "none", "--hidden_size", "64", "--top_k", "2",
                   "--num_experts", "8", timeout=120)
    assert result.returncode != 0
    assert "must provide --hidden_size, --top_k, --num_experts, and --quant." in result.stderr
