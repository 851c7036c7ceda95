#!/usr/bin/env bash
# CI: build the CPU extension with AddressSanitizer + UBSan into build/asan-pkg (the in-place
# build is untouched) and run the CPU tests against it; any sanitizer report fails the job. A self-check runs
# first and fails the job if these flags do NOT catch deliberate bugs (.ci/sanitizer_selfcheck.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export MAX_JOBS=${MAX_JOBS:-2}
# First prove the sanitizers catch a known heap overflow and signed overflow with these very flags (seconds).
PYTHON="$PY" .ci/sanitizer_selfcheck.sh
PKG=build/asan-pkg
rm -rf "$PKG" && mkdir -p "$PKG"
FUSED_KINGMA_SANITIZE=1 "$PY" setup.py -q build_ext --build-temp build/asan-tmp --build-lib "$PKG"
cp fused_kingma/*.py "$PKG/fused_kingma/"
SO=$(ls "$PKG"/fused_kingma/_C*.so)
ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# The CPU emulation of the CUDA kernels (tests/test_cuda_emulated.py) is built with the sanitizers too: out of
# bounds accesses of the kernels' index math then fail here, as compute-sanitizer memcheck would on a GPU.
# Same flags as the extension (setup.py's SANITIZE_CXX_FLAGS).
CUDA_EMU_CFLAGS="$("$PY" .ci/setup_flags.py SANITIZE_CXX_FLAGS)"
export CUDA_EMU_CFLAGS
# Tests import the package from $PKG, never the in-place one (checked below).
LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" PYTHONPATH="$PWD/$PKG" "$PY" -P -c \
  "import fused_kingma._ops, fused_kingma, sys; assert fused_kingma.__file__.startswith('$PWD/$PKG'), fused_kingma.__file__; print('asan build:', fused_kingma.__file__)"
LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" PYTHONPATH="$PWD/$PKG" "$PY" -P -m pytest -q -x -p no:cacheprovider \
  --rootdir=. ${SANITIZE_TESTS:-tests/test_adam.py tests/test_adam_extras.py tests/test_reparam.py tests/test_philox.py \
  tests/test_cuda_emulated.py tests/test_bad_input.py tests/test_properties.py tests/test_reliability.py \
  tests/test_output_cache.py} \
  -k "${SANITIZE_K:-not slow}"
echo "sanitize: OK ($SO)"
