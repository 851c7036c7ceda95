"""Adam-family step time: fused_kingma vs torch.optim.Adam (for-loop, foreach, fused, and torch.compile of its
step), DeepSpeed's CPU Adam when deepspeed is installed, and the memory-traffic floor measured in the same run.

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


def _ema_step(step, params, emas, decay):
    step()
    torch._foreach_lerp_(emas, [p.detach() for p in params], 1 - decay)


def _deepspeed_cpu_adam():
    """DeepSpeed's CPU Adam (the optimizer of ZeRO-Offload), an optional baseline, never a dependency: the class
    when deepspeed is installed and its cpu_adam op builds here, else None."""
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        probe = torch.nn.Parameter(torch.zeros(8))
        probe.grad = torch.zeros(8)
        DeepSpeedCPUAdam([probe]).step()  # builds (JIT) and loads its C++ op
        return DeepSpeedCPUAdam
    except Exception:  # not installed, or its op fails to build: the row goes without it
        return None


# torch.compile of the step (inductor fuses torch's foreach Adam into generated loops) compiles one graph per
# configuration: on a 2-core Zen 4, 11 s for 4 tensors, 54 s for 148, 134 s for 400, over 300 s for 2020, so only
# configurations of up to this many tensors get it (and only the first one with --tiny).
COMPILE_MAX_TENSORS = 400


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
    deepspeed_adam = _deepspeed_cpu_adam() if device == "cpu" else None
    rows, records = [], []
    for index, (name, shapes, dtype, opts, bytes_per) in enumerate(configs):
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
        if len(shapes) <= COMPILE_MAX_TENSORS and (not tiny or index == 0) and device == "cpu":
            variants.append(("torch.compile", {"compile": True}))
        for label, kw in variants:
            if adamax and kw.get("fused"):
                continue
            kw = dict(kw)
            compiled = kw.pop("compile", False)
            tps = _params(shapes, dtype, device)
            o = torch_cls(tps, **torch_opts, **kw)
            if compiled:
                # Every configuration compiles the same function (torch.optim's step wrapper) for a new optimizer;
                # dynamo keeps 8 entries per function and then runs it eagerly ("hit config.recompile_limit"),
                # which gave the last two compiled rows eager times before this reset.
                torch._dynamo.reset()
            step = torch.compile(o.step) if compiled else o.step
            if ema is not None:
                emas = [p.detach().clone() for p in tps]
                candidates[label + " + foreach EMA"] = (
                    lambda step=step, tps=tps, emas=emas: _ema_step(step, tps, emas, ema))
            else:
                candidates[label] = step
        # DeepSpeed's plain Adam (one C++ call per tensor), in the 16-bit rows with 16-bit state as torch keeps it.
        if deepspeed_adam is not None and not opts and not adamax and dtype in (torch.float32, torch.bfloat16):
            dps = _params(shapes, dtype, device)
            candidates["deepspeed cpu_adam"] = deepspeed_adam(
                dps, adamw_mode=False, fp32_optimizer_states=dtype == torch.float32).step
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
        fastest = min((k for k in times if k != "fused_kingma"), key=times.get)
        rec["fastest_baseline"], rec["speedup_vs_fastest"] = fastest, times[fastest] / ours
        rows.append([name, f"{ours:.2f}", f"{rec['gbps']:.1f}",
                     " / ".join(f"{k}: {v:.2f}" for k, v in times.items() if k != "fused_kingma"),
                     f"{rec['speedup']:.2f}x vs {base_key}", f"{rec['speedup_vs_fastest']:.2f}x vs {fastest}",
                     f"{rec['pct_of_floor']:.0f}%", f"{rec['baseline_pct_of_floor']:.0f}%"])
    table = common.markdown_table(
        ["config", "fused_kingma ms", "GB/s", "baselines ms", "speedup", "vs fastest baseline", "% of floor",
         "baseline % of floor"], rows)
    notes = (f"Floor = bytes / bandwidth of an in-place fp32 add timed round-robin with the candidates of the "
             f"same configuration (this run: {min(bws):.0f}-{max(bws):.0f} GB/s; it drifts on shared hosts). "
             "Median over rounds, each round timing every candidate once. Bytes/element assumed: fp32 28 (+8 EMA, +8 amsgrad), "
             "bf16 / fp16 14, bf16 master weights 28. Grads stay fixed across steps. "
             "EMA rows: the torch baselines are Adam followed by torch._foreach_lerp_ of an EMA copy (12 more "
             "bytes/element). bf16 master-weight / stochastic-rounding rows compare with torch's plain bf16 Adam, "
             "which does less (no fp32 copy / plain rounding): read them against the floor. "
             f"torch.compile = torch.compile(opt.step) of torch's default (foreach) Adam, in rows of up to "
             f"{COMPILE_MAX_TENSORS} tensors (compile time). "
             + ("deepspeed cpu_adam = DeepSpeed's DeepSpeedCPUAdam (adamw_mode=False; state in the param dtype for "
                "bf16), plain rows." if deepspeed_adam is not None else
                "DeepSpeed's CPU Adam: not in this run (deepspeed not installed, or its cpu_adam op did not build)."))
    return {"name": "bench_adam", "rows": records, "table": table, "notes": notes}


if __name__ == "__main__":
    res = run(tiny="--tiny" in sys.argv)
    print(res["table"])
    print(res["notes"])
