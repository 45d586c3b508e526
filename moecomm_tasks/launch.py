"""Launching one benchmark job: the command (an argument list, never a shell string), and running
it in its own session under a timeout that kills every process of that session.

Launchers: `local` (`mpirun` on the machine that runs the task) and `slurm` (`srun` inside or
outside an allocation, or `sbatch --wait` with a generated batch script). stdout, stderr and the
output file of each job are written to the job's artifacts folder, next to the task's logs.

A Slurm job gets a name of its own (`moecomm-<job>-<6 hex digits>`), so that cancelling it by name
never touches another launch's job; a job that outlives its timeout is cancelled with `scancel`
and waited for until Slurm no longer holds it (its ranks are gone), before the launch's own
processes are killed. Ranks that run on CPUs (`--device cpu`) ask Slurm for no GPUs.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import psutil

from moecomm_tasks import mpi
from moecomm_tasks.errors import LaunchError
from moecomm_tasks.matrix import Job, Matrix

CANCEL_TIMEOUT_S = 30
# How much of a log is searched for Slurm's own error lines.
ERROR_TAIL_BYTES = 65536
SLURM_ERROR = re.compile(r"^(?:srun|sbatch|salloc): error: .*$", re.MULTILINE)


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
    # Slurm: the job's name, and (sbatch) where sbatch's own output goes, since the job itself
    # writes stdout.txt and stderr.txt.
    slurm_job_name: str | None = None
    launcher_log: Path | None = None

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
    # Slurm's own last error line (a refused submission, a failed task), if any.
    launcher_error: str | None = None
    # Set when a cancelled Slurm job could not be seen to end: its ranks may still run.
    cancel_problem: str | None = None

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


def ranks_on_cpus(job: Job) -> bool:
    """Whether the job's ranks run on CPUs: its last `--device` flag says `cpu`."""
    device = None
    for index, arg in enumerate(job.extra_args):
        if arg == "--device" and index + 1 < len(job.extra_args):
            device = job.extra_args[index + 1]
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
    return device == "cpu"


def slurm_job_name(job: Job) -> str:
    """A name no other launch shares (scancel --name cancels every job of that name, as root any user's)."""
    return f"moecomm-{job.name}-{secrets.token_hex(3)}"


def _slurm_common(matrix: Matrix, job: Job, name: str) -> list[str]:
    slurm = matrix.launcher.slurm
    per_node = min(job.ep_size, slurm.gpus_per_node)
    args = [
        f"--job-name={name}", f"--ntasks={job.ep_size}", f"--ntasks-per-node={per_node}",
        f"--nodes={math.ceil(job.ep_size / slurm.gpus_per_node)}",
    ]
    # A cluster without GPUs configured refuses any GPU request ("Invalid generic resource").
    if not ranks_on_cpus(job):
        args.append(f"--gpus-per-node={per_node}")
    args.append(f"--time={slurm.time_limit}")
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


def _sbatch_script(matrix: Matrix, job: Job, name: str, spec_program: list[str], knobs: dict[str, str],
                   artifacts: Path) -> str:
    """A batch script whose every value is shell-quoted (sbatch runs it with a shell on the cluster)."""
    lines = ["#!/bin/bash"]
    for arg in _slurm_common(matrix, job, name):
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
    cancel = name = launcher_log = None
    if launcher.kind == "slurm":
        name = slurm_job_name(job)
        cancel = ["scancel", f"--name={name}"]
    if launcher.kind == "local":
        ranks = 1 if (matrix.benchmark.kind == "upstream" and matrix.benchmark.upstream_launch == "spawn") else job.ep_size
        exported = [arg for key in sorted(knobs) for arg in ("-x", key)]
        argv = mpi.mpirun_argv(ranks, program, oversubscribe=launcher.oversubscribe,
                               extra=[*launcher.mpirun_args, *exported])
    elif launcher.slurm.mode == "srun":
        argv = ["srun", *_slurm_common(matrix, job, name), *_srun_args(matrix, job), *program]
    else:
        script = artifacts / "job.sbatch"
        script.write_text(_sbatch_script(matrix, job, name, program, knobs, artifacts))
        argv = ["sbatch", "--wait", "--parsable", str(script)]
        launcher_log = artifacts / "sbatch.log"
    spec = LaunchSpec(argv=argv, env=env, knobs=knobs, program=program, artifacts=artifacts,
                      timeout_s=job.timeout_s, kill_grace_s=matrix.kill_grace_s, cancel_argv=cancel,
                      slurm_job_name=name, launcher_log=launcher_log)
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


