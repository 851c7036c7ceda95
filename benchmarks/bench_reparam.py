"""reparameterize + Gaussian KL: fused_kingma vs the eager code users write today, that code under
torch.compile, and the memory-traffic floor (fp32: 12 bytes/element forward, 20 backward), in one run.

Forward = z and the per-row KL from (mu, logvar). Forward+backward additionally runs autograd with given
upstream gradients for z and kl (so no extra reduction kernels are timed); "free bits" = forward+backward of z and
the free-bits KL objective (a scalar). Also times the noise alone
(torch.randn_like vs fused_kingma's Philox + Box-Muller normals) to show what bounds each side.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402

import fused_kingma as fk  # noqa: E402
from fused_kingma._ops import ops  # noqa: E402

FULL_SHAPES = [(128, 32), (4096, 256), (65536, 128), (1024, 4096)]  # 128x32: a typical VAE batch (overhead-bound)
TINY_SHAPES = [(256, 64)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def eager_reparam(mu, logvar):
    """What VAE code does today."""
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    kl = -0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp(), -1)
    return z, kl


def fused_reparam(mu, logvar):
    return fk.reparameterize(mu, logvar)


FREE_BITS = 0.1


def eager_reparam_free_bits(mu, logvar):
    """The free-bits objective (Kingma et al. 2016): the per-dim KL averaged over the batch, floored, summed."""
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    kl_per_dim = (0.5 * (logvar.exp() + mu ** 2 - 1 - logvar)).mean(0)
    return z, kl_per_dim.clamp(min=FREE_BITS).sum()


def fused_reparam_free_bits(mu, logvar):
    return fk.reparameterize(mu, logvar, free_bits=FREE_BITS)


def _fwd(fn, mu, lv):
    def run():
        with torch.no_grad():
            fn(mu, lv)
    return run


def _fwd_bwd(fn, mu, lv, gz, gkl):
    mu_, lv_ = mu.detach().requires_grad_(), lv.detach().requires_grad_()

    def run():
        z, kl = fn(mu_, lv_)
        torch.autograd.backward((z, kl), (gz, gkl))
        mu_.grad = lv_.grad = None
    return run


def run(tiny: bool, device: str = "cpu"):
    shapes = TINY_SHAPES if tiny else FULL_SHAPES
    use_compile = not tiny
    # Round-robin timing (one call of each candidate per round, median over rounds) with the bandwidth probe
    # among the candidates: fresh outputs make every candidate pay page faults whose cost depends on what the
    # allocator did just before, so interleaving and many rounds keep one candidate from drawing a bad spell.
    probe_numel = (1 << 16) if tiny else (1 << 26)
    probe, probe_bytes = common.inplace_add_fn(device=device, numel=probe_numel)
    warmup, repeat = (1, 3) if tiny else (5, 21)
    rows, bandwidths = [], []
    for dname, dtype in DTYPES.items():
        for b, d in shapes:
            g = torch.Generator(device=device).manual_seed(0)
            mu = torch.randn(b, d, generator=g, device=device).to(dtype)
            lv = (0.5 * torch.randn(b, d, generator=g, device=device)).to(dtype)
            gz, gkl = torch.randn_like(mu), torch.randn(b, device=device).to(dtype)
            n, esize = mu.numel(), mu.element_size()
            nb = (n + 3) // 4
            noise = common.median_ms_interleaved(
                {"fused": lambda: ops.philox_debug(1, 0, 0, nb, 2), "randn": lambda: torch.randn_like(mu)},
                device=device, warmup=warmup, repeat=repeat)
            backward = lambda gk: lambda f, m, l: _fwd_bwd(f, m, l, gz, gk)  # noqa: E731
            modes = (("fwd", 3 * esize * n, _fwd, fused_reparam, eager_reparam),
                     ("fwd+bwd", 8 * esize * n, backward(gkl), fused_reparam, eager_reparam),
                     # Free bits: the KL is one scalar (its upstream gradient 1); the same bytes must move.
                     ("fwd+bwd free bits", 8 * esize * n, backward(torch.ones((), device=device, dtype=dtype)),
                      fused_reparam_free_bits, eager_reparam_free_bits))
            for mode, floor_bytes, make, fused_fn, eager_fn in modes:
                candidates = {"fused": make(fused_fn, mu, lv), "eager": make(eager_fn, mu, lv), "probe": probe}
                if use_compile:  # a fresh compile per shape and pass (no recompile limit, no dynamic shapes)
                    torch._dynamo.reset()
                    candidates["compile"] = make(torch.compile(eager_fn, dynamic=False), mu, lv)
                # Warm: 3 calls of a candidate in a row per round (a training loop: the encoder has just written
                # mu/logvar); cold: 1 call per round, right after the other candidates and the probe.
                t = common.median_ms_interleaved(candidates, device=device, warmup=warmup, repeat=repeat,
                                                 calls_per_round=3)
                cold = common.median_ms_interleaved(candidates, device=device, warmup=0, repeat=repeat)
                t_comp = t.get("compile", float("nan"))
                bw = probe_bytes / (t["probe"] * 1e-3) / 1e9
                bandwidths.append(bw)
                floor = common.floor_ms(floor_bytes, bw)
                rows.append(dict(shape=f"{b}x{d}", dtype=dname, mode=mode, fused_ms=t["fused"], eager_ms=t["eager"],
                                 compile_ms=t_comp, floor_ms=floor, vs_eager=t["eager"] / t["fused"],
                                 vs_compile=t_comp / t["fused"], of_floor=floor / t["fused"],
                                 cold_fused_ms=cold["fused"], cold_eager_ms=cold["eager"],
                                 cold_vs_eager=cold["eager"] / cold["fused"],
                                 cold_vs_compile=cold.get("compile", float("nan")) / cold["fused"],
                                 noise_fused_ms=noise["fused"], noise_randn_ms=noise["randn"]))
    headers = ["shape", "dtype", "pass", "fused ms", "eager ms", "compile ms", "floor ms", "x eager", "x compile",
               "floor/fused", "cold: fused ms", "cold: x eager", "cold: x compile", "noise fused ms", "randn ms"]
    table = common.markdown_table(headers, [
        [r["shape"], r["dtype"], r["mode"], f"{r['fused_ms']:.3f}", f"{r['eager_ms']:.3f}", f"{r['compile_ms']:.3f}",
         f"{r['floor_ms']:.3f}", f"{r['vs_eager']:.1f}", f"{r['vs_compile']:.1f}", f"{r['of_floor']:.2f}",
         f"{r['cold_fused_ms']:.3f}", f"{r['cold_vs_eager']:.1f}", f"{r['cold_vs_compile']:.1f}",
         f"{r['noise_fused_ms']:.3f}", f"{r['noise_randn_ms']:.3f}"] for r in rows])
    notes = (f"Median of {repeat} rounds; each round times every candidate (fused, eager, compile and a "
             f"bandwidth probe x.add_(y) on {probe_numel} fp32, 12 B/elem: {min(bandwidths):.1f}-{max(bandwidths):.1f} GB/s "
             f"this run). Main columns: 3 calls of a candidate in a row per round, median of the 3 (inputs warm, as "
             f"in a training loop where the encoder has just written mu/logvar). 'cold' columns: a separate set of "
             f"rounds with 1 call per candidate, each right after the others and the {probe_bytes // 2**20} MiB probe (inputs come "
             f"from DRAM). Every candidate allocates its outputs: torch's come from its allocator (fresh pages, with "
             f"first-touch page faults, once freed blocks go back to the kernel), fused_kingma's from its CPU output "
             f"cache (README 'Output memory'). "
             f"Floor = bytes / the probe's bandwidth of that row, with fp32 12 B/elem forward "
             f"(mu, logvar in, z out) and 20 B/elem backward (mu, logvar, grad_z in, grad_mu, grad_logvar out); bf16 "
             f"half that. Eager = `mu + exp(0.5*logvar)*randn_like(mu)` + `-0.5*sum(1+logvar-mu**2-logvar.exp(),-1)`; "
             f"'free bits' rows: `reparameterize(mu, logvar, free_bits={FREE_BITS})` against the eager objective "
             f"`(0.5*(logvar.exp()+mu**2-1-logvar)).mean(0).clamp(min={FREE_BITS}).sum()` (same floor); "
             f"compile = that code under torch.compile (inductor, default RNG). 'noise fused' = Philox+Box-Muller "
             f"normals alone (same element count, float32); 'randn' = torch.randn_like alone. Threads: "
             f"{torch.get_num_threads()}, CPU ISA {fk.cpu_isa()}."
             + (" --tiny skips torch.compile (inductor's C++ compile takes longer than the whole tiny run)."
                if tiny else ""))
    return {"name": "bench_reparam", "rows": rows, "table": table, "notes": notes}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    args = ap.parse_args()
    res = run(args.tiny)
    print(res["table"])
    print(res["notes"])
