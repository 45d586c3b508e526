#!/usr/bin/env bash
# The multi-GPU run of the reference backends (issue 16), on one host with N GPUs.
# Usage: bash tests/benchmarks/gpu_multi.sh OUT   (from the repository root)
#
# EP 2 (with >= 2 GPUs), then 1, then 4 (when there are >= 4 GPUs); profiles deepseek_v3, gpt_oss, deepseek_v4_pro,
# kimi_k3; 128 to 4,096 tokens (x2); every backend (TensorRT-LLM's are skipped where it is not
# installed); --iter_stats --copy_baseline --a2a_baseline, and --kernel_breakdown for deepseek_v3 at
# EP 2 (where the targets are: the kernels say why one is missed); then, per EP size, NCCL's
# all_gather of TORCH_ALLGATHER's bytes.
# NVLink multicast stays off (NCCL_NVLS_ENABLE=0, NVSHMEM_DISABLE_NVLS=1,
# TORCH_SYMM_MEM_DISABLE_MULTICAST=1); every rank sees every GPU (no per-rank CUDA_VISIBLE_DEVICES).
# Environment: ITERS (timed iterations, default 100), WARMUP (default 10), DEADLINE_S (default 400:
# a step that would start later is skipped, with a line in run.log), STEP_TIMEOUT_S (default 150),
# PROFILES and SWEEP (default "-b 128 -e 4096 -f 2") to run less, e.g. on CPUs to try the script.
#
# Prints the step log and the targets at the end. Writes under OUT, nothing else (at most 8 files):
#   env.txt         GPU model, driver, `nvidia-smi topo -m`, versions, the exact commands run
#   run.log         each step's command, stderr and elapsed time
#   stdout.txt      rank 0's stdout of every worker run: `moecomm load OUT/stdout.txt` loads it
#   ep2.json, ep1.json, ep4.json   {"ep_size", "runs": {profile: the worker's --output_file report}}
#   allgather.json  [{"ep_size", "results": [...]}] from tests/benchmarks/nccl_allgather.py
#   summary.md      python3 tests/benchmarks/summarize_multi.py OUT: the targets, then every point
set -uo pipefail
out=${1:?usage: gpu_multi.sh OUT}
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
iters=${ITERS:-100} warmup=${WARMUP:-10} deadline=${DEADLINE_S:-400} step_timeout=${STEP_TIMEOUT_S:-150}
profiles=${PROFILES:-deepseek_v3 gpt_oss deepseek_v4_pro kimi_k3} sweep=${SWEEP:--b 128 -e 4096 -f 2}
start=$SECONDS

export NCCL_NVLS_ENABLE=0 NVSHMEM_DISABLE_NVLS=1 TORCH_SYMM_MEM_DISABLE_MULTICAST=1
if [ "$(id -u)" = 0 ]; then export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1; fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python=${PYTHON:-python3}

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
eps="1"
if [ "${gpus:-0}" -ge 2 ]; then eps="2 1"; fi
if [ "${gpus:-0}" -ge 4 ]; then eps="2 1 4"; fi
mpi_flags=""
if mpirun --version 2>&1 | grep -qi "open mpi\|openrte\|prte"; then mpi_flags="--oversubscribe --bind-to none"; fi

{
  echo "# gpu_multi.sh run, $(date -u +%Y-%m-%dT%H:%M:%SZ), host $(hostname)"
  echo "## nvidia-smi -L"; nvidia-smi -L
  echo "## nvidia-smi --query-gpu"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  echo "## nvidia-smi topo -m"; nvidia-smi topo -m
  echo "## versions"
  "$python" - <<'EOF'
import torch
print("python", __import__("sys").version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "nccl", ".".join(map(str, torch.cuda.nccl.version())))
try:
    import torch.distributed._symmetric_memory as symm_mem
    print("nvshmem available:", symm_mem.is_nvshmem_available())
except Exception as exc:  # report, do not fail the run
    print("symmetric memory:", type(exc).__name__, exc)
EOF
  mpirun --version 2>&1 | head -1
  echo "## environment"; env | grep -E '^(NCCL_|NVSHMEM_|TORCH_SYMM|CUDA_VISIBLE)' | sort
  echo "## git"; git rev-parse HEAD 2>/dev/null; git status --short 2>/dev/null | head -20
  echo "## commands (ITERS=$iters WARMUP=$warmup, mpirun flags: ${mpi_flags:-none})"
} >"$out/env.txt" 2>&1

