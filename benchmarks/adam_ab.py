"""Same-time A/B of Adam step builds on a noisy host: alternates builds of fused_kingma (each a directory that
holds a built `fused_kingma` package, e.g. a copy of the package taken before a change) round by round, and in
every process times fused_kingma.FusedAdam against torch's fused Adam on the same tensor.

  python benchmarks/adam_ab.py --builds /tmp/before . --dtype float16 --numel 1048576 --threads 1 --rounds 3
  python benchmarks/adam_ab.py --builds /tmp/before . --numel 64 --count 2000 --rounds 6   # many small tensors
  python benchmarks/adam_ab.py --builds /tmp/before . --numel 64 --count 2000 --cold       # caches swept first

Prints, per round and build, ns per element (times the thread count) of both and torch's time over ours (the
median of 15 timings of each, alternating). --cold times single steps, each right after a sweep over a 64 MiB
buffer (larger than the L3 cache), as in a training loop whose forward and backward passes evict the optimizer's
tensors and their metadata between two steps (median of 100 steps each). Used for the README's before/after
figures; not part of `make bench`.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time


def measure(dtype_name, numel, count, threads, options, isa, cold):
    import torch

    import fused_kingma as fk

    torch.set_num_threads(threads)
    if isa and fk.set_cpu_isa(isa) != isa:
        raise SystemExit(f"--isa {isa}: this CPU runs at most {fk.cpu_isa()}")
    dtype = getattr(torch, dtype_name)

    def make():
        gen = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(numel, generator=gen).to(dtype)) for _ in range(count)]
        for p in ps:
            p.grad = (torch.randn(numel, generator=gen) * 1e-2).to(dtype)
        return ps

    ours = fk.FusedAdam(make(), **options)
    theirs = torch.optim.Adam(make(), fused=True, **{k: v for k, v in options.items() if k == "amsgrad"})
    ours.step()
    theirs.step()
    times = {"fused_kingma": [], "torch fused": []}
    if cold:
        sweep = torch.zeros(1 << 24)
        for _ in range(100):
            for name, opt in (("fused_kingma", ours), ("torch fused", theirs)):
                sweep.add_(1.0)
                start = time.perf_counter()
                opt.step()
                times[name].append((time.perf_counter() - start) / (numel * count) * 1e9 * threads)
        return {name: statistics.median(t) for name, t in times.items()}
    reps = max(1, int(2e7 // (numel * count)))
    for _ in range(15):
        for name, opt in (("fused_kingma", ours), ("torch fused", theirs)):
            start = time.perf_counter()
            for _ in range(reps):
                opt.step()
            times[name].append((time.perf_counter() - start) / reps / (numel * count) * 1e9 * threads)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--builds", nargs="+", default=["."], help="directories holding a built fused_kingma package")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--numel", type=int, default=1 << 20, help="elements per tensor")
    ap.add_argument("--count", type=int, default=1, help="tensors in the param group")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--options", default="{}", help="FusedAdam keyword arguments as a Python dict literal")
    ap.add_argument("--isa", default="", help="run fused_kingma's copy for this ISA (baseline, avx2, avx512)")
    ap.add_argument("--cold", action="store_true", help="sweep the caches before each timed step")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import ast

        res = measure(args.dtype, args.numel, args.count, args.threads, ast.literal_eval(args.options), args.isa,
                      args.cold)
        print(res["fused_kingma"], res["torch fused"])
        return
    for r in range(args.rounds):
        for build in args.builds:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(build))
            child = [sys.executable, os.path.abspath(__file__), "--child", "--dtype", args.dtype, "--numel",
                     str(args.numel), "--count", str(args.count), "--threads", str(args.threads), "--options",
                     args.options, "--isa", args.isa] + (["--cold"] if args.cold else [])
            out = subprocess.run(child, env=env, check=True, capture_output=True, text=True).stdout
            ours, theirs = (float(x) for x in out.split())
            ms = args.numel * args.count / args.threads * 1e-6  # ns/elem -> ms per step
            print(f"round {r}  {build:30s} fused_kingma {ours:.3f}  torch fused {theirs:.3f} ns/elem  "
                  f"({ours * ms:.3f} / {theirs * ms:.3f} ms per step)  torch/ours {theirs / ours:.3f}", flush=True)


if __name__ == "__main__":
    main()
