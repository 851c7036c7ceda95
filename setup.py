"""Builds fused_kingma._C: a C++ extension always, CUDA kernels too when torch has CUDA and nvcc exists.

Environment:
  FUSED_KINGMA_CUDA=0/1      force the CUDA part off/on (default: on when torch.version.cuda and CUDA_HOME)
  FUSED_KINGMA_DEBUG=1       -O0 -g
  FUSED_KINGMA_SANITIZE=1    AddressSanitizer + UndefinedBehaviorSanitizer (CPU code)
  TORCH_CUDA_ARCH_LIST       CUDA archs (default "8.0;9.0")
Build with the torch you run with: `pip install --no-build-isolation -e .` (or `make build`).
"""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "").strip() == "1"


def _want_cuda():
    forced = os.environ.get("FUSED_KINGMA_CUDA")
    if forced is not None and forced.strip() != "":
        return forced.strip() == "1"
    return torch.version.cuda is not None and CUDA_HOME is not None


# FUSED_KINGMA_SANITIZE=1 flags; the CI scripts read them through .ci/setup_flags.py (the self-check proves they
# catch bugs; the CUDA emulation is built with them too).
# -fno-wrapv: Python's CFLAGS carry -fwrapv, which makes signed overflow defined and so turns UBSan's
# signed-integer-overflow check off; the CUDA kernels share this math and have no such flag.
SANITIZE_CXX_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined",
                      "-fno-wrapv"]
SANITIZE_LINK_FLAGS = ["-fsanitize=address,undefined"]
# -O1, as the sanitizers' documentation suggests: their checks are on the source's accesses and operations, which
# -O3 only vectorizes, merges or removes, and the heaviest files compile in 40-45% less time (adam_chunks_avx512.cpp
# 82 -> 50 s, reparam_rows_avx512.cpp 79 -> 44 s with ASan + UBSan, the two at once on a 2-core Zen 4).
SANITIZE_OPT_FLAGS = ["-O1"]


def _sources(pattern):
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def make_extension():
    cuda = _want_cuda()
    debug = _flag("FUSED_KINGMA_DEBUG")
    sanitize = _flag("FUSED_KINGMA_SANITIZE")
    opt = ["-O0", "-g"] if debug else SANITIZE_OPT_FLAGS if sanitize else ["-O3"]
    # -fno-math-errno lets sqrt vectorize; it does not change NaN/inf propagation.
    cxx = opt + ["-fno-math-errno", f'-DFK_TORCH_VERSION="{torch.__version__}"', "-Wall", "-Wno-unknown-pragmas"]
    # -fopenmp: at::parallel_for is inline OpenMP in torch's headers; without it every kernel runs on one thread.
    # It links the libgomp.so.1 torch itself loads (same soname), so there is one OpenMP runtime.
    link = []
    if torch.backends.openmp.is_available():
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if sanitize:
        cxx += SANITIZE_CXX_FLAGS
        link += SANITIZE_LINK_FLAGS
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    kwargs = dict(include_dirs=[os.path.join(HERE, "csrc")], extra_link_args=link)
    if not cuda:
        return CppExtension("fused_kingma._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda_glue/*.cpp")
    nvcc = opt + ["-lineinfo", "--expt-relaxed-constexpr", "-DFK_WITH_CUDA"]
    return CUDAExtension(
        "fused_kingma._C", sources, extra_compile_args={"cxx": cxx + ["-DFK_WITH_CUDA"], "nvcc": nvcc}, **kwargs
    )


setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
