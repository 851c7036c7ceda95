"""GPU-only configurations (issue 5), next to bench_adam / bench_reparam's general ones:

- Adam fp32 over 8 tensors of 2^28 (268M) elements: fused_kingma vs torch's fused and foreach
  Adam. 28 bytes move per element (param, grad, exp_avg, exp_avg_sq read; param and both moments
  written); the four arrays take 8 * 2^28 * 4 B * 4 = 34 GB, one optimizer at a time.
- reparameterize on a (262144, 512) fp32 batch, forward and forward+backward: fused_kingma vs the
  eager PyTorch lines it replaces and those lines under torch.compile (not with --tiny). 12 bytes per
  element forward (mu, logvar read, z written), 20 backward (grad_z, mu, logvar read, grad_mu,
  grad_logvar written).

The floor is bytes moved / the device-to-device copy bandwidth measured in the same run
(common.copy_bandwidth_gbs). On the CPU this module reports that it has nothing to run.
"""
import gc
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402


def _free_memory():
    gc.collect()
    torch.cuda.empty_cache()


def _adam_rows(tiny, device, bw):
    import fused_kingma

    n_tensors, numel = (8, 1 << 16) if tiny else (8, 1 << 28)
    need = n_tensors * numel * 4 * 4 * 1.1
    free, _ = torch.cuda.mem_get_info()
    if need > free:
        return [], f"Adam 8 x {numel}: skipped, needs {need / 2**30:.0f} GiB, {free / 2**30:.0f} GiB free"
    floor = common.floor_ms(28 * n_tensors * numel, bw)
    rows = []
    makers = [
        ("fused_kingma.FusedAdam", lambda ps: fused_kingma.FusedAdam(ps, lr=1e-3)),
        ("torch Adam fused=True", lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True)),
        ("torch Adam foreach=True", lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True)),
    ]
    for name, make in makers:
        params = [torch.randn(numel, device=device).requires_grad_() for _ in range(n_tensors)]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-2
        opt = make(params)
        ms = common.median_ms(opt.step, device=device, warmup=2, repeat=3 if tiny else 10)
        rows.append([f"Adam fp32 {n_tensors} x {numel}", name, f"{ms:.3f}", f"{floor / ms:.2f}"])
        del opt, params
        _free_memory()
    rows.append([f"Adam fp32 {n_tensors} x {numel}", "floor (28 B/elem at copy bandwidth)", f"{floor:.3f}", "1.00"])
    return rows, ""


def _reparam_rows(tiny, device, bw):
    import fused_kingma

    rows_, dim = (1024, 512) if tiny else (262144, 512)
    n = rows_ * dim
    g = torch.Generator(device=device).manual_seed(0)
    mu = torch.randn(rows_, dim, device=device, generator=g).requires_grad_()
    logvar = (0.1 * torch.randn(rows_, dim, device=device, generator=g)).requires_grad_()
    grad_z = torch.randn(rows_, dim, device=device, generator=g)

    def eager():
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1)
        return z, kl

    def fused():
        return fused_kingma.reparameterize(mu, logvar)

    def fwd(fn):
        def run():
            with torch.no_grad():
                fn()
        return run

    def fwd_bwd(fn):
        def run():
            z, kl = fn()
            torch.autograd.backward([z, kl], [grad_z, torch.ones_like(kl)])
            mu.grad = None
            logvar.grad = None
        return run

    candidates = [("fused_kingma.reparameterize", fused), ("eager PyTorch", eager)]
    if not tiny:  # inductor (default RNG); compiled once for no_grad and once with autograd, before timing
        candidates.append(("torch.compile(eager)", torch.compile(eager, dynamic=False)))
    out = []
    repeat = 3 if tiny else 20
    for label, make, bytes_per in (("forward", fwd, 12), ("forward+backward", fwd_bwd, 32)):
        floor = common.floor_ms(bytes_per * n, bw)
        for name, fn in candidates:
            ms = common.median_ms(make(fn), device=device, warmup=3, repeat=repeat)
            out.append([f"reparam fp32 ({rows_}, {dim}) {label}", name, f"{ms:.3f}", f"{floor / ms:.2f}"])
        out.append([f"reparam fp32 ({rows_}, {dim}) {label}", f"floor ({bytes_per} B/elem at copy bandwidth)",
                    f"{floor:.3f}", "1.00"])
    del mu, logvar, grad_z
    _free_memory()
    return out


def run(tiny: bool = False, device: str = "cpu") -> dict:
    headers = ["case", "implementation", "median ms", "floor / time"]
    if torch.device(device).type != "cuda":
        return {"name": "bench_gpu", "rows": [], "table": "(GPU-only configurations: nothing to run on the CPU)",
                "notes": ""}
    bw = common.copy_bandwidth_gbs(device=device, tiny=tiny)
    notes = [f"Device-to-device copy bandwidth in this run: {bw:.0f} GB/s (read + write bytes)."]
    rows = []
    adam_rows, adam_note = _adam_rows(tiny, device, bw)
    rows += adam_rows
    if adam_note:
        notes.append(adam_note)
    rows += _reparam_rows(tiny, device, bw)
    return {"name": "bench_gpu", "rows": rows, "table": common.markdown_table(headers, rows), "notes": " ".join(notes),
            "copy_bandwidth_gbs": bw}
