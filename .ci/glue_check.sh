#!/usr/bin/env bash
# Type-checks the torch <-> CUDA glue (csrc/cuda_glue/*.cpp) without a GPU or a CUDA torch:
# g++ -c -O0 -DFK_WITH_CUDA against torch's headers (a CPU wheel ships c10/cuda and ATen/cuda) and
# the CUDA runtime headers, into build/cuda-objects/glue/ for .ci/link_check.sh. Skips cleanly when
# either is missing. C++17: what torch 2.11's CUDAExtension passes (the GPU machine's torch; the CPU build here
# gets torch 2.13's C++20).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CUDA_INC=${CUDA_INC:-${CUDA_HOME:-/usr/local/cuda}/include}
shopt -s nullglob
files=(csrc/cuda_glue/*.cpp)
if [ ${#files[@]} -eq 0 ]; then
  echo "glue-check: no csrc/cuda_glue/*.cpp"
  exit 0
fi
if [ ! -f "$CUDA_INC/cuda_runtime_api.h" ]; then
  echo "glue-check: SKIPPED (no $CUDA_INC/cuda_runtime_api.h; set CUDA_INC)"
  exit 0
fi
mapfile -t torch_inc < <("$PY" -c 'from torch.utils.cpp_extension import include_paths; print("\n".join(include_paths()))')
if [ ! -f "${torch_inc[0]}/c10/cuda/CUDAStream.h" ]; then
  echo "glue-check: SKIPPED (this torch ships no c10/cuda headers)"
  exit 0
fi
# CPU wheels ship c10/cuda/*.h but not the header CMake generates for a CUDA build; its content
# is this one line in every CUDA build of torch. Kept in build/cuda-objects/include for .ci/load_check.sh.
stub=build/cuda-objects/include
rm -rf "$stub"
mkdir -p "$stub"
if [ ! -f "${torch_inc[0]}/c10/cuda/impl/cuda_cmake_macros.h" ]; then
  mkdir -p "$stub/c10/cuda/impl"
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' >"$stub/c10/cuda/impl/cuda_cmake_macros.h"
fi
incs=(-Icsrc -I"$CUDA_INC" -I"$stub")
for d in "${torch_inc[@]}"; do incs+=(-isystem "$d"); done
torch_version=$("$PY" -c 'import torch; print(torch.__version__)')
objects=build/cuda-objects/glue
rm -rf "$objects"
mkdir -p "$objects"
pids=()
for f in "${files[@]}"; do
  g++ -c -O0 -fPIC -o "$objects/$(basename "$f" .cpp).o" -std=c++17 -DFK_WITH_CUDA \
    -DFK_TORCH_VERSION="\"$torch_version\"" -Wall -Wextra -Werror -Wno-unused-parameter "${incs[@]}" "$f" &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then echo "glue-check: ${files[$i]} OK"; else echo "glue-check: ${files[$i]} FAILED"; status=1; fi
done
exit $status