log() { echo "[gpu_multi $(( SECONDS - start ))s] $*" >>"$out/run.log"; }

step() {  # step NAME CMD...: runs CMD under a timeout unless the deadline has passed
  local name=$1; shift
  if [ $(( SECONDS - start )) -ge "$deadline" ]; then log "SKIPPED $name: past DEADLINE_S=$deadline"; return; fi
  echo "$*" >>"$out/env.txt"
  log "start $name: $*"
  local t0=$SECONDS
  timeout "$step_timeout" "$@" >>"$work/stdout.$name" 2>>"$out/run.log"
  log "end $name: status $? after $(( SECONDS - t0 ))s"
}

if "$python" -m moecomm_tasks.bench --help 2>/dev/null | grep -q deepseek_v4_pro; then
  profile_args() { echo "--profile $1"; }
else
  log "NOTE: this worker has no deepseek_v4_pro/kimi_k3 profiles: their shapes are given with --hidden_size etc.;" \
      "stdout.txt labels those runs deepseek_v3 (do not load them from stdout.txt)"
  profile_args() {
    case $1 in
      deepseek_v4_pro) echo "--profile deepseek_v3 --hidden_size 7168 --top_k 6 --num_experts 384 --quant W4A8_MXFP4_MXFP8" ;;
      kimi_k3) echo "--profile deepseek_v3 --hidden_size 3584 --top_k 16 --num_experts 896 --quant W4A8_MXFP4_MXFP8" ;;
      *) echo "--profile $1" ;;
    esac
  }
fi

for ep in $eps; do
  for profile in $profiles; do
    extra=""
    if [ "$profile" = deepseek_v3 ] && [ "$ep" = 2 ]; then extra="--kernel_breakdown"; fi
    # shellcheck disable=SC2046
    step "ep$ep-$profile" mpirun -np "$ep" $mpi_flags "$python" -m moecomm_tasks.bench --ep_size "$ep" \
      $(profile_args "$profile") $sweep --iters "$iters" --warmup "$warmup" --iter_stats \
      --copy_baseline --a2a_baseline $extra --output_file "$work/ep$ep-$profile.json"
    cat "$work/stdout.ep$ep-$profile" >>"$out/stdout.txt" 2>/dev/null
  done
  # shellcheck disable=SC2086
  step "ep$ep-allgather" mpirun -np "$ep" $mpi_flags "$python" tests/benchmarks/nccl_allgather.py \
    $sweep --iters "$iters" --output "$work/allgather-ep$ep.json"
  cat "$work/stdout.ep$ep-allgather" >>"$out/run.log" 2>/dev/null
done

"$python" - "$work" "$out" <<'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
eps = sorted({int(p.name.split("-")[0][2:]) for p in work.glob("ep*-*.json")})
for ep in eps:
    runs = {p.stem.split("-", 1)[1]: json.loads(p.read_text()) for p in sorted(work.glob(f"ep{ep}-*.json"))}
    (out / f"ep{ep}.json").write_text(json.dumps({"ep_size": ep, "runs": runs}, indent=1))
gathers = [json.loads(p.read_text()) for p in sorted(work.glob("allgather-ep*.json"))]
(out / "allgather.json").write_text(json.dumps(gathers, indent=1))
EOF
"$python" tests/benchmarks/summarize_multi.py "$out" >"$out/summary.md" 2>>"$out/run.log"
log "done in $(( SECONDS - start ))s"
grep -E "^\[gpu_multi" "$out/run.log" | tail -n 30
grep -hE "Skipping TORCH|ERROR|Traceback" "$out/stdout.txt" "$out/run.log" 2>/dev/null | sort | uniq -c | head -n 20
head -n 12 "$out/summary.md"
