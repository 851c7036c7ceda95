#!/usr/bin/env bash
# Links the CUDA build's own code without a GPU or a CUDA torch. The glue objects (.ci/glue_check.sh) and the
# sm_90 kernel objects (.ci/nvcc_check.sh), both in build/cuda-objects/, go into one relocatable object
# (ld -r). Every symbol still undefined in it must then be defined by the CPU extension (the same csrc/*.cpp
# a CUDA build links; fused_kingma/_C*.so from `make test`), the libraries it loads (torch, c10, the C and
# C++ runtimes), or libcudart; only c10::cuda:: and at::cuda:: symbols are taken on trust, as libc10_cuda and
# libtorch_cuda ship only with a CUDA torch.
# Syntax checks cannot see a glue call to a kernel entry point whose definition is missing or has another
# signature: that would first show on the GPU machine, as an "undefined symbol" ImportError.
# Self-check first: the same link without reparam.cu's object must report fused_kingma::cuda::reparam_forward.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
CUDART=${CUDART:-${CUDA_HOME:-/usr/local/cuda}/lib64/libcudart.so}
objects=build/cuda-objects
shopt -s nullglob
glue=("$objects"/glue/*.o)
kernels=("$objects"/sm_90/*.cu.o)
extension=(fused_kingma/_C*.so)
if [ ${#glue[@]} -eq 0 ] || [ ${#kernels[@]} -eq 0 ]; then
  echo "link-check: SKIPPED (no objects in $objects: .ci/nvcc_check.sh and .ci/glue_check.sh skipped)"
  exit 0
fi
if [ ${#extension[@]} -ne 1 ]; then
  echo "link-check: FAILED (expected one fused_kingma/_C*.so, the CPU build: run make build)" >&2
  exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Symbols the rest of a CUDA build provides: the extension's, torch's libraries' (which the extension finds
# already loaded, so ldd does not), those of every other library the extension loads, and libcudart's.
torch_lib=$("$PY" -c 'from torch.utils.cpp_extension import library_paths; print(library_paths()[0])')
mapfile -t libraries < <(ldd "${extension[0]}" | awk '$3 ~ /^\// {print $3}')
libraries+=("${extension[0]}" "$torch_lib"/*.so*)
if [ -f "$CUDART" ]; then
  libraries+=("$CUDART")
else
  echo "link-check: no $CUDART; CUDA runtime symbols (cuda*, __cuda*) taken on trust"
fi
for lib in "${libraries[@]}"; do nm -D --defined-only "$lib" | awk '{print $NF}'; done | sed 's/@.*//' | sort -u \
  >"$work/defined.txt"

# unresolved <objects...>: the demangled symbols of the objects, linked together, that nothing above defines.
unresolved() {
  ld -r -o "$work/combined.o" "$@"
  nm -u "$work/combined.o" | awk '{print $NF}' | sort -u | comm -23 - "$work/defined.txt" | c++filt |
    grep -v -E '^(c10::cuda::|at::cuda::|_GLOBAL_OFFSET_TABLE_$|__dso_handle$|atexit$)' |
    { [ -f "$CUDART" ] && cat || grep -v -E '^(__)?cuda'; } || true
}

without_reparam=()
for o in "${kernels[@]}"; do [ "$(basename "$o")" = reparam.cu.o ] || without_reparam+=("$o"); done
if ! unresolved "${glue[@]}" "${without_reparam[@]}" | grep -q '^fused_kingma::cuda::reparam_forward('; then
  echo "link-check: FAILED self-check (leaving reparam.cu out did not leave reparam_forward undefined)" >&2
  exit 1
fi

missing=$(unresolved "${glue[@]}" "${kernels[@]}")
if [ -n "$missing" ]; then
  echo "link-check: FAILED, undefined in a CUDA build:" >&2
  echo "$missing" | sed 's/^/  /' >&2
  exit 1
fi
trusted=$(ld -r -o "$work/combined.o" "${glue[@]}" "${kernels[@]}" && nm -u "$work/combined.o" | c++filt |
  grep -c -E ' (c10::cuda::|at::cuda::)' || true)
echo "link-check: OK (${#glue[@]} glue + ${#kernels[@]} kernel objects resolve against the CPU extension," \
  "torch's CPU libraries and libcudart; $trusted c10::cuda / at::cuda symbols left to a CUDA torch)"
