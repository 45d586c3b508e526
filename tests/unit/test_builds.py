"""The matrix's catalog of builds: validation, the night's build, and how a build is launched
(its interpreter or virtual environment, its upstream script, its container image on Slurm, its
environment and worker arguments)."""

from __future__ import annotations

import shlex
import sys

import pytest

from moecomm_tasks import launch, nightly
from moecomm_tasks.errors import ConfigError
from moecomm_tasks.matrix import Job, parse_matrix

BASE = {"backends": ["TORCH_ALLTOALL"], "profiles": ["gpt_oss"], "ep_sizes": [2], "worker_args": ["--device", "cpu"],
        "overrides": [{"backend": "TORCH_ALLTOALL", "extra_args": ["--iters", "5"], "env": {"NCCL_DEBUG": "INFO"}}]}
BUILDS = [{"name": "trtllm-1.2.0rc1", "version": "1.2.0rc1", "venv": "/opt/venvs/1.2.0rc1"},
          {"name": "a1b2c3d", "commit": "a1b2c3d4e5", "venv": "/opt/venvs/a1b2c3d",
           "env": {"NCCL_DEBUG": "WARN", "TRTLLM_X": "1"}, "worker_args": ["--iters", "7"]}]
UPSTREAM = {"backends": ["DEEPEP"], "worker_args": [],
            "benchmark": {"kind": "upstream", "script": "/opt/TensorRT-LLM/tests/microbenchmarks/bench_moe_comm.py"}}
SLURM = {"launcher": {"kind": "slurm", "slurm": {"container_image": "nvcr.io#nvidia/tensorrt-llm:1.1.0"}}}


@pytest.mark.parametrize("change, message", [
    ({"builds": [{"name": "x", "commit": "1"}, {"name": "x", "commit": "2"}]}, "builds: ['x'] named more than once"),
    ({"builds": BUILDS, "night_build": "nope"}, "night_build: 'nope' is not in builds"),
    ({"builds": [{"name": "x"}]}, "build x: give its commit or its version"),
    ({"builds": [{"name": "x", "commit": "1", "python": "/p", "venv": "/v"}]}, "build x: give python or venv, not both"),
    ({"builds": [{"name": "x y", "commit": "1"}]}, "matrix.builds[0].name: Value error, 'x y': build names are"),
    ({"builds": [{"name": "x", "commit": "1", "env": {"LD_PRELOAD": "/evil.so"}}]},
     "matrix.builds[0].env: Value error, 'LD_PRELOAD' is not an allowed variable"),
    ({"builds": [{"name": "x", "commit": "1", "worker_args": ["--iters\n5"]}]}, "matrix.builds[0].worker_args"),
    ({"builds": [{"name": "x", "commit": "1\n2"}]}, "matrix.builds[0].commit: Value error"),
    ({"builds": [{"name": "x", "commit": "1", "container_image": "img"}]}, "container_image needs the slurm launcher"),
    ({"builds": [{"name": "x", "commit": "1", "script": "/b.py"}]}, "script is for benchmark.kind = 'upstream'"),
    ({"bisection": {"repetitions": 2}}, "matrix.bisection.repetitions: Input should be greater than or equal to 3"),
    ({"bisection": {"repetitions": 5, "max_repetitions": 4}}, "max_repetitions: must be >= repetitions"),
])
def test_invalid_catalogs_are_named(change, message):
    with pytest.raises(ConfigError) as raised:
        parse_matrix({**BASE, **change}, "test.toml")
    assert message in str(raised.value)


