#!/usr/bin/env bash
# Timing methods side by side on GPUs, behind docs/gpu-timing.md: for EP 1 (and EP 2 when the
# host has two GPUs), profiles deepseek_v3 and gpt_oss, 128 to 4096 tokens, both reference
# backends, three runs each:
#   graph  upstream's default: warm-up and timed iterations replayed from one CUDA graph, CUPTI
#          kernel spans (CUDA events of the same iterations beside them);
#   eager  the same launched eagerly (--no_cuda_graph);
#   spin   ours: CUDA events, each phase behind a spin kernel and replayed from a graph of its own
#          (--timing_method cuda_events_spin; kernel spans of the same iterations beside them);
#   spineager  ours with eager launches (--no_cuda_graph) behind a ~2 ms spin.
# Usage (repository root, on the GPU machine): bash tests/benchmarks/gpu_timing.sh OUTDIR [quick]
# Then: python3 tests/benchmarks/summarize_timing.py OUTDIR/*.json
# Needs the `cupti-python` package (the `gpu` extra); NVLink multicast stays off.
set -uo pipefail
out=${1:?usage: gpu_timing.sh OUTDIR [quick]}
quick=${2:-}
mkdir -p "$out"
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
gpus=$(nvidia-smi -L | wc -l)
sweep=(-b 128 -e 4096 -f 2)
[ -n "$quick" ] && sweep=(-b 128 -e 4096 -f 32)
{ nvidia-smi; nvidia-smi topo -m; python3 -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.nccl.version())'; } >"$out/env.txt" 2>&1
run() {  # run NAME EP ARGS...
  local name=$1 ep=$2; shift 2
  echo "== $name" >>"$out/stdout.log"; echo "== $name" >>"$out/stderr.log"
  timeout 300 mpirun -np "$ep" --bind-to none python3 -m moecomm_tasks.bench --ep_size "$ep" "${sweep[@]}" \
    --iter_stats --kernel_breakdown --output_file "$out/$name.json" "$@" >>"$out/stdout.log" 2>>"$out/stderr.log" \
    || echo "$name: exit $?" >>"$out/stderr.log"
}
eps=(1); [ "$gpus" -ge 2 ] && eps+=(2)
profiles=(deepseek_v3 gpt_oss); [ -n "$quick" ] && profiles=(deepseek_v3)
for ep in "${eps[@]}"; do
  for profile in "${profiles[@]}"; do
    run "ep${ep}_${profile}_graph" "$ep" --profile "$profile" --copy_baseline
    run "ep${ep}_${profile}_eager" "$ep" --profile "$profile" --no_cuda_graph
    run "ep${ep}_${profile}_spin" "$ep" --profile "$profile" --timing_method cuda_events_spin
    run "ep${ep}_${profile}_spineager" "$ep" --profile "$profile" --timing_method cuda_events_spin --no_cuda_graph
  done
done
