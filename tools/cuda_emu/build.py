"""Builds the CPU emulation of one csrc/cuda/*.cu file (see emu.h) as a shared library for ctypes.

    python tools/cuda_emu/build.py OUT_DIR reparam|adam|philox_noise     # prints the library's path

The kernel file is copied with each `kernel<<<grid, block, 0, stream>>>(args...);` rewritten to
`emu::launch(grid, block, kernel, args...);` and compiled by g++ with emu.h in place of the CUDA compiler,
together with <name>_harness.cpp (the C entry points). CUDA_EMU_CFLAGS adds compiler flags: .ci/sanitize.sh
builds with AddressSanitizer + UBSan, the CPU stand-in for compute-sanitizer memcheck.
"""
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CUDA_INCLUDE = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "include")
_LAUNCH = re.compile(r"(\w+(?:<[^;<>]*>)?)<<<(.*?), (\w+), 0, stream>>>\(([^;]*)\);")


def missing():
    """Why the emulation cannot be built here, or None."""
    if shutil.which("g++") is None:
        return "no g++"
    if not os.path.exists(os.path.join(CUDA_INCLUDE, "cuda_fp16.h")):
        return f"no CUDA headers in {CUDA_INCLUDE} (set CUDA_HOME)"
    probe = subprocess.run(["g++", "-std=c++20", "-fsyntax-only", "-x", "c++", "-"], input="#include <barrier>\n",
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return "g++ lacks C++20 <barrier> (GCC >= 11 needed)"
    return None


def build(out_dir, name):
    with open(os.path.join(ROOT, "csrc", "cuda", f"{name}.cu")) as f:
        source = f.read()
    rewritten, n = _LAUNCH.subn(r"emu::launch(\2, \3, \1, \4);", source)
    if n != source.count("<<<"):
        raise RuntimeError(f"rewrote {n} of {source.count('<<<')} kernel launches: update build.py's pattern")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}_emu.cu"), "w") as f:
        f.write(rewritten)
    lib = os.path.join(out_dir, f"{name}_emu.so")
    extra = os.environ.get("CUDA_EMU_CFLAGS", "").split()  # e.g. -fsanitize=address (.ci/sanitize.sh)
    subprocess.run(["g++", "-std=c++20", "-O1", *extra, "-shared", "-fPIC", "-Wall", "-Werror", "-Wno-unknown-pragmas", f"-I{out_dir}", f"-I{HERE}",
                    f"-I{os.path.join(ROOT, 'csrc')}", f"-I{CUDA_INCLUDE}", os.path.join(HERE, f"{name}_harness.cpp"),
                    "-o", lib, "-lpthread"], check=True)
    return lib


if __name__ == "__main__":
    print(build(sys.argv[1], sys.argv[2]))
