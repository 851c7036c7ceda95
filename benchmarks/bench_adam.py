"""Adam-family step time: fused_kingma vs torch.optim.Adam (for-loop, foreach, fused), and the
memory-traffic floor measured in the same run.

Bytes per element assumed (the minimum a step must move):
  fp32 Adam: param r+w 8, grad r 4, exp_avg r+w 8, exp_avg_sq r+w 8 = 28; + EMA r+w 8 = 36
  bf16 / fp16 Adam (state bf16 / fp16, as torch keeps it): 14; master weights (bf16 param w 2, grad r 2,
  fp32 master r+w 8, fp32 moments r+w 16) = 28; Adamax as Adam.
Floor = bytes / bandwidth of an in-place fp32 add (benchmarks/common.py) measured in this run.
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # noqa: E402

import fused_kingma as fk  # noqa: E402


def gpt2_shapes():
    """GPT-2 small (124M params): embeddings, 12 blocks, final LayerNorm (LM head tied)."""
    d, v, n = 768, 50257, 1024
    shapes = [(v, d), (n, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return shapes + [(d,), (d,)]


def _params(shapes, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, generator=gen, device=device, dtype=torch.float32).to(dtype))
          for s in shapes]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32).to(dtype) * 1e-2
    return ps


def _ema_step(opt, params, emas, decay):
    opt.step()
    torch._foreach_lerp_(emas, [p.detach() for p in params], 1 - decay)


def run(tiny: bool, device: str = "cpu"):
    scale = 64 if tiny else 1
    probe, probe_bytes = common.inplace_add_fn(device=device, numel=(1 << 16) if tiny else (1 << 26))
    bws = []
    configs = [
        ("4 x 16M fp32", [((16 << 20) // scale,)] * 4, torch.float32, {}, 28),
        ("400 x 65k fp32", [(65536 // scale,)] * 400, torch.float32, {}, 28),
        ("2000 x 64 + 20 x 262k fp32", [(64,)] * 2000 + [(262144 // scale,)] * 20, torch.float32, {}, 28),
        ("GPT-2 124M fp32", gpt2_shapes() if not tiny else [(s[0] // 64,) + s[1:] for s in gpt2_shapes()],
         torch.float32, {}, 28),
        ("4 x 16M bf16", [((16 << 20) // scale,)] * 4, torch.bfloat16, {}, 14),
        ("4 x 16M fp16", [((16 << 20) // scale,)] * 4, torch.float16, {}, 14),
        ("4 x 16M fp32 amsgrad", [((16 << 20) // scale,)] * 4, torch.float32, {"amsgrad": True}, 36),
        ("4 x 16M fp32 Adamax", [((16 << 20) // scale,)] * 4, torch.float32, {"adamax": True}, 28),
        ("4 x 16M fp32 + EMA", [((16 << 20) // scale,)] * 4, torch.float32, {"ema_decay": 0.999}, 36),
        ("4 x 16M bf16 master weights", [((16 << 20) // scale,)] * 4, torch.bfloat16, {"master_weights": True}, 28),
        ("4 x 16M bf16 stochastic rounding", [((16 << 20) // scale,)] * 4, torch.bfloat16,
         {"stochastic_rounding": True}, 14),
    ]
    repeat = 3 if tiny else 7
    rows, records = [], []
    for name, shapes, dtype, opts, bytes_per in configs:
        opts = dict(opts)
        adamax = opts.pop("adamax", False)
        ema = opts.get("ema_decay")
        numel = sum(int(torch.Size(s).numel()) for s in shapes)
        fk_cls = fk.FusedAdamax if adamax else fk.FusedAdam
        torch_cls = torch.optim.Adamax if adamax else torch.optim.Adam
        ps = _params(shapes, dtype, device)
        opt = fk_cls(ps, **opts)
        candidates = {"fused_kingma": opt.step}
        torch_opts = {k: v for k, v in opts.items() if k == "amsgrad"}
        variants = [("torch fused", {"fused": True}), ("torch foreach", {"foreach": True})]
        if tiny or numel < (8 << 20) or len(shapes) < 100:
            variants.append(("torch for-loop", {"foreach": False}))
        for label, kw in variants:
            if adamax and kw.get("fused"):
                continue
            tps = _params(shapes, dtype, device)
            o = torch_cls(tps, **torch_opts, **kw)
            if ema is not None:
                emas = [p.detach().clone() for p in tps]
                candidates[label + " + foreach EMA"] = (lambda o=o, tps=tps, emas=emas: _ema_step(o, tps, emas, ema))
            else:
                candidates[label] = o.step
        candidates["bandwidth probe"] = probe
        times = common.median_ms_interleaved(candidates, device=device, repeat=repeat)
        del candidates, opt, ps
        bw = probe_bytes / (times.pop("bandwidth probe") * 1e-3) / 1e9
        bws.append(bw)
        floor = common.floor_ms(bytes_per * numel, bw)
        ours = times["fused_kingma"]
        base_key = next((k for k in times if k.startswith("torch fused")), None) or next(
            k for k in times if k.startswith("torch foreach"))
        rec = {"config": name, "numel": numel, "bytes_per_element": bytes_per, "floor_ms": floor, "times_ms": times,
               "speedup_vs": base_key, "speedup": times[base_key] / ours, "pct_of_floor": 100 * floor / ours,
               "gbps": bytes_per * numel / (ours * 1e-3) / 1e9}
        rec["bandwidth_gbs"] = bw
        records.append(rec)
        rec["baseline_pct_of_floor"] = 100 * floor / times[base_key]
        rows.append([name, f"{ours:.2f}", f"{rec['gbps']:.1f}",
                     " / ".join(f"{k}: {v:.2f}" for k, v in times.items() if k != "fused_kingma"),
                     f"{rec['speedup']:.2f}x vs {base_key}", f"{rec['pct_of_floor']:.0f}%",
                     f"{rec['baseline_pct_of_floor']:.0f}%"])
    table = common.markdown_table(
        ["config", "fused_kingma ms", "GB/s", "torch ms", "speedup", "% of floor", "baseline % of floor"], rows)
    notes = (f"Floor = bytes / bandwidth of an in-place fp32 add timed round-robin with the candidates of the "
             f"same configuration (this run: {min(bws):.0f}-{max(bws):.0f} GB/s; it drifts on shared hosts). "
             "Median over rounds, each round timing every candidate once. Bytes/element assumed: fp32 28 (+8 EMA, +8 amsgrad), "
             "bf16 / fp16 14, bf16 master weights 28. Grads stay fixed across steps. "
             "EMA rows: the torch baselines are Adam followed by torch._foreach_lerp_ of an EMA copy (12 more "
             "bytes/element). bf16 master-weight / stochastic-rounding rows compare with torch's plain bf16 Adam, "
             "which does less (no fp32 copy / plain rounding): read them against the floor.")
    return {"name": "bench_adam", "rows": records, "table": table, "notes": notes}


if __name__ == "__main__":
    res = run(tiny="--tiny" in sys.argv)
    print(res["table"])
    print(res["notes"])