def _slurm_holds(spec: LaunchSpec) -> bool | None:
    """Whether Slurm still holds the launch's job (pending, running or completing); None when
    squeue does not answer."""
    try:
        result = subprocess.run(["squeue", "--noheader", f"--name={spec.slurm_job_name}", "--format=%i"],
                                capture_output=True, text=True, timeout=CANCEL_TIMEOUT_S, env=spec.env, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(result.stdout.strip()) if result.returncode == 0 else None


def cancel_slurm_job(spec: LaunchSpec) -> str | None:
    """`scancel` the launch's job and wait (at most CANCEL_TIMEOUT_S) until Slurm no longer holds
    it, so that its ranks are gone. Returns what went wrong, or None."""
    deadline = time.monotonic() + CANCEL_TIMEOUT_S
    try:
        cancelled = subprocess.run(spec.cancel_argv, capture_output=True, text=True, timeout=CANCEL_TIMEOUT_S,
                                   env=spec.env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(spec.cancel_argv)} failed: {exc}; job {spec.slurm_job_name} may still run"
    if cancelled.returncode != 0:
        return (f"{' '.join(spec.cancel_argv)} exited with status {cancelled.returncode}: "
                f"{cancelled.stderr.strip()[-500:]}; job {spec.slurm_job_name} may still run")
    holds = None
    while time.monotonic() < deadline:
        holds = _slurm_holds(spec)
        if holds is False:
            return None
        time.sleep(0.5)
    if holds is None:
        return f"squeue did not answer after job {spec.slurm_job_name} was cancelled; it may still run"
    return f"job {spec.slurm_job_name} was cancelled but Slurm still held it after {CANCEL_TIMEOUT_S} s"


def _tail(path: Path | None) -> str:
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - ERROR_TAIL_BYTES))
        return handle.read().decode("utf-8", errors="replace")


def launcher_error(spec: LaunchSpec) -> str | None:
    """Slurm's last error line: from sbatch's own output first, else from the job's stderr."""
    for path in (spec.launcher_log, spec.stderr):
        found = SLURM_ERROR.findall(_tail(path))
        if found:
            return found[-1].strip()
    return None


def run(spec: LaunchSpec) -> LaunchResult:
    """Run `spec` in a new session. On timeout (or if this process is interrupted), cancel the
    Slurm job and wait for it to end, then kill the whole session: no process of the launch
    outlives it."""
    started = time.monotonic()
    with ExitStack() as files:
        if spec.launcher_log:
            out = err = files.enter_context(open(spec.launcher_log, "wb"))
        else:
            out, err = files.enter_context(open(spec.stdout, "wb")), files.enter_context(open(spec.stderr, "wb"))
        try:
            proc = subprocess.Popen(spec.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=spec.env,
                                    start_new_session=True, cwd=spec.artifacts)
        except OSError as exc:
            raise LaunchError(f"could not start {spec.argv[0]}: {exc}") from exc
        timed_out = False
        cancel_problem = None
        try:
            returncode: int | None = proc.wait(timeout=spec.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            returncode = None
        except BaseException:
            # The task itself is being stopped: leave nothing running behind it.
            if spec.cancel_argv:
                cancel_slurm_job(spec)
            kill_session(proc.pid, spec.kill_grace_s)
            raise
        if timed_out and spec.cancel_argv:
            cancel_problem = cancel_slurm_job(spec)
        # Whatever the outcome, no process of this launch may outlive it.
        leftover = kill_session(proc.pid, spec.kill_grace_s)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    error = launcher_error(spec) if (spec.slurm_job_name and not timed_out and returncode != 0) else None
    return LaunchResult(returncode, timed_out, time.monotonic() - started, leftover, error, cancel_problem)
