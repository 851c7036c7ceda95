#!/usr/bin/env bash
# `make gpu-check`: everything that needs a GPU, in one go that fits a 10-minute call on an H100
# (build included). Uses the machine's own torch (PYTHON, default python3); never installs one.
#   1. build with the CUDA kernels (FUSED_KINGMA_CUDA=1, this GPU's arch only unless
#      TORCH_CUDA_ARCH_LIST is set, MAX_JOBS=16)
#   2. pytest -m cuda
#   3. the GPU-only benchmarks (benchmarks/run.py --device cuda --only bench_gpu -> benchmarks/results/<gpu>.json)
#   4. compute-sanitizer memcheck over the CUDA tests, racecheck over the reduction tests (a SKIP where
#      compute-sanitizer refuses the device)
#   5. the CPU suite's benchmarks on the GPU (bench_adam, then bench_reparam), into the same file
#   6. the CPU tests (CI runs them too: last, in whatever time is left)
# One log, gpu-check.log, plus summary.txt and the results JSON go to $OUT when set (else
# build/gpu-check/). Each step runs under its own limit and within GPU_CHECK_BUDGET seconds in
# all (default 570); a failed step does not stop the next; exit 1 if any failed.
# GPU_CHECK_ONLY="pytest-cuda memcheck" runs only the named steps (after the build), for a second call
# when the first ran out of budget.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${OUT:-build/gpu-check}
BUDGET=${GPU_CHECK_BUDGET:-570}
mkdir -p "$LOG"
ALL="$LOG/gpu-check.log"
: >"$ALL"
export PYTHONUNBUFFERED=1
export MAX_JOBS=${GPU_MAX_JOBS:-16}
export FUSED_KINGMA_CUDA=1
# torch finds the toolkit through CUDA_HOME, else through `which nvcc`/../..: an nvcc wrapper or link in
# /usr/local/bin gives /usr/local, which has no cuda_runtime.h (seen on the CI host). Without CUDA_HOME, take
# the first of nvcc's resolved folder and /usr/local/cuda that holds the headers.
if [ -z "${CUDA_HOME:-}" ]; then
  nvcc_top=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /none/bin/nvcc)")")")
  for d in "$nvcc_top" /usr/local/cuda; do
    if [ -f "$d/include/cuda_runtime.h" ]; then
      export CUDA_HOME=$d
      break
    fi
  done
fi
declare -a summary=()
failed=0

step() {  # step <name> <seconds> <command...>: runs it within the budget left, records the outcome
  local name=$1 limit=$2
  shift 2
  if [ -n "${GPU_CHECK_ONLY:-}" ] && [ "$name" != build ] && [[ " $GPU_CHECK_ONLY " != *" $name "* ]]; then
    summary+=("SKIP  $name (not in GPU_CHECK_ONLY)")
    return 0
  fi
  local left=$((BUDGET - SECONDS - 5))
  if [ "$left" -lt 20 ]; then
    summary+=("SKIP  $name (time budget spent)")
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$SECONDS
  echo "=== $name (limit ${limit}s): $*" | tee -a "$ALL"
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$ALL"
  local rc=${PIPESTATUS[0]}
  local took=$((SECONDS - t0))
  if [ "$rc" -eq 0 ]; then summary+=("PASS  $name (${took}s)"); else summary+=("FAIL  $name rc=$rc (${took}s)"); failed=1; fi
  return "$rc"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv || true
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(), "cap", torch.cuda.get_device_capability())'
  command -v nvcc && nvcc --version | tail -2
  command -v compute-sanitizer || echo "compute-sanitizer: not found"
} 2>&1 | tee -a "$ALL"

if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo "8.0;9.0")
  export TORCH_CUDA_ARCH_LIST
fi

# The longest CPU files (adam_cpu.cpp, reparam_cpu.cpp, the ISA copies) take 35-40 s each at -O3 on a 2-core
# Zen 4, two at once; the CUDA files and the CUDA torch's heavier headers come on top
# (tools/torch_compat_check.sh measures the build against this torch). The limit leaves room for a slower
# machine: a build that ran out of time would waste the whole GPU session.
if ! step build 330 "$PY" setup.py -q build_ext --inplace; then
  printf '%s\n' "${summary[@]}" | tee "$LOG/summary.txt"
  exit 1
fi
step built-with-cuda 60 "$PY" -c 'import fused_kingma as f; assert f._C.built_with_cuda, "built without CUDA"; print("built_with_cuda", f._C.built_with_cuda)'
step pytest-cuda 150 "$PY" -m pytest -q -m cuda tests/
# The issue's GPU-only configurations first (8 x 268M Adam, reparam 262144 x 512 against eager and
# torch.compile); the CPU suite's configurations on the GPU come after the sanitizers (bench_reparam compiles
# 24 torch.compile variants). run.py writes the results file after each bench module.
step bench-gpu 180 "$PY" benchmarks/run.py --device cuda --only bench_gpu

# compute-sanitizer refuses some machines' devices (seen on gVisor: "Device not supported", then error 999):
# a one-line torch program under it tells, so a refusal is a SKIP with its reason, not two FAILs.
sanitizer_refusal() {
  local probe
  probe=$(timeout 120 compute-sanitizer --tool memcheck --error-exitcode 99 "$PY" -c \
    'import torch; x = torch.ones(4, device="cuda"); x.add_(1); torch.cuda.synchronize(); print("probe ok")' 2>&1)
  if ! grep -q "probe ok" <<<"$probe" || grep -qi "not supported" <<<"$probe"; then
    { grep -i -m2 'error\|not supported' <<<"$probe" || head -3 <<<"$probe"; } | tr '\n' ' '
  fi
}

refusal=""
command -v compute-sanitizer >/dev/null && refusal=$(sanitizer_refusal)
if [ -n "$refusal" ]; then
  echo "compute-sanitizer cannot run here: $refusal" | tee -a "$ALL"
  summary+=("SKIP  memcheck, racecheck (compute-sanitizer cannot run on this machine: $refusal)")
elif command -v compute-sanitizer >/dev/null; then
  # The small tests marked `sanitize` (the sanitizer slows kernels 10-100x); racecheck on the tests of
  # the per-row reductions (warp shuffles and the shared-memory block sum of rows >= 1024).
  step memcheck 180 compute-sanitizer --tool memcheck --error-exitcode 99 --target-processes all \
    "$PY" -m pytest -q -x -m "cuda and sanitize" tests/test_cuda.py
  step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 99 --target-processes all \
    "$PY" -m pytest -q -x -m cuda -k "reduction" tests/test_cuda.py
else
  summary+=("SKIP  compute-sanitizer (not installed)")
fi
step bench-adam 120 "$PY" benchmarks/run.py --device cuda --only bench_adam
step bench-reparam 240 "$PY" benchmarks/run.py --device cuda --only bench_reparam
find benchmarks/results -name "*.json" -newer "$ALL" -exec cp {} "$LOG/" \; 2>/dev/null
step pytest-cpu 240 "$PY" -m pytest -q -x -m "not cuda and not slow" tests/

echo
echo "=== gpu-check summary"
summary+=("README tables: copy the results JSON beside this log into benchmarks/results/ on the machine you commit from, then run: python benchmarks/run.py --tables-from benchmarks/results/<gpu>.json")
printf '%s\n' "${summary[@]}" | tee "$LOG/summary.txt"
exit $failed
