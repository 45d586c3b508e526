"""The benchmark matrix: one TOML file, validated on load, expanded into jobs.

A job is one benchmark configuration: (backend, profile, EP size), with the sweep, the launcher,
the node queue it is routed to, its timeout and the environment given to its ranks. Every value
that ends up on a command line is checked here, before anything runs: backends, profiles and
quantization names against the contract's lists, numbers by type and range, environment
variables by prefix. Errors name the field (`matrix.backends[2]: ...`).

A matrix may also name an ordered catalog of builds (`[[builds]]`, oldest first): each says which
commit or version it is and how to run it (an interpreter or virtual environment, a container
image for Slurm, extra environment and worker arguments). A night runs one build of the catalog
(`night_build`, default the newest); the bisection DAG runs the builds between a regression's
last good and first bad night (`moecomm_tasks.bisection`).

The shipped files live in `moecomm_tasks/matrices/`; `MOECOMM_MATRIX` names the one the DAG uses
(a path, or the name of a shipped file without `.toml`; default `cpu`).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from moecomm_tasks.bench.args import ALL_BACKENDS, PROFILES, QUANT_ALGOS, REFERENCE_BACKENDS, TIMING_METHODS
from moecomm_tasks.errors import ConfigError

SHIPPED = Path(__file__).parent / "matrices"
ENV_PREFIXES = ("NCCL_", "TRTLLM_", "MOECOMM_", "CUDA_", "UCX_", "NVSHMEM_", "OMPI_", "PMIX_", "TORCH_")
NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
PositiveInt = Annotated[int, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for key, value in env.items():
        if not key.startswith(ENV_PREFIXES) or not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise ValueError(f"{key!r} is not an allowed variable (names start with {', '.join(ENV_PREFIXES)})")
        if "\0" in value or "\n" in value:
            raise ValueError(f"{key}: the value has a NUL or a line break")
    return env


def _check_args(args: list[str]) -> list[str]:
    for arg in args:
        if "\0" in arg or "\n" in arg:
            raise ValueError(f"argument {arg!r} has a NUL or a line break")
    return args


class Benchmark(_Strict):
    """Which benchmark runs: our worker, or an upstream bench_moe_comm.py from a checkout."""

    kind: Literal["worker", "upstream"] = "worker"
    script: Path | None = None
    python: str = "python3"
    # How the upstream script is started: "external" (mpirun -np EP, newer versions) or "spawn"
    # (one process that spawns EP workers through MPIPoolExecutor, the seed version).
    upstream_launch: Literal["external", "spawn"] = "external"

    @model_validator(mode="after")
    def _script_for_upstream(self) -> "Benchmark":
        if self.kind == "upstream" and self.script is None:
            raise ValueError("script: required when kind = 'upstream' (the path of bench_moe_comm.py)")
        return self


class Sweep(_Strict):
    min: PositiveInt = 640
    max: PositiveInt | None = None
    step: PositiveInt | None = None
    factor: Annotated[float, Field(gt=1.0)] | None = None
    iters: PositiveInt = 200
    warmup: Annotated[int, Field(ge=0)] = 20
    iter_stats: bool = True
    kernel_breakdown: bool = False
    quant: str | None = None
    max_num_tokens_per_rank: PositiveInt | None = None
    # Today's upstream knobs (each changes the measured number; the store keeps them per result).
    random_seed: int | None = None
    perfect_router: bool = False
    cuda_graph: bool = True
    pdl: bool = False
    low_precision_combine: bool = False
    payload_in_workspace: bool = True
    # Our worker only: kernel_span (upstream's, the default), cuda_events or cuda_events_spin.
    timing_method: Literal[TIMING_METHODS] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "Sweep":
        if self.step is not None and self.factor is not None:
            raise ValueError("step and factor: give one of them, not both")
        if self.max is not None and self.max < self.min:
            raise ValueError("max: must be >= min")
        if self.quant is not None and self.quant.upper() not in QUANT_ALGOS:
            raise ValueError(f"quant: {self.quant!r} is not one of {', '.join(QUANT_ALGOS)}")
        return self

    def args(self) -> list[str]:
        """The contract's sweep flags."""
        out = ["-b", str(self.min)]
        if self.max is not None:
            out += ["-e", str(self.max)]
        if self.step is not None:
            out += ["-i", str(self.step)]
        if self.factor is not None:
            out += ["-f", repr(self.factor)]
        out += ["--iters", str(self.iters), "--warmup", str(self.warmup)]
        if self.iter_stats:
            out.append("--iter_stats")
        if self.kernel_breakdown:
            out.append("--kernel_breakdown")
        if self.quant is not None:
            out += ["--quant", self.quant.upper()]
        if self.max_num_tokens_per_rank is not None:
            out += ["--max_num_tokens_per_rank", str(self.max_num_tokens_per_rank)]
        if self.random_seed is not None:
            out += ["--random_seed", str(self.random_seed)]
        flags = {"--perfect_router": self.perfect_router, "--no_cuda_graph": not self.cuda_graph, "--pdl": self.pdl,
                 "--use_low_precision_combine": self.low_precision_combine,
                 "--no_payload_in_workspace": not self.payload_in_workspace}
        out += [flag for flag, wanted in flags.items() if wanted]
        if self.timing_method is not None:
            out += ["--timing_method", self.timing_method]
        return out


