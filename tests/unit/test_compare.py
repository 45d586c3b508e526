"""`moecomm compare` of two output files, with no database."""

from __future__ import annotations

import json

import pytest

from moecomm_tasks.cli import main as cli_main
from moecomm_tasks.compare import compare_files

HEADER = {"bench": "bench_moe_comm", "launcher": "external_mpi", "profile": "deepseek_v3", "backend": None,
          "ep_size": 2, "hidden_size": 7168, "local_batch_size": [128, 256], "top_k": 8, "quant_algo": "FP8_BLOCK_SCALES",
          "num_experts_total": 256, "experts_per_rank": 128, "iters": 200}


def stats(median):
    spread = median * 0.05
    return {"mean": median + spread, "median": median, "stdev": 4 * spread, "min": median - spread, "max": median * 2}


def result(size, dispatch, combine, kernel_us):
    per_rank = lambda v: {"rank0": stats(v), "rank1": stats(v * 1.1)}  # noqa: E731
    return {"backend": "NVLINK_ONE_SIDED", "payload_in_workspace": True, "local_batch_size": size,
            "dispatch_us": per_rank(dispatch), "combine_us": per_rank(combine),
            "dispatch_kernels": [{"name": "moeA2ADispatchKernel", "count": 200, "per_rank": per_rank(kernel_us)}],
            "combine_kernels": [{"name": "moeA2ACombineKernel", "count": 200, "per_rank": per_rank(kernel_us * 2)},
                                {"name": "moeA2APrepareCombineKernel", "count": 200,
                                 "per_rank": {"rank0": stats(3.0), "rank1": stats(3.0)}}],
            "other_kernels": []}


@pytest.fixture
def files(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"benchmark_metadata": HEADER, "results": [result(128, 100.0, 200.0, 50.0),
                                                                        result(256, 150.0, 300.0, 80.0)]}))
    # B: 128 tokens within noise of A; 256 tokens 20% faster; 512 only in B.
    b.write_text(json.dumps({"benchmark_metadata": HEADER, "results": [result(128, 100.1, 200.1, 50.0),
                                                                        result(256, 125.0, 250.0, 66.0),
                                                                        result(512, 1.0, 1.0, 1.0)]}))
    return a, b


def test_phases_of_sizes_present_in_both(files):
    rows = compare_files(*files)
    assert [(r.backend, r.local_batch_size, r.phase) for r in rows] == [
        ("NVLINK_ONE_SIDED", 128, "dispatch"), ("NVLINK_ONE_SIDED", 128, "combine"),
        ("NVLINK_ONE_SIDED", 256, "dispatch"), ("NVLINK_ONE_SIDED", 256, "combine")]
    assert rows[2].ratio == pytest.approx(150.0 / 125.0)
    assert [r.within_noise for r in rows] == [True, True, False, False]


def test_kernels_then_the_phase_totals(files):
    rows = compare_files(*files, kernels=True)
    at_256 = [(r.phase, r.item, r.ratio) for r in rows if r.local_batch_size == 256]
    assert at_256 == [
        ("dispatch", "moeA2ADispatchKernel", pytest.approx(80.0 / 66.0)),
        ("dispatch", "", pytest.approx(150.0 / 125.0)),
        ("combine", "moeA2ACombineKernel", pytest.approx(160.0 / 132.0)),
        ("combine", "moeA2APrepareCombineKernel", pytest.approx(1.0)),
        ("combine", "", pytest.approx(300.0 / 250.0)),
    ]


def test_stat_and_rank(files):
    rows = compare_files(*files, stat="max", rank=1)
    assert rows[0].a.value == pytest.approx(220.0) and rows[0].within_noise is None  # max: no noise estimate
    mean = compare_files(*files, stat="mean")[0]
    assert mean.a.value == pytest.approx(105.0) and mean.within_noise is True


def test_the_cli_prints_the_table_and_refuses_file_options_for_runs(files, capsys):
    assert cli_main(["compare", str(files[0]), str(files[1]), "--kernels"]) == 0
    out = capsys.readouterr().out
    assert "moeA2ADispatchKernel" in out and "beyond noise" in out and "within noise" in out
    # Each value with its iterations' spread (stdev 4 x 5% of the median); a ratio beyond the noise is marked.
    totals = [line.split() for line in out.splitlines() if line.split()[2:4] == ["dispatch", "total"]]
    assert totals == [["NVLINK_ONE_SIDED", "128", "dispatch", "total", "100.00", "±20.00", "100.10", "±20.02", "1.00",
                       "within", "noise"],
                      ["NVLINK_ONE_SIDED", "256", "dispatch", "total", "150.00", "±30.00", "125.00", "±25.00", "1.20*",
                       "beyond", "noise"]], totals
    assert cli_main(["compare", "night-1", "night-2", "--kernels"]) == 3
    assert "--kernels, --stat and --rank compare two output files" in capsys.readouterr().err


def test_files_without_results_are_an_error(tmp_path, files, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"benchmark_metadata": HEADER, "results": []}))
    assert cli_main(["compare", str(empty), str(files[1])]) == 3
    assert "no result object with a run header to compare" in capsys.readouterr().err
