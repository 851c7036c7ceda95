#!/usr/bin/env bash
# Compile-checks every csrc/cuda/*.cu for sm_80 and sm_90 with warnings as errors (host and device).
# These files include only csrc/math/*.h and CUDA headers, so a partial toolkit without torch suffices.
# Each kernel's registers, local memory and generic loads/stores are checked by .ci/kernel_resources.py.
# The -D__CUDA_NO_* flags are the ones torch's CUDAExtension passes (no implicit half/bf16 conversions).
# The objects stay in build/cuda-objects/sm_XX/ for .ci/link_check.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if [ ! -x "$NVCC" ]; then
  echo "nvcc-check: SKIPPED (no nvcc found; set NVCC=/path/to/nvcc)"
  exit 0
fi
shopt -s nullglob
files=(csrc/cuda/*.cu)
if [ ${#files[@]} -eq 0 ]; then
  echo "nvcc-check: no .cu files"
  exit 0
fi
out=build/cuda-objects
rm -rf "$out"

# check_arch <arch>: every .cu for sm_<arch>; 1 if one failed to compile or broke a resource rule.
check_arch() {
  local arch=$1 failed=0
  for f in "${files[@]}"; do
    name=$(basename "$f" .cu)
    keep="$out/sm_$arch/$name"
    mkdir -p "$keep"
    # --keep leaves the PTX and --resource-usage prints ptxas's per-kernel report, both for
    # .ci/kernel_resources.py (local memory, spills, generic loads and stores).
    if ! "$NVCC" -std=c++17 -O3 ${NVCC_EXTRA_FLAGS:-} -Icsrc -c "$f" -o "$out/sm_$arch/$name.cu.o" \
      -gencode "arch=compute_$arch,code=sm_$arch" --resource-usage --keep --keep-dir "$keep" \
      -Werror all-warnings -Xcompiler -Wall,-Werror,-fPIC --expt-relaxed-constexpr -DFK_WITH_CUDA \
      -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
      -D__CUDA_NO_HALF2_OPERATORS__ >"$keep/ptxas.txt" 2>&1; then
      grep -v '^ptxas info\|^    [0-9]* bytes stack frame' "$keep/ptxas.txt" || true
      echo "nvcc-check: $f sm_$arch FAILED to compile"
      return 1
    fi
    echo "nvcc-check: $f sm_$arch OK"
    python3 .ci/kernel_resources.py "sm_$arch" "$keep/ptxas.txt" "$keep/$name.ptx" || failed=1
  done
  return $failed
}

# The two archs at once (CI has two cores), each into its own log, printed in order.
mkdir -p "$out"
check_arch 80 >"$out/sm_80.log" 2>&1 &
sm80=$!
check_arch 90 >"$out/sm_90.log" 2>&1 &
sm90=$!
failed=0
wait $sm80 || failed=1
wait $sm90 || failed=1
cat "$out/sm_80.log" "$out/sm_90.log"
exit $failed