class Slurm(_Strict):
    mode: Literal["srun", "sbatch"] = "srun"
    partition: str | None = None
    account: str | None = None
    gpus_per_node: PositiveInt = 8
    time_limit: str = "00:30:00"
    mpi: str = "pmix"
    container_image: str | None = None
    extra_args: list[str] = []

    _extra = field_validator("extra_args")(_check_args)

    @field_validator("partition", "account", "mpi", "container_image")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        if value is not None and not NAME.match(value.replace("/", "").replace("#", "")):
            raise ValueError(f"{value!r} has characters that are not allowed")
        return value

    @field_validator("time_limit")
    @classmethod
    def _time(cls, value: str) -> str:
        if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", value):
            raise ValueError(f"{value!r} is not a Slurm time (e.g. 00:30:00)")
        return value


class Build(_Strict):
    """One build of the catalog: which code it is, and how to run it.

    `python` (an interpreter) or `venv` (a virtual environment: its `bin/python`) runs the
    benchmark; neither: the interpreter of the task, or the matrix's `benchmark.python` for the
    upstream script. `script` is this build's `bench_moe_comm.py` (upstream only).
    `container_image` is given to Slurm's `--container-image` (Slurm launcher only). `env` and
    `worker_args` are added after the matrix's and the overrides' own.
    """

    name: str
    commit: str | None = None
    version: str | None = None
    python: str | None = None
    venv: str | None = None
    script: str | None = None
    container_image: str | None = None
    env: dict[str, str] = {}
    worker_args: list[str] = []

    _args = field_validator("worker_args")(_check_args)
    _env = field_validator("env")(_check_env)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r}: build names are letters, digits and _ . : -")
        return value

    @field_validator("container_image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return Slurm._plain(value)

    @field_validator("commit", "version", "python", "venv", "script")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "\0" in value or "\n" in value):
            raise ValueError(f"{value!r} is empty or has a NUL or a line break")
        return value

    @model_validator(mode="after")
    def _identified_and_runnable(self) -> "Build":
        if self.commit is None and self.version is None:
            raise ValueError(f"build {self.name}: give its commit or its version (or both)")
        if self.python is not None and self.venv is not None:
            raise ValueError(f"build {self.name}: give python or venv, not both")
        return self

    @property
    def interpreter(self) -> str | None:
        """The Python that runs this build's benchmark, when the build names one."""
        if self.venv is not None:
            return str(Path(self.venv) / "bin" / "python")
        return self.python

    @property
    def label(self) -> str:
        """The build as people name it: its name and commit (or version)."""
        return f"{self.name} ({self.commit or self.version})"


class Confirmation(_Strict):
    """Re-running the jobs of new alerts before anyone is paged (moecomm_tasks.confirm)."""

    # Jobs re-run at most per night (the rest wait, oldest first); 0: alerts are sent unconfirmed.
    max_jobs: Annotated[int, Field(ge=0)] = 4
    # A re-run agrees when it lies at least this far from the baseline towards the alert's level
    # after the change (0: the baseline, 1: that level; on a log scale).
    agree: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5


