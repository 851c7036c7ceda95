#!/usr/bin/env bash
# CI: the CPU stand-in for `compute-sanitizer --tool racecheck`. The CUDA emulation (tools/cuda_emu) runs a
# block's threads as real threads that meet only where the kernels synchronize (__syncthreads, the warp
# shuffles), so ThreadSanitizer reports a missing barrier around shared memory as a data race. First proves
# that it does (tools/cuda_emu/race_canary.cpp: the clean block sums must pass, the planted race must be
# reported), then runs the emulated kernel tests with the emulation built under TSan.
# Out of its reach: races between blocks (the emulation runs blocks one after another) and the GPU's own
# memory model; `make gpu-check` runs racecheck on a GPU. Like any TSan run it can miss a race whose earlier
# access was pushed out of a memory cell's short history by many others (the canary is built so it cannot).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
missing=$("$PY" -c 'import runpy; print(runpy.run_path("tools/cuda_emu/build.py")["missing"]() or "")')
TSAN_LIB=$(gcc -print-file-name=libtsan.so)
if [ -n "$missing" ] || [ ! -f "$TSAN_LIB" ]; then
  echo "racecheck-emu: SKIPPED (${missing:-no libtsan.so})"
  exit 0
fi
CUDA_INC=${CUDA_HOME:-/usr/local/cuda}/include
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export TSAN_OPTIONS="halt_on_error=1:exitcode=66:report_signal_unsafe=0"
# torch on one thread: its OpenMP workers synchronize inside the uninstrumented libgomp, which TSan cannot see
# (it reported a race in torch's TensorIterator between two of them).
export OMP_NUM_THREADS=1

g++ -std=c++20 -O1 -g -fsanitize=thread -Wall -Werror -Wno-unknown-pragmas -Itools/cuda_emu -Icsrc -I"$CUDA_INC" \
  tools/cuda_emu/race_canary.cpp -o "$out/race_canary" -lpthread
"$out/race_canary" clean
if "$out/race_canary" racy >"$out/racy.log" 2>&1 || ! grep -q "ThreadSanitizer: data race" "$out/racy.log"; then
  cat "$out/racy.log" >&2
  echo "racecheck-emu: FAIL: ThreadSanitizer did not report the planted race (tools/cuda_emu/race_canary.cpp)" >&2
  exit 1
fi
echo "racecheck-emu: the planted race is reported"

# The kernels whose threads share data: the reparam forward (warp and block row sums) and the Adam kernels
# (the row search and constants in shared memory, and the step counters that several rows may share); the
# per-dim KL, backward and noise kernels share nothing.
# -s: a TSan report stops the process, and pytest's output capture would swallow it.
CUDA_EMU_CFLAGS="-fsanitize=thread -g" LD_PRELOAD="$TSAN_LIB" "$PY" -m pytest -q -x -s -p no:cacheprovider \
  tests/test_cuda_emulated.py \
  -k "${RACECHECK_K:-reparam_matches_cpu_op or adam_matches_cpu_op or table_and_param or found_inf or formats_match \
or step_counter_shared}"
echo "racecheck-emu: OK"
