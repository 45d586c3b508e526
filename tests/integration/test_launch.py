"""Launch commands (argument lists, no shell) and runs: process groups, timeouts, kept outputs."""

from __future__ import annotations

import os
import re
import shlex
import sys
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from moecomm_tasks import launch, nightly
from moecomm_tasks.matrix import parse_matrix
from moecomm_tasks.parse import parse_paths
from live.processes import wait_for

pytestmark = pytest.mark.integration

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
    config = matrix(ep_sizes=[16], worker_args=[], launcher={"kind": "slurm", "slurm": {
        "mode": "srun", "partition": "gb200", "account": "perf", "gpus_per_node": 4, "time_limit": "00:20:00"}})
    spec = launch.build(config, config.jobs()[0], tmp_path)
    name = spec.slurm_job_name
    assert re.fullmatch(r"moecomm-TORCH_ALLTOALL-gpt_oss-ep16-[0-9a-f]{6}", name)
    assert spec.argv[:9] == [
        "srun", f"--job-name={name}", "--ntasks=16", "--ntasks-per-node=4", "--nodes=4",
        "--gpus-per-node=4", "--time=00:20:00", "--partition=gb200", "--account=perf"]
    assert spec.argv[9:11] == ["--mpi=pmix", "--kill-on-bad-exit=1"]
    assert spec.cancel_argv == ["scancel", f"--name={name}"]
    assert launch.build(config, config.jobs()[0], tmp_path).slurm_job_name != name, "each launch has a name of its own"


@pytest.mark.parametrize("worker_args, asks_for_gpus", [
    (["--device", "cpu"], False), (["--device=cpu"], False), ([], True), (["--device", "cuda"], True),
    (["--device", "cpu", "--device", "cuda"], True)])
def test_ranks_on_cpus_ask_slurm_for_no_gpus(tmp_path, worker_args, asks_for_gpus):
    for mode in ("srun", "sbatch"):
        config = matrix(worker_args=worker_args, launcher={"kind": "slurm", "slurm": {"mode": mode}})
        spec = launch.build(config, config.jobs()[0], tmp_path / mode)
        text = " ".join(spec.argv) + (tmp_path / mode / "job.sbatch").read_text() if mode == "sbatch" else " ".join(spec.argv)
        assert ("--gpus-per-node=2" in text) == asks_for_gpus, (mode, text)


def test_sbatch_script_quotes_every_value(tmp_path):
    config = matrix(env={"NCCL_SOCKET_IFNAME": "eth0 $(touch /tmp/pwned) `id`"},
                    launcher={"kind": "slurm", "slurm": {"mode": "sbatch"}})
    spec = launch.build(config, config.jobs()[0], tmp_path)
    assert spec.argv == ["sbatch", "--wait", "--parsable", str(tmp_path / "job.sbatch")]
    script = (tmp_path / "job.sbatch").read_text()
    assert "export NCCL_SOCKET_IFNAME='eth0 $(touch /tmp/pwned) `id`'" in script
    srun_line = next(line for line in script.splitlines() if line.startswith("exec srun"))
    assert shlex.split(srun_line)[2:] == ["--mpi=pmix", "--kill-on-bad-exit=1", *spec.program]


def slurm_matrix(mode: str, **changes):
    return matrix(launcher={"kind": "slurm", "slurm": {"mode": mode, "time_limit": "00:05:00"}}, **changes)


