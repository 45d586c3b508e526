"""Launch commands (argument lists, no shell) and runs: process groups, timeouts, kept outputs."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import psutil
import pytest

from moecomm_tasks import launch
from moecomm_tasks.matrix import parse_matrix
from moecomm_tasks.parse import parse_paths

pytestmark = pytest.mark.integration

FAKE_SLURM = Path(__file__).parent.parent / "fakes" / "slurm"
SMALL = ["--hidden_size", "128", "--device", "cpu"]


def matrix(**changes):
    base = {"backends": ["TORCH_ALLTOALL"], "profiles": ["gpt_oss"], "ep_sizes": [2], "env": {"NCCL_DEBUG": "WARN"},
            "sweep": {"min": 16, "max": 32, "factor": 2, "iters": 4, "warmup": 1}, "worker_args": SMALL,
            "launcher": {"oversubscribe": True}}
    base.update(changes)
    return parse_matrix(base)


def test_local_command_is_an_argument_list(tmp_path):
    config = matrix()
    job = config.jobs()[0]
    spec = launch.build(config, job, tmp_path)
    assert spec.argv[1:5] == ["-np", "2", "--oversubscribe", "-x"] and spec.argv[5] == "NCCL_DEBUG"
    assert spec.argv[6:9] == [sys.executable, "-m", "moecomm_tasks.bench"]
    assert spec.argv[spec.argv.index("--output_file") + 1] == str(tmp_path / "report.json")
    assert spec.argv[-4:] == SMALL and spec.env["NCCL_DEBUG"] == "WARN"
    assert (tmp_path / "command.json").exists()
    if os.geteuid() == 0:
        assert spec.env["OMPI_ALLOW_RUN_AS_ROOT"] == "1"


def test_upstream_spawn_starts_one_process(tmp_path):
    config = matrix(backends=["DEEPEP"], worker_args=[],
                    benchmark={"kind": "upstream", "script": "/opt/trtllm/bench_moe_comm.py", "upstream_launch": "spawn"})
    spec = launch.build(config, config.jobs()[0], tmp_path)
    assert spec.argv[1:3] == ["-np", "1"] and "/opt/trtllm/bench_moe_comm.py" in spec.argv


def test_srun_command(tmp_path):
    config = matrix(ep_sizes=[16], launcher={"kind": "slurm", "slurm": {
        "mode": "srun", "partition": "gb200", "account": "perf", "gpus_per_node": 4, "time_limit": "00:20:00"}})
    spec = launch.build(config, config.jobs()[0], tmp_path)
    assert spec.argv[:9] == [
        "srun", "--job-name=moecomm-TORCH_ALLTOALL-gpt_oss-ep16", "--ntasks=16", "--ntasks-per-node=4", "--nodes=4",
        "--gpus-per-node=4", "--time=00:20:00", "--partition=gb200", "--account=perf"]
    assert spec.argv[9:11] == ["--mpi=pmix", "--kill-on-bad-exit=1"]
    assert spec.cancel_argv == ["scancel", "--name=moecomm-TORCH_ALLTOALL-gpt_oss-ep16"]


def test_sbatch_script_quotes_every_value(tmp_path):
    config = matrix(env={"NCCL_SOCKET_IFNAME": "eth0 $(touch /tmp/pwned) `id`"},
                    launcher={"kind": "slurm", "slurm": {"mode": "sbatch"}})
    spec = launch.build(config, config.jobs()[0], tmp_path)
    assert spec.argv == ["sbatch", "--wait", "--parsable", str(tmp_path / "job.sbatch")]
    script = (tmp_path / "job.sbatch").read_text()
    assert "export NCCL_SOCKET_IFNAME='eth0 $(touch /tmp/pwned) `id`'" in script
    srun_line = next(line for line in script.splitlines() if line.startswith("exec srun"))
    assert shlex.split(srun_line)[2:] == ["--mpi=pmix", "--kill-on-bad-exit=1", *spec.program]


def test_sbatch_run_keeps_its_logs(tmp_path, monkeypatch):
    """Slurm cannot run here: sbatch, srun and scancel are test doubles (tests/fakes/slurm)."""
    # The doubles are Python scripts: run them with this environment's python3.
    monkeypatch.setenv("PATH", os.pathsep.join([str(FAKE_SLURM), str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.setenv("FAKE_SLURM_LOG", str(tmp_path / "slurm.log"))
    config = matrix(launcher={"kind": "slurm", "slurm": {"mode": "sbatch"}})
    spec = launch.build(config, config.jobs()[0], tmp_path / "job")
    result = launch.run(spec)
    assert result.ok, spec.stderr.read_text()[-2000:]
    assert spec.stdout.read_text().strip().endswith(f"Report written to {spec.output_file}")
    (job,) = parse_paths([spec.stdout, spec.stderr, spec.output_file]).jobs
    assert {t.local_batch_size for t in job.timings} == {16, 32}
    assert (tmp_path / "slurm.log").read_text().splitlines()[1].startswith("srun --mpi=pmix --kill-on-bad-exit=1 ")


def test_a_hung_sbatch_job_is_cancelled(tmp_path, monkeypatch):
    """Slurm cannot run here: sbatch, srun and scancel are test doubles (tests/fakes/slurm)."""
    # The doubles are Python scripts: run them with this environment's python3.
    monkeypatch.setenv("PATH", os.pathsep.join([str(FAKE_SLURM), str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.setenv("FAKE_SLURM_LOG", str(tmp_path / "slurm.log"))
    config = matrix(launcher={"kind": "slurm", "slurm": {"mode": "sbatch"}}, timeout_s=6, kill_grace_s=2,
                    worker_args=SMALL + ["--iters", "100000000"])
    spec = launch.build(config, config.jobs()[0], tmp_path / "job")
    result = launch.run(spec)
    assert result.timed_out and result.leftover_killed > 0
    assert "scancel --name=moecomm-TORCH_ALLTOALL-gpt_oss-ep2" in (tmp_path / "slurm.log").read_text()
    assert not _processes_mentioning(str(spec.output_file))


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(text in part for part in (proc.info["cmdline"] or [])):
            found.append(proc)
    return found


def test_timeout_kills_every_process_of_the_launch(tmp_path):
    marker = str(tmp_path / "marker")
    # The shell starts its grandchild at once (a Python child could still be importing when the
    # timeout strikes on a loaded machine).
    program = ["sh", "-c", 'sleep 300 "$0" & sleep 300', marker]
    spec = launch.LaunchSpec(argv=program, env=dict(os.environ), knobs={}, program=program, artifacts=tmp_path,
                             timeout_s=2, kill_grace_s=2)
    result = launch.run(spec)
    assert result.timed_out and result.returncode is None and result.leftover_killed == 2
    assert not _processes_mentioning(marker)


def test_a_crash_is_reported_with_its_outputs(tmp_path):
    config = matrix(worker_args=["--device", "cuda"])
    spec = launch.build(config, config.jobs()[0], tmp_path)
    result = launch.run(spec)
    assert not result.ok and not result.timed_out and result.returncode != 0
    parsed = parse_paths([spec.stdout, spec.stderr])
    assert parsed.failures and "--device cuda was given but CUDA is not available" in parsed.failures[0].traceback
