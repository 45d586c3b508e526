"""The nightly task bodies that need no database: planning and the header of a job that died."""

from __future__ import annotations

from pathlib import Path

from moecomm_tasks import launch, nightly
from moecomm_tasks.matrix import parse_matrix

MATRIX = parse_matrix({"backends": ["TORCH_ALLTOALL", "DEEPEP"], "profiles": ["gpt_oss"], "ep_sizes": [2, 4],
                       "queues": ["a", "b"], "worker_args": ["--hidden_size", "512"]})


def test_plan_groups_jobs_by_queue_and_honours_params():
    planned = nightly.plan(MATRIX, {})
    assert set(planned) == {"a", "b"} and sum(len(v) for v in planned.values()) == 4
    subset = nightly.plan(MATRIX, {"backends": ["DEEPEP"], "ep_sizes": [4]})
    assert [j["backend"] for jobs in subset.values() for j in jobs] == ["DEEPEP"]


def test_expected_header_matches_what_the_worker_would_print(tmp_path: Path):
    job = MATRIX.jobs()[0]
    spec = launch.build(MATRIX, job, tmp_path)
    header = nightly.expected_header(spec.program, job)
    assert (header.profile, header.ep_size, header.hidden_size, header.top_k, header.num_experts) == ("gpt_oss", 2, 512, 4, 128)
    assert header.quant_algo == "W4A8_MXFP4_MXFP8" and header.backend == "TORCH_ALLTOALL"
    assert header.job_key() == "profile=gpt_oss,ep=2,quant=W4A8_MXFP4_MXFP8,hidden=512,topk=4,experts=128,backend=TORCH_ALLTOALL"


def test_expected_header_ignores_flags_only_an_upstream_script_knows(tmp_path: Path):
    upstream = parse_matrix({"backends": ["DEEPEP"], "profiles": ["deepseek_v3"], "ep_sizes": [8],
                             "worker_args": ["--use_low_precision_moe_combine"],
                             "benchmark": {"kind": "upstream", "script": "/x/bench_moe_comm.py"}})
    job = upstream.jobs()[0]
    header = nightly.expected_header(launch.build(upstream, job, tmp_path).program, job)
    assert header.hidden_size == 7168 and header.backend == "DEEPEP"
