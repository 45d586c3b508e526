"""The matrix file: validation with errors that name the field, and its expansion into jobs."""

from __future__ import annotations

import pytest

from moecomm_tasks.errors import ConfigError
from moecomm_tasks.matrix import SHIPPED, load_matrix, parse_matrix

BASE = {"backends": ["torch_alltoall", "TORCH_ALLGATHER"], "profiles": ["deepseek_v3", "gpt_oss"], "ep_sizes": [2, 4]}


def test_shipped_matrices_load():
    names = sorted(p.stem for p in SHIPPED.glob("*.toml"))
    assert names == ["cpu", "gb200-nvl72", "h100-8gpu"]
    assert len(load_matrix("cpu").jobs()) == 4
    assert load_matrix("gb200-nvl72").launcher.kind == "slurm"
    assert load_matrix("h100-8gpu").env["NCCL_NVLS_ENABLE"] == "0"
    # Today's upstream profiles where they fit the machine.
    assert "kimi_k3" in load_matrix("h100-8gpu").profiles and "deepseek_v4_pro" in load_matrix("gb200-nvl72").profiles


@pytest.mark.parametrize("change, message", [
    ({"backends": ["TORCH_ALLTOALL", "FOO"]}, "matrix.backends: Value error, ['FOO']: backends are"),
    ({"profiles": ["llama"]}, "matrix.profiles: Value error, ['llama']: profiles are"),
    ({"ep_sizes": [0]}, "matrix.ep_sizes[0]: Input should be greater than 0"),
    ({"ep_sizes": ["eight"]}, "matrix.ep_sizes[0]: Input should be a valid integer"),
    ({"env": {"PATH": "/tmp"}}, "matrix.env: Value error, 'PATH' is not an allowed variable"),
    ({"sweep": {"step": 64, "factor": 2}}, "matrix.sweep: Value error, step and factor: give one of them, not both"),
    ({"sweep": {"quant": "FP3"}}, "matrix.sweep: Value error, quant: 'FP3' is not one of"),
    ({"sweep": {"iters": -1}}, "matrix.sweep.iters: Input should be greater than 0"),
    ({"launcher": {"kind": "ssh"}}, "matrix.launcher.kind: Input should be 'local' or 'slurm'"),
    ({"launcher": {"kind": "slurm", "slurm": {"time_limit": "soon"}}}, "matrix.launcher.slurm.time_limit: Value error"),
    ({"launcher": {"kind": "slurm", "slurm": {"partition": "gpu; rm -rf /"}}}, "matrix.launcher.slurm.partition: Value error"),
    ({"queues": ["node 1"]}, "matrix.queues: Value error"),
    ({"schedule": "nightly"}, "matrix.schedule: Value error, 'nightly' is not a five-field cron expression"),
    ({"overrides": [{"backend": "NOPE"}]}, "matrix.overrides[0].backend: Value error"),
    ({"unknown_field": 1}, "matrix.unknown_field: Extra inputs are not permitted"),
    ({"benchmark": {"kind": "upstream"}}, "matrix.benchmark: Value error, script: required when kind = 'upstream'"),
    ({"benchmark": {"kind": "upstream", "script": "/x/bench_moe_comm.py"}},
     "Value error, backends: ['TORCH_ALLTOALL', 'TORCH_ALLGATHER'] exist only in our worker"),
    ({"benchmark": {"kind": "upstream", "script": "/x/bench_moe_comm.py"}, "backends": ["DEEPEP"],
      "sweep": {"timing_method": "cuda_events_spin"}}, "sweep.timing_method: only our worker has --timing_method"),
    ({"sweep": {"timing_method": "stopwatch"}}, "matrix.sweep.timing_method: Input should be"),
    ({"profiles": ["gpt_oss", "kimi_k3"], "ep_sizes": [2, 3]},
     "the number of experts must divide by the EP size: gpt_oss (128 experts) at EP 3, kimi_k3 (896 experts) at EP 3"),
])
def test_invalid_fields_are_named(change, message):
    with pytest.raises(ConfigError) as raised:
        parse_matrix({**BASE, **change}, "test.toml")
    assert "invalid matrix test.toml" in str(raised.value)
    assert message in str(raised.value)


def test_jobs_cover_the_matrix_and_honour_overrides_and_params():
    matrix = parse_matrix({**BASE, "queues": ["node-a", "node-b"], "timeout_s": 100, "env": {"NCCL_DEBUG": "WARN"},
                           "overrides": [{"backend": "TORCH_ALLGATHER", "profile": "gpt_oss", "timeout_s": 7,
                                          "extra_args": ["--iters", "5"], "env": {"NCCL_DEBUG": "INFO"}}]})
    jobs = matrix.jobs()
    assert len(jobs) == 8 and {j.queue for j in jobs} == {"node-a", "node-b"}
    special = [j for j in jobs if j.backend == "TORCH_ALLGATHER" and j.profile == "gpt_oss"]
    assert all(j.timeout_s == 7 and j.extra_args == ["--iters", "5"] and j.env == {"NCCL_DEBUG": "INFO"} for j in special)
    others = [j for j in jobs if j not in special]
    assert all(j.timeout_s == 100 and j.env == {"NCCL_DEBUG": "WARN"} for j in others)
    subset = matrix.jobs(backends=["torch_alltoall"], ep_sizes=[4])
    assert [(j.backend, j.profile, j.ep_size) for j in subset] == [("TORCH_ALLTOALL", "deepseek_v3", 4), ("TORCH_ALLTOALL", "gpt_oss", 4)]
    with pytest.raises(ConfigError, match=r"params.ep_sizes: \[8\] are not in the matrix"):
        matrix.jobs(ep_sizes=[8])


def test_upstream_knobs_become_the_worker_flags():
    sweep = parse_matrix({**BASE, "sweep": {"perfect_router": True, "cuda_graph": False, "pdl": True, "random_seed": 7,
                                            "low_precision_combine": True, "payload_in_workspace": False,
                                            "timing_method": "cuda_events_spin"}}).sweep
    args = sweep.args()
    for flag in ("--perfect_router", "--no_cuda_graph", "--pdl", "--use_low_precision_combine", "--no_payload_in_workspace"):
        assert flag in args
    assert args[args.index("--random_seed") + 1] == "7"
    assert args[args.index("--timing_method") + 1] == "cuda_events_spin"
    defaults = parse_matrix(BASE).sweep.args()
    assert not {"--perfect_router", "--no_cuda_graph", "--pdl", "--random_seed", "--timing_method"} & set(defaults)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no matrix file"):
        load_matrix(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("backends = [")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_matrix(str(bad))
