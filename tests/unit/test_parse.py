"""The parser on recorded outputs covering every case of the benchmark contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from moecomm_tasks.parse import looks_like_output_file, parse_paths, parse_texts

DATA = Path(__file__).parent.parent / "data"


def parse(*names: str):
    return parse_paths([DATA / n for n in names])


def test_seed_stdout_header_results_and_skips():
    out = parse("seed_stdout_2ranks.txt")
    assert out.dropped == () and out.failures == ()
    (job,) = out.jobs
    h = job.header
    assert (h.profile, h.ep_size, h.hidden_size, h.top_k, h.num_experts) == ("deepseek_v3", 2, 7168, 8, 256)
    assert (h.quant_algo, h.dtype, h.local_batch_sizes) == ("FP8_BLOCK_SCALES", "torch.bfloat16", (640, 768))
    assert (h.experts_per_rank, h.max_num_tokens_per_rank, h.device_count, h.launcher) == (128, 768, 2, "spawn")
    assert h.backend is None
    assert len(job.timings) == 12
    nvl = {(t.local_batch_size, t.op, t.rank): t.stats.mean_us for t in job.timings if t.backend == "NVLINK_ONE_SIDED"}
    assert nvl[(768, "combine", 1)] == 288.0
    assert all(t.stats.median_us is None for t in job.timings)
    skips = {(s.backend, s.local_batch_size): s.reason for s in job.skips}
    assert skips == {
        ("ALLGATHER", 768): "workload not feasible.",
        ("NVLINK_TWO_SIDED", 640): "feasibility check failed: workspace too small for 640 tokens",
        ("NVLINK_TWO_SIDED", 768): "feasibility check failed: workspace too small for 768 tokens",
        ("DEEPEP", None): "factory returned None.",
        ("DEEPEPLOWLATENCY", None): "RuntimeError: DeepEP low-latency mode needs NVSHMEM",
    }
    assert out.reports_written == ("/tmp/moe_comm_report.json",)


def test_iter_stats_and_kernel_breakdown():
    (job,) = parse("seed_stdout_iter_stats_kernels.txt").jobs
    assert job.header.backend == "NVLINK_ONE_SIDED" and job.header.quant_algo == "W4A8_MXFP4_MXFP8"
    d1 = next(t for t in job.timings if t.op == "dispatch" and t.rank == 1)
    assert (d1.stats.mean_us, d1.stats.median_us, d1.stats.stdev_us, d1.stats.min_us, d1.stats.max_us) == (
        90.25, 89.5, 2.7, 85.0, 104.0)
    phases = {(k.phase, k.kernel, k.rank): (k.count, k.stats.mean_us) for k in job.kernels}
    assert len(phases) == 6
    assert phases[("combine", "moeA2ACombineKernel", 1)] == (200, 111.0)
    assert any(p == "other" and "FillFunctor" in name for p, name, _ in phases)


def test_newer_report_keeps_extra_keys_and_accepts_new_backends():
    out = parse("newer_output_report.json")
    (job,) = out.jobs
    assert out.dropped == ()
    assert job.header.backend == "NCCL_EP" and job.header.launcher == "external_mpi"
    assert job.header.extra == {
        "cuda_graph": True, "pdl": False, "payload_in_workspace": False, "cupti_enabled": True,
        "warning": "timings from CUDA-graph replay",
    }
    assert len(job.timings) == 2 * 2 * 4
    assert {t.backend for t in job.timings} == {"NCCL_EP"}


def test_stdout_with_output_file_keeps_each_record_once():
    out = parse("seed_stdout_2ranks.txt", "seed_output_2ranks.json")
    (job,) = out.jobs
    assert out.dropped == ()
    assert len(job.timings) == 12 and len(job.skips) == 5


def test_seed_output_file_alone_has_no_header_and_is_dropped_with_reason():
    out = parse("seed_output_2ranks.json")
    assert out.jobs == () and not out.loadable
    assert "no run header" in out.dropped[0].reason


def test_truncated_stdout_keeps_every_complete_object():
    out = parse("truncated_stdout.txt")
    (job,) = out.jobs
    assert {(t.backend, t.local_batch_size) for t in job.timings} == {("ALLGATHER", 640), ("NVLINK_ONE_SIDED", 640)}
    assert len(job.skips) == 1
    (dropped,) = out.dropped
    assert dropped.reason == "truncated JSON object (it never closes)"
    assert dropped.line == 54 and '"local_batch_size": 768' in dropped.excerpt


def test_truncated_output_file_is_salvaged_with_the_stdout_header():
    out = parse("truncated_stdout.txt", "truncated_output_list.json")
    (job,) = out.jobs
    assert len({(t.backend, t.local_batch_size) for t in job.timings}) == 2
    reasons = [d.reason for d in out.dropped]
    assert any(r.startswith("truncated or malformed output file after 2 complete result objects") for r in reasons)


def test_invalid_objects_are_dropped_with_their_reasons():
    out = parse("invalid_objects_stdout.txt")
    (job,) = out.jobs
    reasons = {d.line: d.reason for d in out.dropped}
    assert reasons == {
        17: "invalid result object: dispatch_us.rank0: negative time (-3.0)",
        29: "invalid result object: dispatch_us.rank0: not a finite time (nan)",
        41: "invalid result object: dispatch_us: 3 rank keys do not match EP size 2 (expected rank0..rank1)",
        68: "malformed JSON object: Expecting ',' delimiter",
        79: "SOME_FUTURE_BACKEND @ 1280: dispatch_us is 0 on every rank: the phase was not measured",
        91: "invalid result object: dispatch_us.rank1: not a finite time (inf)",
    }
    kept = {(t.backend, t.local_batch_size, t.op) for t in job.timings}
    # The object with an NCCL log line inside it is kept; so is the measured phase of a half-lost one.
    assert kept == {("ALLGATHER", 1024, "dispatch"), ("ALLGATHER", 1024, "combine"),
                    ("SOME_FUTURE_BACKEND", 1280, "combine")}


def test_worker_failure_on_stderr():
    out = parse("worker_failure_stderr.txt")
    (failure,) = out.failures
    assert (failure.rank, failure.world_size, failure.pid) == (1, 2, 4242)
    assert "torch.OutOfMemoryError" in failure.traceback
    assert not out.loadable


def test_stdout_and_stderr_interleaved_in_one_file():
    text = (DATA / "seed_stdout_2ranks.txt").read_text()
    head, tail = text.split("[bench_moe_comm] Skipping DEEPEP:", 1)
    mixed = head + (DATA / "worker_failure_stderr.txt").read_text() + "[bench_moe_comm] Skipping DEEPEP:" + tail
    out = parse_texts([("combined.log", mixed)])
    (job,) = out.jobs
    assert len(job.timings) == 12 and len(job.skips) == 5
    assert len(out.failures) == 1 and out.dropped == ()


def test_compact_single_line_objects():
    text = (
        '{"bench": "bench_moe_comm", "launcher": "spawn", "ep_size": 1, "profile": "gpt_oss", "backend": null}\n'
        '{"profile": "gpt_oss", "ep_size": 1, "hidden_size": 2880, "local_batch_size": [128], "top_k": 4}\n'
        '{"backend": "TORCH_ALLTOALL", "local_batch_size": 128, "dispatch_us": {"rank0": 5.5}, '
        '"combine_us": {"rank0": 6.5}, "payload_dtype": "torch.bfloat16"}\n'
    )
    (job,) = parse_texts([("s", text)]).jobs
    assert [t.payload_dtype for t in job.timings] == ["torch.bfloat16"] * 2


def test_truncated_newer_report_keeps_metadata_and_complete_results():
    text = (DATA / "newer_output_report.json").read_text()
    cut = text[: text.index('"local_batch_size": 256')]
    out = parse_texts([("report.json", cut)])
    (job,) = out.jobs
    assert job.header.backend == "NCCL_EP"
    assert {t.local_batch_size for t in job.timings} == {128}
    assert len(out.dropped) == 1 and "after 1 complete result objects" in out.dropped[0].reason


def test_garbage_is_not_loadable():
    out = parse("garbage.txt")
    assert not out.loadable and out.jobs == ()


@pytest.mark.parametrize(
    "text, expected",
    [("[\n  {", True), ("[]", True), ('{\n  "benchmark_metadata": {}', True),
     ("[TensorRT-LLM] hello", False), ('{\n  "bench": "bench_moe_comm"', False)],
)
def test_output_file_detection(text, expected):
    assert looks_like_output_file(text) is expected
