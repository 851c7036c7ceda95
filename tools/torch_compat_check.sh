#!/usr/bin/env bash
# The CUDA build of fused_kingma against another torch release, without a GPU: what `make gpu-check`'s build
# step does on the GPU machine (torch 2.11.0+cu130, nvcc 13.0 there), tried here first.
#   tools/torch_compat_check.sh [TORCH_VERSION]     (default 2.11.0)
# 1. a venv in build/torch-<version>/venv with that torch from PyPI: a CUDA build, about 5 GB with its nvidia-*
#    wheels (never the project's .venv; not part of CI, which must not download it);
# 2. a copy of this working tree (git's tracked and unignored files) in build/torch-<version>/tree, built there
#    with the CUDA kernels (FUSED_KINGMA_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0 as gpu-check on an H100/H200, the nvcc
#    of CUDA_HOME, default /usr/local/cuda): torch's own flags, headers and libraries, -std included;
# 3. `import fused_kingma` (torch loads its real libc10_cuda / libtorch_cuda; no GPU needed) and a check that
#    it was built with CUDA (tests/test_build.py checks every op's CUDA kernel is registered);
# 4. the tests that need no GPU (PYTEST_ARGS, default -m "not cuda and not slow"), tests/test_fake_cuda.py among
#    them, against that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-2.11.0}
root=build/torch-$version
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
mkdir -p "$root"
if [ ! -x "$root/venv/bin/python" ]; then
  python3 -m venv "$root/venv"
  grep -v '^torch' requirements-dev.txt >"$root/requirements.txt"
  "$root/venv/bin/pip" install -q "torch==$version" -r "$root/requirements.txt"
fi
rm -rf "$root/tree"
mkdir -p "$root/tree"
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$root/tree"
cd "$root/tree"
PY=../venv/bin/python
FUSED_KINGMA_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-2} \
  "$PY" setup.py -q build_ext --inplace
"$PY" -c 'import torch, fused_kingma; assert fused_kingma._C.built_with_cuda, "built without CUDA"
print(f"torch-compat: fused_kingma built with CUDA against torch {torch.__version__} and imported")'
if [ -n "${PYTEST_ARGS:-}" ]; then read -ra pytest_args <<<"$PYTEST_ARGS"; else pytest_args=(-m "not cuda and not slow"); fi
"$PY" -m pytest -q -p no:cacheprovider "${pytest_args[@]}" tests/
echo "torch-compat: OK (torch $version)"
