"""reparameterize + Gaussian KL: fused_kingma vs the eager code users write today, that code under
torch.compile, and the memory-traffic floor (fp32: 12 bytes/element forward, 20 backward), in one run.

Forward = z and the per-row KL from (mu, logvar). Forward+backward additionally runs autograd with given
upstream gradients for z and kl (so no extra reduction kernels are timed). Also times the noise alone
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

FULL_SHAPES = [(4096, 256), (65536, 128), (1024, 4096)]
TINY_SHAPES = [(256, 64)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def eager_reparam(mu, logvar):
    """What VAE code does today."""
    z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
    kl = -0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp(), -1)
    return z, kl


def fused_reparam(mu, logvar):
    return fk.reparameterize(mu, logvar)


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
    bw = common.inplace_update_bandwidth_gbs(device=device, tiny=tiny)
    rep = dict(device=device, warmup=1 if tiny else 2, repeat=3 if tiny else 7)
    rows = []
    for dname, dtype in DTYPES.items():
        for b, d in shapes:
            g = torch.Generator(device=device).manual_seed(0)
            mu = torch.randn(b, d, generator=g, device=device).to(dtype)
            lv = (0.5 * torch.randn(b, d, generator=g, device=device)).to(dtype)
            gz, gkl = torch.randn_like(mu), torch.randn(b, device=device).to(dtype)
            n, esize = mu.numel(), mu.element_size()
            nb = (n + 3) // 4
            noise_rep = dict(rep, warmup=5)  # the first timed op of a shape also warms the OpenMP pool up
            noise_fused = common.median_ms(lambda: ops.philox_debug(1, 0, 0, nb, 2), **noise_rep)
            noise_eager = common.median_ms(lambda: torch.randn_like(mu), **noise_rep)
            for mode, floor_bytes in (("fwd", 3 * esize * n), ("fwd+bwd", 8 * esize * n)):
                make = _fwd if mode == "fwd" else (lambda f, m, l: _fwd_bwd(f, m, l, gz, gkl))
                t_fused = common.median_ms(make(fused_reparam, mu, lv), **rep)
                t_eager = common.median_ms(make(eager_reparam, mu, lv), **rep)
                t_comp = float("nan")
                if use_compile:  # a fresh compile per shape and pass (no recompile limit, no dynamic shapes)
                    torch._dynamo.reset()
                    t_comp = common.median_ms(make(torch.compile(eager_reparam, dynamic=False), mu, lv), **rep)
                floor = common.floor_ms(floor_bytes, bw)
                rows.append(dict(shape=f"{b}x{d}", dtype=dname, mode=mode, fused_ms=t_fused, eager_ms=t_eager,
                                 compile_ms=t_comp, floor_ms=floor, vs_eager=t_eager / t_fused,
                                 vs_compile=t_comp / t_fused, of_floor=floor / t_fused,
                                 noise_fused_ms=noise_fused, noise_randn_ms=noise_eager))
    headers = ["shape", "dtype", "pass", "fused ms", "eager ms", "compile ms", "floor ms", "x eager", "x compile",
               "floor/fused", "noise fused ms", "randn ms"]
    table = common.markdown_table(headers, [
        [r["shape"], r["dtype"], r["mode"], f"{r['fused_ms']:.3f}", f"{r['eager_ms']:.3f}", f"{r['compile_ms']:.3f}",
         f"{r['floor_ms']:.3f}", f"{r['vs_eager']:.1f}", f"{r['vs_compile']:.1f}", f"{r['of_floor']:.2f}",
         f"{r['noise_fused_ms']:.3f}", f"{r['noise_randn_ms']:.3f}"] for r in rows])
    notes = (f"Bandwidth (x.add_(y), 12 B/elem) {bw:.1f} GB/s; floor = bytes / bandwidth with fp32 12 B/elem forward "
             f"(mu, logvar in, z out) and 20 B/elem backward (mu, logvar, grad_z in, grad_mu, grad_logvar out); bf16 "
             f"half that. Eager = `mu + exp(0.5*logvar)*randn_like(mu)` + `-0.5*sum(1+logvar-mu**2-logvar.exp(),-1)`; "
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