class Bisection(_Strict):
    """How the bisection DAG decides (moecomm_tasks.bisection_search states the test)."""

    repetitions: Annotated[int, Field(ge=3)] = 3
    max_repetitions: PositiveInt = 8
    alpha: Annotated[float, Field(gt=0.0, lt=0.5)] = 0.01
    closeness: Annotated[float, Field(gt=0.0, le=0.5)] = 1 / 3

    @model_validator(mode="after")
    def _bounds(self) -> "Bisection":
        if self.max_repetitions < self.repetitions:
            raise ValueError("max_repetitions: must be >= repetitions")
        return self


class Launcher(_Strict):
    kind: Literal["local", "slurm"] = "local"
    mpirun_args: list[str] = []
    oversubscribe: bool = False
    slurm: Slurm = Slurm()

    _mpirun = field_validator("mpirun_args")(_check_args)


class Override(_Strict):
    """Settings for the jobs that match `backend` and/or `profile` (both, when both are given)."""

    backend: str | None = None
    profile: str | None = None
    extra_args: list[str] = []
    timeout_s: PositiveInt | None = None
    env: dict[str, str] = {}

    _extra = field_validator("extra_args")(_check_args)
    _env = field_validator("env")(_check_env)

    @field_validator("backend")
    @classmethod
    def _backend(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in ALL_BACKENDS:
            raise ValueError(f"{value!r} is not a backend ({', '.join(ALL_BACKENDS)})")
        return value.upper() if value else value

    def matches(self, backend: str, profile: str) -> bool:
        return (self.backend in (None, backend)) and (self.profile in (None, profile))


class Matrix(_Strict):
    """The whole matrix file."""

    schedule: str = "0 2 * * *"
    backends: list[str]
    profiles: list[str]
    ep_sizes: list[PositiveInt]
    queues: list[str] = ["default"]
    pool: str = "moe_gpu"
    pool_slots: PositiveInt = 1
    timeout_s: PositiveInt = 1800
    kill_grace_s: PositiveInt = 15
    retries: Annotated[int, Field(ge=0)] = 1
    retry_delay_s: PositiveInt = 120
    # A run not finished this long after it was queued is reported late (moecomm_tasks.deadline).
    deadline_s: PositiveInt = 6 * 3600
    worker_args: list[str] = []
    env: dict[str, str] = {}
    benchmark: Benchmark = Benchmark()
    sweep: Sweep = Sweep()
    launcher: Launcher = Launcher()
    overrides: list[Override] = []
    builds: list[Build] = []
    night_build: str | None = None
    bisection: Bisection = Bisection()
    confirmation: Confirmation = Confirmation()

    _worker_args = field_validator("worker_args")(_check_args)
    _env = field_validator("env")(_check_env)

    @field_validator("backends")
    @classmethod
    def _backends(cls, values: list[str]) -> list[str]:
        unknown = [v for v in values if v.upper() not in ALL_BACKENDS]
        if unknown or not values:
            raise ValueError(f"{unknown or 'empty'}: backends are {', '.join(ALL_BACKENDS)}")
        return [v.upper() for v in values]

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, values: list[str]) -> list[str]:
        unknown = [v for v in values if v not in PROFILES]
        if unknown or not values:
            raise ValueError(f"{unknown or 'empty'}: profiles are {', '.join(PROFILES)}")
        return values

    @field_validator("queues")
    @classmethod
    def _queues(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if not NAME.match(v)]
        if bad or not values:
            raise ValueError(f"{bad or 'empty'}: queue names are letters, digits and _ . : -")
        return values

    @model_validator(mode="after")
    def _upstream_backends(self) -> "Matrix":
        if self.benchmark.kind == "upstream":
            ours = [b for b in self.backends if b in REFERENCE_BACKENDS]
            if ours:
                raise ValueError(f"backends: {ours} exist only in our worker, not in the upstream script")
            if self.sweep.timing_method is not None:
                raise ValueError("sweep.timing_method: only our worker has --timing_method")
        return self

    @model_validator(mode="after")
    def _experts_divide(self) -> "Matrix":
        if "--num_experts" in self.worker_args:
            return self
        bad = [f"{p} ({PROFILES[p].num_experts} experts) at EP {ep}" for p in self.profiles for ep in self.ep_sizes
               if PROFILES[p].num_experts % ep]
        if bad:
            raise ValueError(f"the number of experts must divide by the EP size: {', '.join(bad)}")
        return self

    @model_validator(mode="after")
    def _catalog(self) -> "Matrix":
        names = [b.name for b in self.builds]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"builds: {repeated} named more than once (each build has a name of its own)")
        if self.night_build is not None and self.night_build not in names:
            raise ValueError(f"night_build: {self.night_build!r} is not in builds ({names})")
        if self.launcher.kind != "slurm":
            imaged = [b.name for b in self.builds if b.container_image]
            if imaged:
                raise ValueError(f"builds {imaged}: container_image needs the slurm launcher")
        if self.benchmark.kind != "upstream":
            scripted = [b.name for b in self.builds if b.script]
            if scripted:
                raise ValueError(f"builds {scripted}: script is for benchmark.kind = 'upstream'")
        return self

    def build(self, name: str | None = None) -> Build | None:
        """The build called `name`, else the night's (`night_build`, default the newest); None
        without a catalog. Raises ConfigError for a name the catalog does not have."""
        if name:
            for build in self.builds:
                if build.name == name:
                    return build
            raise ConfigError(f"no build {name!r} in the matrix's catalog ({[b.name for b in self.builds]})")
        if self.night_build is not None:
            return self.build(self.night_build)
        return self.builds[-1] if self.builds else None

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a five-field cron expression (UTC)")
        return value

    def jobs(self, backends: list[str] | None = None, profiles: list[str] | None = None,
             ep_sizes: list[int] | None = None, build: str | None = None) -> list["Job"]:
        """The jobs of this matrix, or of the subset asked for (params of a manual run), each
        running `build` of the catalog (default: the night's build, see `build()`)."""
        chosen = self.build(build)
        wanted_backends = [b.upper() for b in backends] if backends else self.backends
        wanted_profiles = profiles or self.profiles
        wanted_eps = ep_sizes or self.ep_sizes
        for name, values, allowed in (("backends", wanted_backends, self.backends),
                                      ("profiles", wanted_profiles, self.profiles),
                                      ("ep_sizes", wanted_eps, self.ep_sizes)):
            outside = [v for v in values if v not in allowed]
            if outside:
                raise ConfigError(f"params.{name}: {outside} are not in the matrix ({allowed})")
        jobs = []
        for profile in wanted_profiles:
            for ep in wanted_eps:
                for backend in wanted_backends:
                    matching = [o for o in self.overrides if o.matches(backend, profile)]
                    env = dict(self.env)
                    extra = list(self.worker_args)
                    timeout = self.timeout_s
                    for override in matching:
                        env.update(override.env)
                        extra += override.extra_args
                        timeout = override.timeout_s or timeout
                    if chosen is not None:
                        env.update(chosen.env)
                        extra += chosen.worker_args
                    jobs.append(Job(backend=backend, profile=profile, ep_size=ep,
                                    queue=self.queues[len(jobs) % len(self.queues)],
                                    timeout_s=timeout, env=env, extra_args=extra, build=chosen))
        return jobs


