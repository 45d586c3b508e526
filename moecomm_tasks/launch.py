"""Launching one benchmark job: the command (an argument list, never a shell string), and running
it in its own session under a timeout that kills every process of that session.

Launchers: `local` (`mpirun` on the machine that runs the task) and `slurm` (`srun` inside or
outside an allocation, or `sbatch --wait` with a generated batch script). stdout, stderr and the
output file of each job are written to the job's artifacts folder, next to the task's logs.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from moecomm_tasks import mpi
from moecomm_tasks.errors import LaunchError
from moecomm_tasks.matrix import Job, Matrix

CANCEL_TIMEOUT_S = 30


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to run one job, and to explain afterwards what was run."""

    argv: list[str]
    env: dict[str, str]
    knobs: dict[str, str]
    program: list[str]
    artifacts: Path
    timeout_s: float
    kill_grace_s: float
    cancel_argv: list[str] | None = None

    @property
    def stdout(self) -> Path:
        return self.artifacts / "stdout.txt"

    @property
    def stderr(self) -> Path:
        return self.artifacts / "stderr.txt"

    @property
    def output_file(self) -> Path:
        return self.artifacts / "report.json"


@dataclass(frozen=True)
class LaunchResult:
    returncode: int | None
    timed_out: bool
    duration_s: float
    leftover_killed: int

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.returncode == 0


def program_argv(matrix: Matrix, job: Job, output_file: Path) -> list[str]:
    """The benchmark's own command line (what each rank, or the spawning parent, runs)."""
    bench = matrix.benchmark
    build = job.build
    python = build.interpreter if build else None
    if bench.kind == "worker":
        head = [python or sys.executable, "-m", "moecomm_tasks.bench"]
    else:
        head = [python or bench.python, str((build.script if build else None) or bench.script)]
    return head + [
        "--ep_size", str(job.ep_size), "--backend", job.backend, "--profile", job.profile,
        *matrix.sweep.args(), "--output_file", str(output_file), *job.extra_args,
    ]


def _slurm_common(matrix: Matrix, job: Job) -> list[str]:
    slurm = matrix.launcher.slurm
    per_node = min(job.ep_size, slurm.gpus_per_node)
    args = [
        f"--job-name=moecomm-{job.name}", f"--ntasks={job.ep_size}", f"--ntasks-per-node={per_node}",
        f"--nodes={math.ceil(job.ep_size / slurm.gpus_per_node)}", f"--gpus-per-node={per_node}",
        f"--time={slurm.time_limit}",
    ]
    if slurm.partition:
        args.append(f"--partition={slurm.partition}")
    if slurm.account:
        args.append(f"--account={slurm.account}")
    return args + list(slurm.extra_args)


def _srun_args(matrix: Matrix, job: Job) -> list[str]:
    slurm = matrix.launcher.slurm
    args = [f"--mpi={slurm.mpi}", "--kill-on-bad-exit=1"]
    image = (job.build.container_image if job.build else None) or slurm.container_image
    if image:
        args.append(f"--container-image={image}")
    return args


def _sbatch_script(matrix: Matrix, job: Job, spec_program: list[str], knobs: dict[str, str], artifacts: Path) -> str:
    """A batch script whose every value is shell-quoted (sbatch runs it with a shell on the cluster)."""
    lines = ["#!/bin/bash"]
    for arg in _slurm_common(matrix, job):
        lines.append(f"#SBATCH {shlex.quote(arg)}")
    lines.append(f"#SBATCH --output={shlex.quote(str(artifacts / 'stdout.txt'))}")
    lines.append(f"#SBATCH --error={shlex.quote(str(artifacts / 'stderr.txt'))}")
    lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(knobs.items())]
    lines.append("exec srun " + " ".join(shlex.quote(a) for a in _srun_args(matrix, job) + spec_program))
    return "\n".join(lines) + "\n"


def build(matrix: Matrix, job: Job, artifacts: Path, base_env: dict[str, str] | None = None) -> LaunchSpec:
    """The launch of `job`, its outputs going to `artifacts` (created)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    output_file = artifacts / "report.json"
    program = program_argv(matrix, job, output_file)
    knobs = dict(job.env)
    env = mpi.mpirun_env(base_env)
    env.update(knobs)
    env.setdefault("PYTHONUNBUFFERED", "1")
    launcher = matrix.launcher
    cancel = None
    if launcher.kind == "local":
        ranks = 1 if (matrix.benchmark.kind == "upstream" and matrix.benchmark.upstream_launch == "spawn") else job.ep_size
        exported = [arg for key in sorted(knobs) for arg in ("-x", key)]
        argv = mpi.mpirun_argv(ranks, program, oversubscribe=launcher.oversubscribe,
                               extra=[*launcher.mpirun_args, *exported])
    elif launcher.slurm.mode == "srun":
        argv = ["srun", *_slurm_common(matrix, job), *_srun_args(matrix, job), *program]
        cancel = ["scancel", f"--name=moecomm-{job.name}"]
    else:
        script = artifacts / "job.sbatch"
        script.write_text(_sbatch_script(matrix, job, program, knobs, artifacts))
        argv = ["sbatch", "--wait", "--parsable", str(script)]
        cancel = ["scancel", f"--name=moecomm-{job.name}"]
    spec = LaunchSpec(argv=argv, env=env, knobs=knobs, program=program, artifacts=artifacts,
                      timeout_s=job.timeout_s, kill_grace_s=matrix.kill_grace_s, cancel_argv=cancel)
    (artifacts / "command.json").write_text(json.dumps({"argv": argv, "environment": knobs}, indent=2))
    return spec


def _session_processes(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def kill_session(sid: int, grace_s: float) -> int:
    """SIGTERM every process of session `sid`, then SIGKILL what is left after `grace_s`; return
    how many processes there were."""
    procs = _session_processes(sid)
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return len(procs)


def run(spec: LaunchSpec) -> LaunchResult:
    """Run `spec` in a new session; on timeout, kill the whole session (and cancel on Slurm)."""
    started = time.monotonic()
    with open(spec.stdout, "wb") as out, open(spec.stderr, "wb") as err:
        try:
            proc = subprocess.Popen(spec.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=spec.env,
                                    start_new_session=True, cwd=spec.artifacts)
        except OSError as exc:
            raise LaunchError(f"could not start {spec.argv[0]}: {exc}") from exc
        timed_out = False
        try:
            returncode: int | None = proc.wait(timeout=spec.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            returncode = None
        # Whatever the outcome, no process of this launch may outlive it.
        leftover = kill_session(proc.pid, spec.kill_grace_s)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if timed_out and spec.cancel_argv:
            try:
                subprocess.run(spec.cancel_argv, timeout=CANCEL_TIMEOUT_S, capture_output=True, check=False)
            except (OSError, subprocess.TimeoutExpired):
                pass
    return LaunchResult(returncode, timed_out, time.monotonic() - started, leftover)
