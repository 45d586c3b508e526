"""The knobs of each result, per output version (moecomm_tasks/knobs.py), on recorded outputs:
today's upstream (`upstream_*`, written from upstream's source at 162db94: an external_mpi run
with per-result payload_in_workspace, a CUPTI fallback at one size, an absent kernel, a null
rank; a spawn run where CUPTI could not start), the seed, our worker's older outputs, and our
worker's current keys."""

from __future__ import annotations

import json
from pathlib import Path

from moecomm_tasks import knobs
from moecomm_tasks.knobs import Knobs
from moecomm_tasks.parse import parse_paths, parse_texts

DATA = Path(__file__).parent.parent / "data"
REPO = Path(__file__).parent.parent.parent


def by_result(job) -> dict[tuple[str, int], Knobs]:
    return {(t.backend, t.local_batch_size): t.knobs for t in job.timings}


def test_external_mpi_stdout_and_output_file():
    out = parse_paths([DATA / "upstream_external_mpi_stdout.txt", DATA / "upstream_external_mpi_output.json"])
    (job,) = out.jobs
    assert out.dropped == () and out.failures == ()
    assert job.header.launcher == "external_mpi" and job.header.backend is None
    k = by_result(job)
    # payload_in_workspace: the result's own key, not the header's (true).
    assert k[("ALLGATHER", 128)].payload_in_workspace is False
    assert k[("NVLINK_ONE_SIDED", 128)].payload_in_workspace is True
    # Kernel spans, except the sizes the warning names as fallbacks (one only in the output file).
    assert k[("ALLGATHER", 128)].timing_method == "kernel_span"
    assert k[("NVLINK_ONE_SIDED", 128)].timing_method == "kernel_span"
    assert k[("NVLINK_ONE_SIDED", 256)].timing_method == "cuda_events"
    assert k[("NVLINK_TWO_SIDED", 128)].timing_method == "cuda_events"
    assert {(x.cuda_graph, x.pdl, x.perfect_router) for x in k.values()} == {(True, False, False)}
    # Upstream's header has no low-precision key: left to the recorded command.
    assert {x.low_precision_combine for x in k.values()} == {None}
    # The warning is kept with its job, each line once (stdout's WARNING line is also in the file).
    assert job.warning.count("\n") == 1 and "NVLINK_ONE_SIDED @ local_batch_size=256: rank1" in job.warning
    # A rank's null keeps the other rank; a kernel rank 1 did not run (0.0) is absent for rank 1 only.
    two = {(t.op, t.rank): t.stats for t in job.timings if t.backend == "NVLINK_TWO_SIDED"}
    assert two[("dispatch", 1)] is None and two[("dispatch", 0)].mean_us == 52.0
    assert job.measured == len(job.timings) - 1
    prepare = {k.rank for k in job.kernels if k.kernel == "moeA2APrepareDispatchKernel"}
    assert prepare == {0}
    assert len(job.skips) == 4


def test_stdout_alone_knows_only_the_first_fallback():
    """Upstream prints the WARNING line once: with stdout alone, later fallbacks are not known."""
    (job,) = parse_paths([DATA / "upstream_external_mpi_stdout.txt"]).jobs
    k = by_result(job)
    assert k[("NVLINK_ONE_SIDED", 256)].timing_method == "cuda_events"
    assert k[("NVLINK_TWO_SIDED", 128)].timing_method == "kernel_span"
    assert job.warning.startswith("CUPTI kernel-span timing is unavailable")


def test_cupti_unavailable_spawn_run():
    out = parse_paths([DATA / "upstream_cupti_unavailable_stdout.txt", DATA / "upstream_cupti_unavailable_output.json"])
    (job,) = out.jobs
    assert out.dropped == ()
    assert job.header.launcher == "spawn" and job.header.backend == "NVLINK_ONE_SIDED"
    (k,) = set(by_result(job).values())
    assert k == Knobs(cuda_graph=False, pdl=True, perfect_router=True, payload_in_workspace=True,
                      low_precision_combine=None, timing_method="cuda_events")
    assert "rank1: ImportError" in job.warning and job.warning.count("\n") == 0
    assert job.timings[0].stats.median_us is not None


def test_seed_version_knobs():
    (job,) = parse_paths([DATA / "seed_stdout_iter_stats_kernels.txt"]).jobs
    assert set(by_result(job).values()) == {Knobs(timing_method="profiler", pdl=None, low_precision_combine=None)}


