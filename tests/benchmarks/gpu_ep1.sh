#!/usr/bin/env bash
# The single-GPU (EP 1) run of the reference backends behind docs/gpu-ep1.md.
# Usage: bash tests/benchmarks/gpu_ep1.sh OUTDIR   (from the repository root, on a machine with one GPU)
# Then:  python tests/benchmarks/summarize_gpu.py OUTDIR/*.json
set -euo pipefail
out=${1:?usage: gpu_ep1.sh OUTDIR}
mkdir -p "$out"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
run() {  # run NAME ARGS...
  local name=$1; shift
  timeout 500 mpirun -np 1 python3 -m moecomm_tasks.bench --ep_size 1 -b 128 -e 4096 -f 2 \
    --iter_stats --kernel_breakdown --copy_baseline --output_file "$out/$name.json" "$@" \
    >>"$out/stdout.log" 2>>"$out/stderr.log"
}
run deepseek_v3 --profile deepseek_v3
run gpt_oss --profile gpt_oss
run deepseek_v3_graph --profile deepseek_v3 --cuda_graph
run gpt_oss_graph --profile gpt_oss --cuda_graph