def test_the_night_runs_the_newest_build_unless_told():
    assert parse_matrix(BASE).build() is None and parse_matrix(BASE).jobs()[0].build is None
    matrix = parse_matrix({**BASE, "builds": BUILDS})
    job = matrix.jobs()[0]
    assert job.build.name == "a1b2c3d"
    # The build's environment and arguments come after the matrix's and the overrides'.
    assert job.env == {"NCCL_DEBUG": "WARN", "TRTLLM_X": "1"}
    assert job.extra_args == ["--device", "cpu", "--iters", "5", "--iters", "7"]
    assert matrix.jobs(build="trtllm-1.2.0rc1")[0].build.label == "trtllm-1.2.0rc1 (1.2.0rc1)"
    assert parse_matrix({**BASE, "builds": BUILDS, "night_build": "trtllm-1.2.0rc1"}).jobs()[0].build.name == \
        "trtllm-1.2.0rc1"
    with pytest.raises(ConfigError, match="no build 'v9' in the matrix's catalog"):
        matrix.jobs(build="v9")
    # Jobs travel between tasks as dicts (XCom) and come back the same.
    assert Job(**job.model_dump()) == job
    # A manual run of the nightly DAG may name the build.
    planned = nightly.plan(matrix, {"build": "trtllm-1.2.0rc1"})["default"]
    assert [j["build"]["name"] for j in planned] == ["trtllm-1.2.0rc1"]


def test_a_build_runs_with_its_virtual_environment(tmp_path):
    matrix = parse_matrix({**BASE, "builds": BUILDS, "launcher": {"oversubscribe": True}})
    spec = launch.build(matrix, matrix.jobs()[0], tmp_path)
    head = spec.program[:3]
    assert head == ["/opt/venvs/a1b2c3d/bin/python", "-m", "moecomm_tasks.bench"] and sys.executable not in spec.argv
    assert spec.knobs == {"NCCL_DEBUG": "WARN", "TRTLLM_X": "1"} and spec.argv[-2:] == ["--iters", "7"]
    # Without a catalog, the task's own interpreter runs the worker, as before.
    plain = launch.build(parse_matrix(BASE), parse_matrix(BASE).jobs()[0], tmp_path / "plain")
    assert plain.program[0] == sys.executable


def test_an_upstream_build_runs_its_own_script_with_its_interpreter(tmp_path):
    builds = [{"name": "c1", "commit": "c1", "python": "/opt/c1/bin/python3",
               "script": "/src/c1/tests/microbenchmarks/bench_moe_comm.py"}, {"name": "c2", "commit": "c2"}]
    matrix = parse_matrix({**BASE, **UPSTREAM, "builds": builds})
    first = launch.build(matrix, matrix.jobs(build="c1")[0], tmp_path / "c1")
    assert first.program[:2] == ["/opt/c1/bin/python3", "/src/c1/tests/microbenchmarks/bench_moe_comm.py"]
    second = launch.build(matrix, matrix.jobs(build="c2")[0], tmp_path / "c2")
    assert second.program[:2] == ["python3", "/opt/TensorRT-LLM/tests/microbenchmarks/bench_moe_comm.py"]


@pytest.mark.parametrize("mode", ["srun", "sbatch"])
def test_a_build_brings_its_container_image_to_slurm(tmp_path, mode):
    builds = [{"name": "c1", "commit": "c1", "container_image": "registry.example.com/trtllm:c1", "python": "python3"},
              {"name": "c2", "commit": "c2"}]
    slurm = {"launcher": {"kind": "slurm", "slurm": {**SLURM["launcher"]["slurm"], "mode": mode}}}
    matrix = parse_matrix({**BASE, **UPSTREAM, **slurm, "builds": builds})

    def srun_args(build: str) -> list[str]:
        spec = launch.build(matrix, matrix.jobs(build=build)[0], tmp_path / build)
        if mode == "srun":
            return spec.argv
        line = next(x for x in (tmp_path / build / "job.sbatch").read_text().splitlines() if x.startswith("exec srun"))
        return shlex.split(line)

    assert "--container-image=registry.example.com/trtllm:c1" in srun_args("c1")
    assert "--container-image=nvcr.io#nvidia/tensorrt-llm:1.1.0" in srun_args("c2")  # the matrix's own