class Job(_Strict):
    backend: str
    profile: str
    ep_size: PositiveInt
    queue: str
    timeout_s: PositiveInt
    env: dict[str, str] = {}
    extra_args: list[str] = []
    # The catalog build this job runs (its env and worker args are already in env and extra_args).
    build: Build | None = None

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.profile}-ep{self.ep_size}"


def _format(error: ValidationError, source: str) -> str:
    lines = []
    for item in error.errors():
        where = "matrix"
        for part in item["loc"]:
            where += f"[{part}]" if isinstance(part, int) else f".{part}"
        lines.append(f"{where}: {item['msg']}")
    return f"invalid matrix {source}:\n  " + "\n  ".join(lines)


def parse_matrix(data: dict[str, Any], source: str = "(data)") -> Matrix:
    try:
        return Matrix.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format(exc, source)) from None


def matrix_path(name: str | None = None) -> Path:
    """A path, or the name of a shipped matrix (`cpu`, `h100-8gpu`, `gb200-nvl72`)."""
    name = name or os.environ.get("MOECOMM_MATRIX") or "cpu"
    path = Path(name)
    if path.suffix == ".toml" or os.sep in name:
        return path
    return SHIPPED / f"{name}.toml"


def load_matrix(name: str | None = None) -> Matrix:
    """Read and validate a matrix file; raises ConfigError naming the bad field."""
    path = matrix_path(name)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no matrix file {path} (shipped: {', '.join(p.stem for p in SHIPPED.glob('*.toml'))})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"matrix {path} is not valid TOML: {exc}") from None
    return parse_matrix(data, str(path))
