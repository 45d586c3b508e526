#!/usr/bin/env bash
# Probe: TORCH_ALLTOALL at EP 1, replayed from CUDA graphs, under NCCL environment variants;
# events vs profiler window. Usage: bash tests/benchmarks/nccl_env_probe.sh OUT NAME:VAR=VALUE[,VAR=VALUE]... (GPU)
set -uo pipefail
out=${1:?usage: nccl_env_probe.sh OUTDIR NAME:VAR=VALUE[,VAR=VALUE]...}; shift; mkdir -p "$out/probe"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 PYTHONPATH=$PWD
python3 -c "import torch; print(torch.__version__, torch.cuda.nccl.version())" > "$out/probe/versions.txt" 2>&1
probe() { local name=$1; shift
  env "$@" timeout 200 mpirun -np 1 python3 -m moecomm_tasks.bench --ep_size 1 \
    --backend TORCH_ALLTOALL --profile gpt_oss -b 128 -e 1024 -f 2 --iter_stats --kernel_breakdown --cuda_graph \
    --output_file "$out/probe/$name.json" >>"$out/probe/stdout.log" 2>>"$out/probe/stderr.log"
  echo "$name rc=$?" >> "$out/probe/rcs.txt"
}
for spec in "$@"; do  # NAME=VAR=VALUE,VAR=VALUE
  name=${spec%%:*}; vars=${spec#*:}
  probe "$name" ${vars//,/ }
done
python3 tests/benchmarks/summarize_gpu.py "$out"/probe/*.json > "$out/probe/summary.md" 2>&1
cd "$out" && tar czf results.tgz probe && rm -rf probe
