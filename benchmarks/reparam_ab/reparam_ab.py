"""Paired A/B of the CPU reparameterize kernels: a git revision (A, default HEAD) against the working tree (B).

    python benchmarks/reparam_ab/reparam_ab.py --base HEAD --shapes 4096x256 65536x128 --threads 1

Compiles csrc/cpu/reparam_kernels.cpp, the per-ISA row loops (reparam_rows_*.cpp, where the tree has them) and the
Philox files of both trees into one program (B's public names and namespace get the suffix _b) with the
extension's code-generation flags (setup.py's -O3 -fno-math-errno -fopenmp, and the -std=c++20 torch's BuildExtension
adds) and runs main.cpp, which alternates calls of A and B in one process. On a shared host, process-level A/B
(two builds timed in turn) varied by +-25% between runs and missed a 12% change that this pairing shows in every
run. With the same code on both sides (--base HEAD, clean tree) the medians differed
by up to 8% on that host: read single figures with that much noise. float32 or bfloat16 (--dtype), no prior;
forward and backward. Not part of `make bench`.
"""
import argparse
import concurrent.futures
import glob
import os
import subprocess
import sys
import tempfile

import torch
import torch.utils.cpp_extension as cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The files whose code differs between the builds; the rest (ISA detection, half conversions) is linked once, from B.
PER_BUILD = ["csrc/cpu/reparam_kernels.cpp", "csrc/cpu/reparam_rows_*.cpp", "csrc/cpu/philox_avx2.cpp",
             "csrc/cpu/philox_avx512.cpp"]
SHARED = ["csrc/cpu/isa.cpp", "csrc/cpu/half_convert.cpp"]
RENAMED = ["reparam_forward_cpu", "reparam_backward_cpu", "philox_debug_cpu", "fastmath_debug_cpu",
           "philox_words_avx2", "philox_words_avx512", "reparam_fwd_rows", "reparam_bwd_rows", "reparam_debug",
           "reparam_detail"]  # reparam_detail: its templates would otherwise merge between A and B at link time


def per_build_files(tree):
    return [f for pattern in PER_BUILD for f in sorted(glob.glob(os.path.join(tree, pattern)))]


def compile_flags(tree):
    abi = int(torch.compiled_with_cxx11_abi())
    return (["g++", "-c", "-O3", "-fno-math-errno", "-fopenmp", "-std=c++20", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
             f"-I{tree}/csrc", f"-I{tree}/csrc/cpu"] + [f"-I{p}" for p in cpp_extension.include_paths()])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="HEAD", help="git revision of build A (B is the working tree)")
    ap.add_argument("--shapes", nargs="+", default=["4096x256"], help="ROWSxDIM")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = os.path.join(tmp, "a")
        os.makedirs(base_tree)
        archive = subprocess.run(["git", "-C", ROOT, "archive", args.base, "csrc"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", base_tree], input=archive.stdout, check=True)
        jobs = [(compile_flags(base_tree), f, os.path.join(tmp, f"a{i}.o"))
                for i, f in enumerate(per_build_files(base_tree))]
        suffixed = [f"-D{name}={name}_b" for name in RENAMED]
        jobs += [(compile_flags(ROOT) + suffixed, f, os.path.join(tmp, f"b{i}.o"))
                 for i, f in enumerate(per_build_files(ROOT))]
        jobs += [(compile_flags(ROOT), os.path.join(ROOT, f), os.path.join(tmp, f"s{i}.o"))
                 for i, f in enumerate(SHARED)]
        main_cpp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.cpp")
        jobs.append((compile_flags(ROOT), main_cpp, os.path.join(tmp, "m.o")))
        print(f"compiling {len(jobs)} files (A = {args.base}, B = working tree) ...", flush=True)

        def compile_one(job):
            return subprocess.run(job[0] + [job[1], "-o", job[2]], capture_output=True, text=True)

        with concurrent.futures.ThreadPoolExecutor(int(os.environ.get("MAX_JOBS", "2"))) as pool:
            for done in pool.map(compile_one, jobs):
                if done.returncode:
                    sys.exit(done.stderr)
        lib = os.path.join(os.path.dirname(torch.__file__), "lib")
        exe = os.path.join(tmp, "reparam_ab")
        subprocess.run(["g++", "-fopenmp", "-o", exe] + [j[2] for j in jobs] +
                       [f"-L{lib}", "-ltorch_cpu", "-lc10", f"-Wl,-rpath,{lib}"], check=True)
        for shape in args.shapes:
            rows, dim = shape.split("x")
            subprocess.run([exe, rows, dim, str(args.threads), str(args.rounds), args.dtype], check=True)


if __name__ == "__main__":
    main()