def test_upstream_between_seed_and_today():
    """newer_output_report.json: a header with cuda_graph and cupti_enabled, no per-result keys."""
    (job,) = parse_paths([DATA / "newer_output_report.json"]).jobs
    assert {(k.timing_method, k.cuda_graph, k.payload_in_workspace) for k in by_result(job).values()} == {
        ("kernel_span", True, False)}
    header = json.loads((DATA / "newer_output_report.json").read_text())["benchmark_metadata"]
    del header["cupti_enabled"]
    text = json.dumps({"benchmark_metadata": header, "results": []})
    (job,) = parse_texts([("o.json", text), ("stdout", (DATA / "newer_output_report.json").read_text())]).jobs
    assert {k.timing_method for k in by_result(job).values()} == {"cuda_events"}


def test_our_older_worker_outputs():
    """Our worker before `cupti_enabled`: `cuda_events+cuda_graph` (the shipped H100 samples) and
    `cuda_events` (docs/data, eager behind a spin) are both our spin method; on CPU the clock."""
    (graph,) = parse_paths([REPO / "moecomm_tasks/samples/h100-ep1/h100-ep1-1/deepseek_v3.json"]).jobs
    assert {(k.timing_method, k.cuda_graph) for k in by_result(graph).values()} == {("cuda_events_spin", True)}
    (eager,) = parse_paths([REPO / "docs/data/h100-ep1/deepseek_v3.json"]).jobs
    assert {(k.timing_method, k.cuda_graph) for k in by_result(eager).values()} == {("cuda_events_spin", False)}
    report = json.loads((REPO / "docs/data/h100-ep1/deepseek_v3_graph.json").read_text())
    report["results"][0]["timing_method"] = "cuda_events"  # a size whose graph capture failed
    report["results"][1]["timing_method"] = "monotonic_clock"
    (job,) = parse_texts([("o.json", json.dumps(report))]).jobs
    k = by_result(job)
    first, second = ((r["backend"], r["local_batch_size"]) for r in report["results"][:2])
    assert (k[first].timing_method, k[first].cuda_graph) == ("cuda_events_spin", False)
    assert (k[second].timing_method, k[second].cuda_graph) == ("host_clock", True)


def our_worker_output(**result_keys) -> str:
    header = {"bench": "bench_moe_comm", "launcher": "external_mpi", "profile": "gpt_oss", "backend": None,
              "ep_size": 1, "hidden_size": 2880, "local_batch_size": [128], "top_k": 4, "quant_algo": "W4A8_MXFP4_MXFP8",
              "cuda_graph": True, "pdl": True, "payload_in_workspace": True, "perfect_router": False,
              "use_low_precision_combine": True, "cupti_enabled": False, "warning": None,
              "provenance": {"gpu_model": "NVIDIA H200", "timing_method": "cuda_events_spin"}}
    result = {"backend": "TORCH_ALLTOALL", "local_batch_size": 128, "dispatch_us": {"rank0": 10.5},
              "combine_us": {"rank0": 12.5}, "payload_dtype": "torch.bfloat16", "payload_bytes": 737280,
              **result_keys}
    return json.dumps({"benchmark_metadata": header, "results": [result]})


def test_our_worker_per_result_keys_win():
    text = our_worker_output(timing_method="cuda_events_spin", pdl=False, low_precision_combine=False,
                             payload_in_workspace=False, unhonoured=["--pdl: TORCH_ALLTOALL has no PDL kernels"])
    out = parse_texts([("o.json", text)])
    (job,) = out.jobs
    (t, _) = job.timings
    assert t.knobs == Knobs(cuda_graph=True, pdl=False, perfect_router=False, payload_in_workspace=False,
                            low_precision_combine=False, timing_method="cuda_events_spin")
    assert t.unhonoured == ("--pdl: TORCH_ALLTOALL has no PDL kernels",)
    (job,) = parse_texts([("o.json", our_worker_output())]).jobs
    assert job.timings[0].knobs.low_precision_combine is True and job.timings[0].knobs.pdl is True


def test_unknown_timing_method_is_dropped_with_its_reason():
    out = parse_texts([("o.json", our_worker_output(timing_method="stopwatch"))])
    assert not out.loadable
    assert "timing_method 'stopwatch' is none of kernel_span" in out.dropped[0].reason


def test_complete_from_provenance():
    open_ = Knobs(pdl=None, low_precision_combine=None)
    assert knobs.complete(open_, {}) == Knobs(pdl=False, low_precision_combine=False)
    done = knobs.complete(open_, {"environment": {"TRTLLM_ENABLE_PDL": "1"},
                                  "command": ["mpirun", "python", "bench_moe_comm.py", "--use_low_precision_combine"]})
    assert (done.pdl, done.low_precision_combine) == (True, True)
    assert knobs.complete(Knobs(pdl=False), {"environment": {"TRTLLM_ENABLE_PDL": "1"}}).pdl is False
