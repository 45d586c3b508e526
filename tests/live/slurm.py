"""A one-node Slurm cluster of a test's own, from Debian's packages (`slurm-wlm` 22.05, `munge`,
`libpmix-dev`; `.ci/run` installs them).

It runs as root without systemd or cgroups: its own munge daemon and key, `slurmctld` and `slurmd`
in the foreground, a generated `slurm.conf` (`ProctrackType=proctrack/linuxproc`,
`TaskPlugin=task/none`, no accounting) with ports of its own, so that several clusters can run on
one machine at once. Clients find it through `SLURM_CONF`. The node offers more CPUs than the
machine has (`SlurmdParameters=config_overrides`), so that the jobs of two Celery workers can run at
once on a 2-core machine, and no GPUs: a job that asks for one is refused, as on a CPU cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from live.processes import Processes, free_port, wait_for

PROGRAMS = ("munged", "slurmctld", "slurmd", "srun", "sbatch", "scancel", "squeue", "sinfo", "scontrol")
NODE_CPUS = 8
START_TIMEOUT_S = 30


def missing() -> str | None:
    """Why a cluster cannot start here, or None."""
    absent = [p for p in PROGRAMS if shutil.which(p) is None]
    if absent:
        return f"{', '.join(absent)} not installed (apt-get install slurm-wlm munge libpmix-dev)"
    if os.geteuid() != 0:
        return "the test cluster's slurmd runs as root (as in CI)"
    return None


@dataclass
class SlurmCluster:
    root: Path
    processes: Processes
    node: str = socket.gethostname().split(".")[0]

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """What a client (srun, sbatch, scancel, squeue) needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        munge = self.root / "munge"
        for folder in (munge, self.root / "state", self.root / "spool"):
            folder.mkdir(parents=True, exist_ok=True)
        munge.chmod(0o700)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(f"""\
ClusterName=moecommtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge / 'munge.socket'}
CredType=cred/munge
StateSaveLocation={self.root / 'state'}
SlurmdSpoolDir={self.root / 'spool'}
SlurmctldPidFile={self.root / 'slurmctld.pid'}
SlurmdPidFile={self.root / 'slurmd.pid'}
SlurmctldLogFile={self.root / 'slurmctld.log'}
SlurmdLogFile={self.root / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
InactiveLimit=0
KillWait=5
# Ended jobs stay visible to scontrol (their state) this many seconds.
MinJobAge=30
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self) -> "SlurmCluster":
        self._write_config()
        env = {**os.environ, **self.env}
        munge = self.root / "munge"
        self.processes.start("munged", [
            "munged", "--foreground", "--force", f"--socket={munge / 'munge.socket'}",
            f"--key-file={munge / 'munge.key'}", f"--log-file={self.root / 'munged.log'}",
            f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'munged.seed'}"], env)
        wait_for("munged's socket", (munge / "munge.socket").exists, 10, 0.1, self.processes.check_running)
        self.processes.start("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)], env)
        wait_for("slurmctld answering", lambda: self._client(["sinfo", "-h"]) is not None, START_TIMEOUT_S, 0.2,
                 self.processes.check_running)
        self.processes.start("slurmd", ["slurmd", "-D", "-N", self.node, "-f", str(self.conf)], env)
        wait_for("the node idle", lambda: (self._client(["sinfo", "-h", "-o", "%t"]) or "").strip() == "idle",
                 START_TIMEOUT_S, 0.2, self.processes.check_running)
        return self

    def _client(self, argv: list[str]) -> str | None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10, env={**os.environ, **self.env})
        return result.stdout if result.returncode == 0 else None

    def jobs(self) -> list[str]:
        """The jobs Slurm still holds (pending, running or completing), as `id name state`."""
        return (self._client(["squeue", "-h", "-o", "%i %j %T"]) or "").splitlines()

    def states(self, name: str) -> list[str]:
        """The states of the jobs named `name` that Slurm remembers (for MinJobAge after they end)."""
        found = []
        for line in (self._client(["scontrol", "-o", "show", "job"]) or "").splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if fields.get("JobName") == name:
                found.append(fields.get("JobState", "?"))
        return found