@pytest.mark.parametrize("mode", ["srun", "sbatch"])
def test_the_worker_runs_on_slurm_and_is_loaded(slurm_cluster, mode, tmp_path, engine, monkeypatch):
    """The real worker, 2 ranks started by Slurm through PMIx (rank and world from MPI), on the
    test's own one-node cluster; its output parsed and loaded as the nightly task does."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    config = slurm_matrix(mode)
    (job,) = config.jobs()
    outcome = nightly.run_job(config, job, run_id=f"slurm-{mode}", run_at=datetime(2026, 11, 20, 2, tzinfo=timezone.utc),
                              engine=engine, artifacts_in=tmp_path)
    assert outcome.state == "succeeded" and outcome.measurements == 2 * 2 * 2, outcome  # sizes x ops x ranks
    artifacts = Path(outcome.artifacts)
    assert (artifacts / "stdout.txt").read_text().strip().endswith(f"Report written to {artifacts / 'report.json'}")
    with engine.connect() as conn:
        ranks = conn.execute(sa.text("SELECT DISTINCT rank FROM measurement_flat WHERE run_id = :r"),
                             {"r": f"slurm-{mode}"}).scalars().all()
        command = conn.execute(sa.text("SELECT command FROM provenance")).scalar()
    assert sorted(ranks) == [0, 1], "two ranks of one world, not two singletons"
    assert command[0] == mode
    if mode == "sbatch":
        job_id = (artifacts / "sbatch.log").read_text().split(";")[0].strip()
        assert job_id.isdigit()
    _queue_empties(slurm_cluster)


@pytest.mark.parametrize("mode", ["srun", "sbatch"])
def test_a_hung_slurm_job_is_cancelled_and_leaves_no_process(slurm_cluster, mode, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    config = slurm_matrix(mode, timeout_s=8, kill_grace_s=2, worker_args=SMALL + ["--iters", "100000000"])
    spec = launch.build(config, config.jobs()[0], tmp_path / "job")
    with _watching(str(spec.output_file)) as seen:
        result = launch.run(spec)
    assert result.timed_out and result.cancel_problem is None
    # Both ranks ran (under slurmstepd, outside the launch's session) and are gone.
    assert len(seen) >= 2, (seen, spec.stderr.read_text()[-2000:])
    assert not _processes_mentioning(str(spec.output_file))
    assert slurm_cluster.states(spec.slurm_job_name) == ["CANCELLED"]
    _queue_empties(slurm_cluster)


def test_a_cancel_that_fails_is_reported(slurm_cluster, tmp_path):
    """The controller is gone when the job times out: scancel fails, the task is told that the job
    may still run, and the launch's own processes are killed all the same."""
    unreachable = tmp_path / "slurm.conf"
    unreachable.write_text(re.sub(r"(?m)^SlurmctldPort=.*$", "SlurmctldPort=9", slurm_cluster.conf.read_text())
                           + "MessageTimeout=1\nTCPTimeout=1\n")
    marker = str(tmp_path / "marker")
    program = [sys.executable, "-c", "import time, sys; time.sleep(300)", marker]
    spec = launch.LaunchSpec(argv=program, env={**os.environ, "SLURM_CONF": str(unreachable)}, knobs={}, program=program,
                             artifacts=tmp_path, timeout_s=2, kill_grace_s=2, slurm_job_name="moecomm-gone-0a0a0a",
                             cancel_argv=["scancel", "--name=moecomm-gone-0a0a0a"])
    result = launch.run(spec)
    assert result.timed_out and result.leftover_killed == 1 and not _processes_mentioning(marker)
    assert result.cancel_problem.startswith("scancel --name=moecomm-gone-0a0a0a exited with status 1")
    assert result.cancel_problem.endswith("job moecomm-gone-0a0a0a may still run")


@pytest.mark.parametrize("mode", ["srun", "sbatch"])
def test_a_failing_slurm_job_reaches_the_task(slurm_cluster, mode, tmp_path, engine, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    # Every rank refuses an EP size that is not the world size (exit status 2, as argparse does).
    config = slurm_matrix(mode, worker_args=SMALL + ["--ep_size", "3"])
    (job,) = config.jobs()
    with pytest.raises(nightly.BenchmarkFailed, match="the benchmark exited with status 2 "):
        nightly.run_job(config, job, run_id=f"fail-{mode}", run_at=datetime(2026, 11, 20, 2, tzinfo=timezone.utc),
                        engine=engine, artifacts_in=tmp_path)
    with engine.connect() as conn:
        state, error = conn.execute(sa.text("SELECT state, error FROM job_summary")).one()
    assert state == "failed" and "srun: error:" in error and "Exited with exit code 2" in error, error
    _queue_empties(slurm_cluster)


def test_a_gpu_request_on_a_cluster_without_gpus_is_refused_with_slurms_message(slurm_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    config = slurm_matrix("sbatch", worker_args=["--hidden_size", "128"])  # no --device cpu: asks for GPUs
    result = launch.run(launch.build(config, config.jobs()[0], tmp_path))
    assert result.returncode == 1 and not result.timed_out
    assert result.launcher_error == "sbatch: error: Invalid generic resource (gres) specification"


def _queue_empties(cluster) -> None:
    """Slurm lets go of an ended job: after its last step it may stay COMPLETING for a moment
    (longer on a loaded machine), never for long."""
    wait_for("Slurm's queue to empty", lambda: not cluster.jobs(), timeout_s=30, interval_s=0.5)


@contextmanager
def _watching(text: str):
    """The ids of the rank processes whose command line mentions `text`, sampled while the block runs."""
    seen: set[int] = set()
    done = threading.Event()

    def sample():
        while not done.wait(0.2):
            # The ranks themselves (python), not srun, whose arguments name the file too.
            seen.update(p.pid for p in _processes_mentioning(text) if Path(p.info["cmdline"][0]).name.startswith("python"))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(text in part for part in (proc.info["cmdline"] or [])):
            found.append(proc)
    return found


def test_timeout_kills_every_process_of_the_launch(tmp_path):
    marker = str(tmp_path / "marker")
    # The child sleeps with the marker among its arguments (`sleep 300 MARKER` would exit at once,
    # and whether the parent had reaped it when the session is killed was a race).
    child = "[sys.executable, '-c', 'import time; time.sleep(300)', sys.argv[1]]"
    program = [sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen({child}); time.sleep(300)", marker]
    # 5 s: time enough for the child to start on a busy machine.
    spec = launch.LaunchSpec(argv=program, env=dict(os.environ), knobs={}, program=program, artifacts=tmp_path,
                             timeout_s=5, kill_grace_s=2)
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
