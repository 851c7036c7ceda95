#!/usr/bin/env bash
# Loads a CUDA build of fused_kingma into this machine's CPU torch and runs tests against it: what the GPU
# machine's `import fused_kingma` does first. The extension is linked as setup.py links a CUDA build: the CPU
# objects of `make build` (build.ninja's list; csrc/ops.cpp compiled again with -DFK_WITH_CUDA), the glue and
# sm_90 kernel objects (.ci/glue_check.sh, .ci/nvcc_check.sh), torch, libcudart, and a libc10_cuda.so of
# stand-ins (load_check/c10_cuda_stub.cpp: a CPU torch has none; nothing here reaches them).
# That runs the CUDA build's static initialisation (the glue's op schemas are parsed, its CUDA kernels
# registered beside the CPU ones, the fatbins registered with the CUDA runtime) and the Python package's
# CUDA paths over fake CUDA tensors (tests/test_fake_cuda.py: capturable steps make no host read, the GPU lr
# tensor reaches adam_step_lr_tensor_, the noise key is drawn on the device), and checks that CPU results are
# unchanged in such a build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CUDA_ROOT=${CUDA_HOME:-/usr/local/cuda}
objects=build/cuda-objects
shopt -s nullglob
glue=("$objects"/glue/*.o)
kernels=("$objects"/sm_90/*.cu.o)
ninja_files=(build/temp.*/build.ninja)
if [ ${#glue[@]} -eq 0 ] || [ ${#kernels[@]} -eq 0 ] || [ ! -f "$CUDA_ROOT/lib64/libcudart.so" ]; then
  echo "load-check: SKIPPED (needs $objects from .ci/nvcc_check.sh and .ci/glue_check.sh, and $CUDA_ROOT/lib64/libcudart.so)"
  exit 0
fi
if [ ${#ninja_files[@]} -eq 0 ]; then
  echo "load-check: FAILED (no build/temp.*/build.ninja: run make build first)" >&2
  exit 1
fi
ninja=$(ls -t "${ninja_files[@]}" | head -1)  # the latest build's (one per Python version)
work=build/load-check
rm -rf "$work"
mkdir -p "$work/stub" "$work/pkg/fused_kingma"

# The compile flags of `make build` (build.ninja keeps their shell quoting), with the CUDA build's define.
eval "ninja_flags=($(sed -n 's/^cflags = //p' "$ninja") $(sed -n 's/^post_cflags = //p' "$ninja"))"
flags=(-DFK_WITH_CUDA)
for f in "${ninja_flags[@]}"; do [ "$f" = -c ] || flags+=("$f"); done
# $objects/include: the header CPU wheels lack (cuda_cmake_macros.h), left there by .ci/glue_check.sh.
cuda_inc=(-I"$CUDA_ROOT/include" -I"$objects/include")
torch_inc=$("$PY" -c 'from torch.utils.cpp_extension import include_paths; print(include_paths()[0])')
torch_lib=$("$PY" -c 'from torch.utils.cpp_extension import library_paths; print(library_paths()[0])')
g++ "${flags[@]}" -O0 -g0 "${cuda_inc[@]}" -c csrc/ops.cpp -o "$work/ops.o"  # registrations: no need to optimise
g++ -shared -fPIC -O0 -std=c++20 -Wall -Wextra -Werror "${cuda_inc[@]}" -isystem "$torch_inc" \
  .ci/load_check/c10_cuda_stub.cpp -o "$work/stub/libc10_cuda.so" -L"$torch_lib" -lc10

mapfile -t cpu_objects < <(sed -n 's/^build \(.*\.o\): compile .*/\1/p' "$ninja" | grep -v '/csrc/ops\.o$')
suffix=$("$PY" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
g++ -shared -fopenmp -o "$work/pkg/fused_kingma/_C$suffix" "${cpu_objects[@]}" "$work/ops.o" "${glue[@]}" \
  "${kernels[@]}" -L"$torch_lib" -lc10 -ltorch -ltorch_cpu -ltorch_python -L"$work/stub" -lc10_cuda \
  -L"$CUDA_ROOT/lib64" -lcudart
cp fused_kingma/*.py "$work/pkg/fused_kingma/"

export LD_LIBRARY_PATH="$PWD/$work/stub:$CUDA_ROOT/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONPATH="$PWD/$work/pkg"
"$PY" -P -c 'import sys, fused_kingma; assert fused_kingma.__file__.startswith(sys.argv[1]), fused_kingma.__file__
assert fused_kingma._C.built_with_cuda, "the load check extension says it was built without CUDA"
print("load-check: CUDA build loaded from", fused_kingma.__file__)' "$PWD/$work/pkg"
# tests/test_build.py checks that every op has its CUDA kernels registered.
"$PY" -P -m pytest -q -x -p no:cacheprovider --rootdir=. \
  ${LOAD_CHECK_TESTS:-tests/test_fake_cuda.py tests/test_build.py tests/test_adam.py tests/test_capturable.py \
  tests/test_reparam.py} \
  -k "${LOAD_CHECK_K:-not slow}"
echo "load-check: OK"
