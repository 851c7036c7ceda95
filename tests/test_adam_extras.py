"""Issue 6 extras: FusedAdamax (see also test_adam.py), parameter EMA, fp32 master weights, bf16
stochastic rounding — each against a pure-PyTorch reference over many steps."""
import io

import pytest
import torch

import fused_kingma as fk
from fused_kingma import reference


def params_and_grads(shapes, steps, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    grads = [[torch.randn(s, generator=g).to(dtype) for s in shapes] for _ in range(steps)]
    return init, grads


@pytest.mark.parametrize("cls,torch_cls", [(fk.FusedAdamW, torch.optim.AdamW), (fk.FusedAdamax, torch.optim.Adamax)])
def test_ema_matches_reference_average(cls, torch_cls):
    decay, steps = 0.9, 40
    init, grads = params_and_grads([(7,), (3, 5)], steps)
    ps = [torch.nn.Parameter(t.clone()) for t in init]
    qs = [torch.nn.Parameter(t.clone()) for t in init]
    opt = cls(ps, lr=0.01, ema_decay=decay)
    ref = torch_cls(qs, lr=0.01, foreach=False)
    ema = [torch.zeros_like(t) for t in init]
    for gs in grads:
        for p, q, g in zip(ps, qs, gs):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        for e, q in zip(ema, qs):
            e.lerp_(q.detach(), 1 - decay)
    for p, q in zip(ps, qs):  # the EMA does not change the update
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    averaged = opt.ema_parameters()
    for a, e in zip(averaged, ema):
        torch.testing.assert_close(a, e / (1 - decay**steps), rtol=1e-5, atol=1e-6)
    before = [p.detach().clone() for p in ps]
    with opt.swap_ema():
        for p, a in zip(ps, averaged):
            assert torch.equal(p.detach(), a)
    for p, b in zip(ps, before):
        assert torch.equal(p.detach(), b)
    assert "ema" in opt.state_dict()["state"][0]


def test_ema_starts_fresh_from_torch_checkpoint():
    init, grads = params_and_grads([(6,)], 8)
    p = torch.nn.Parameter(init[0].clone())
    t = torch.optim.AdamW([p], lr=0.01, foreach=False)
    for gs in grads[:5]:
        p.grad = gs[0].clone()
        t.step()
    buf = io.BytesIO()
    torch.save(t.state_dict(), buf)
    buf.seek(0)
    q = torch.nn.Parameter(p.detach().clone())
    opt = fk.FusedAdamW([q], lr=0.01, ema_decay=0.5)
    opt.load_state_dict(torch.load(buf, weights_only=True))
    assert opt.param_groups[0]["ema_decay"] == 0.5
    q.grad = grads[5][0].clone()
    opt.step()
    torch.testing.assert_close(opt.ema_parameters()[0], q.detach(), rtol=1e-6, atol=1e-7)  # one value averaged
    assert opt.state[q]["step"].item() == 6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_master_weights_track_fp32_adam(dtype):
    steps = 50
    init, grads = params_and_grads([(9,), (4, 6)], steps, dtype=dtype)
    ps = [torch.nn.Parameter(t.clone()) for t in init]
    qs = [torch.nn.Parameter(t.float()) for t in init]  # the fp32 run the master copy must follow
    opt = fk.FusedAdamW(ps, lr=1e-3, master_weights=True, ema_decay=0.9)
    ref = torch.optim.AdamW(qs, lr=1e-3, foreach=False)
    for gs in grads:
        for p, q, g in zip(ps, qs, gs):
            p.grad, q.grad = g.clone(), g.float()
        opt.step()
        ref.step()
    for p, q in zip(ps, qs):
        st = opt.state[p]
        assert st["master_param"].dtype == torch.float32 and st["exp_avg"].dtype == torch.float32
        torch.testing.assert_close(st["master_param"], q.detach(), rtol=1e-6, atol=1e-6)
        assert torch.equal(p.detach(), q.detach().to(dtype))  # param = master rounded to nearest
    # checkpoint keeps the fp32 state
    sd = opt.state_dict()
    ps2 = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = fk.FusedAdamW(ps2, lr=1e-3, master_weights=True, ema_decay=0.9)
    opt2.load_state_dict(sd)
    for p, p2 in zip(ps, ps2):
        for key in ("master_param", "exp_avg", "exp_avg_sq", "ema"):
            assert opt2.state[p2][key].dtype == torch.float32
            assert torch.equal(opt2.state[p2][key], opt.state[p][key])


def one_sr_step(n, seed=None, threads=None):
    p = torch.nn.Parameter(torch.full((n,), 1.0, dtype=torch.bfloat16))
    p.grad = torch.full((n,), 0.5, dtype=torch.bfloat16)
    if seed is not None:
        torch.manual_seed(seed)
    opt = fk.FusedAdam([p], lr=1e-3, stochastic_rounding=True)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        opt.step()
    finally:
        torch.set_num_threads(before)
    return p.detach().clone(), opt


def test_stochastic_rounding_unbiased_and_reproducible():
    n = 200_000
    got, opt = one_sr_step(n, seed=0)
    # the exact fp32 result of the step, from the reference
    theta = torch.ones(n)
    theta, _, _, _ = reference.adam_element_update(theta, torch.full((n,), 0.5), torch.zeros(n), torch.zeros(n), None,
                                                   1.0, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    down, up = reference.bf16_stochastic_round_candidates(theta)
    assert bool(((got == down) | (got == up)).all())
    ulp = (up.float() - down.float())[0].item()
    q = ((theta - down.float()) / ulp)[0].item()  # probability of rounding up
    assert 0.05 < q < 0.95, q
    mean = got.float().mean().item()
    sigma = ulp * (q * (1 - q) / n) ** 0.5
    print(f"SR: exact {theta[0].item():.7f}, mean of {n} roundings {mean:.7f}, 5 sigma = {5 * sigma:.2e}")
    assert abs(mean - theta[0].item()) < 5 * sigma
    rne = theta.to(torch.bfloat16).float().mean().item()
    assert abs(rne - theta[0].item()) > 20 * sigma  # round-to-nearest is biased here; SR is not
    again, _ = one_sr_step(n, seed=0)
    assert torch.equal(got, again)  # same seed, same noise
    one_thread, _ = one_sr_step(n, seed=0, threads=1)
    assert torch.equal(got, one_thread)  # independent of the thread count
    other, _ = one_sr_step(n, seed=1)
    assert not torch.equal(got, other)
    assert "sr_seed" in opt.state_dict()["param_groups"][0]


def test_bf16_training_tracks_fp32_with_master_weights_or_sr():
    torch.manual_seed(0)
    x = torch.randn(256, 32)
    w_true = torch.randn(32, 1)
    y = x @ w_true

    def train(dtype, **kw):
        torch.manual_seed(1)
        w = torch.nn.Parameter((torch.randn(32, 1) * 0.5).to(dtype))
        opt = fk.FusedAdam([w], lr=1e-3, **kw)
        for _ in range(400):
            opt.zero_grad()
            loss = ((x.to(dtype) @ w).float() - y).pow(2).mean()
            loss.backward()
            opt.step()
        return ((x @ w.detach().float()) - y).pow(2).mean().item(), w.detach().float()

    l32, w32 = train(torch.float32)
    lplain, wplain = train(torch.bfloat16)
    lsr, wsr = train(torch.bfloat16, stochastic_rounding=True)
    lmaster, wmaster = train(torch.bfloat16, master_weights=True)
    d = {k: (v - w32).norm().item() for k, v in (("plain", wplain), ("sr", wsr), ("master", wmaster))}
    print(f"final loss fp32 {l32:.4f}, bf16 plain {lplain:.4f}, bf16 SR {lsr:.4f}, bf16 master {lmaster:.4f}; "
          f"|w - w_fp32|: {d}")
    assert d["master"] < 0.2 * d["plain"]
    assert d["sr"] < 0.5 * d["plain"]
    assert abs(lmaster - l32) < 0.2 * abs(lplain - l32)
    assert abs(lsr - l32) < 0.5 * abs(lplain - l32)


def test_extras_validation():
    p = [torch.nn.Parameter(torch.randn(3))]
    with pytest.raises(ValueError, match="ema_decay"):
        fk.FusedAdam(p, ema_decay=1.0)
    with pytest.raises(ValueError, match="exclude each other"):
        fk.FusedAdam(p, master_weights=True, stochastic_rounding=True)


@pytest.mark.parametrize("kw", [{"amsgrad": True, "weight_decay": 0.1}, {"ema_decay": 0.9, "maximize": True},
                                {"master_weights": True, "ema_decay": 0.8}])
def test_reference_fallback_matches_native(monkeypatch, kw):
    # Devices without a native kernel (CUDA until its kernel lands) run fused_kingma.reference.adam_step_.
    import fused_kingma.optim as optim

    init, grads = params_and_grads([(5,), (2, 3)], 15, dtype=torch.bfloat16 if kw.get("master_weights") else
                                   torch.float32)
    runs = []
    for native in (True, False):
        monkeypatch.setattr(optim, "_has_native_kernel", lambda device, native=native: native)
        ps = [torch.nn.Parameter(t.clone()) for t in init]
        opt = fk.FusedAdamW(ps, lr=0.01, **kw)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.clone()
            opt.step()
        runs.append((ps, opt))
    (pa, oa), (pb, ob) = runs
    for x, y in zip(pa, pb):
        torch.testing.assert_close(y.float(), x.float(), rtol=1e-5, atol=1e-6)
        for key in oa.state[x]:
            torch.testing.assert_close(ob.state[y][key].float(), oa.state[x][key].float(), rtol=1e-5, atol=1e-6)
    if kw.get("ema_decay"):
        for x, y in zip(oa.ema_parameters(), ob.ema_parameters()):
            torch.testing.assert_close(y.float(), x.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ema_of_low_precision_params_is_an_fp32_average(dtype):
    # Regression: the kernel once stored the fp32 EMA buffer as 16-bit values.
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(257).to(dtype))
    opt = fk.FusedAdam([p], lr=1e-2, ema_decay=0.5)
    expected = torch.zeros(257, dtype=torch.float32)
    for _ in range(4):
        p.grad = torch.randn(257).to(dtype)
        opt.step()
        expected = expected + 0.5 * (p.detach().float() - expected)
    ema = opt.state[p]["ema"]
    assert ema.dtype == torch.float32
    torch.testing.assert_close(ema, expected, rtol=1e-6, atol=1e-6)


def test_stochastic_rounding_same_bits_on_every_isa():
    """The rounding noise is Philox by element index on every CPU path (AVX-512 and AVX2 use intrinsics):
    odd sizes and offsets into the 16-block groups included."""
    before = fk.cpu_isa()
    outs = {}
    try:
        for isa in ("baseline", "avx2", "avx512"):
            if fk.set_cpu_isa(isa) != isa:
                continue
            outs[isa] = one_sr_step(70_001, seed=7)[0]
    finally:
        fk.set_cpu_isa(before)
    for got in outs.values():
        assert torch.equal(got, outs["baseline"])



LOW_PRECISION_OPTIONS = [
    dict(cls=fk.FusedAdamW),
    dict(cls=fk.FusedAdam, amsgrad=True, weight_decay=0.01, maximize=True),
    dict(cls=fk.FusedAdamax, weight_decay=0.01),
    dict(cls=fk.FusedAdamW, master_weights=True, ema_decay=0.9, amsgrad=True),
    dict(cls=fk.FusedAdam, grad_scale=1024.0),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("options", LOW_PRECISION_OPTIONS, ids=lambda o: "-".join(f"{k}={getattr(v, '__name__', v)}"
                                                                         for k, v in o.items()))
def test_16bit_step_is_the_fp32_step_rounded(cpu_isa, options, dtype):
    """An fp16 / bf16 step is the fp32 step of the widened values, rounded to nearest even, bit for bit: on AVX2
    and AVX-512 the 16-bit arrays are converted a vector register at a time with intrinsics (packet_io.h: 8 or 16
    elements, the rest element by element), on the baseline element by element in the update loop. Checked per step against an fp32 twin loaded from the
    16-bit state (the master copy and fp32 moments with master_weights), with sizes around the block and vector
    widths and values that round to fp16 subnormals, overflow to inf or sit on rounding ties; the grad is
    unscaled in place with a GradScaler."""
    options = dict(options)
    cls, grad_scale = options.pop("cls"), options.pop("grad_scale", None)
    master = options.get("master_weights", False)
    sizes = [1, 15, 255, 256, 257, 1000, 4099]  # the special values below are fp16's; bf16 rounds them too
    g = torch.Generator().manual_seed(3)
    special = torch.tensor([6e-8, -3e-8, 1e-5, 65504.0, -65519.0, 65520.0, 2049.0, 2051.0, 0.0, -0.0, 1.0 + 2**-11])
    init = [torch.randn(n, generator=g) * 4 for n in sizes]
    init[-1][:special.numel()] = special
    ps = [torch.nn.Parameter(t.to(dtype)) for t in init]
    qs = [torch.nn.Parameter(t.to(dtype).float()) for t in init]
    opt = cls(ps, lr=1e-2, **options)
    twin = cls(qs, lr=1e-2, **{k: v for k, v in options.items() if k != "master_weights"})
    for _ in range(3):
        grads = [(torch.randn(n, generator=g) * 1e-3 * (grad_scale or 1.0)).to(dtype) for n in sizes]
        for p, q, gr in zip(ps, qs, grads):
            p.grad, q.grad = gr.clone(), gr.float()
            if p in opt.state:  # the twin starts from the fp16 state (or the fp32 master copy and moments)
                q.data.copy_(opt.state[p]["master_param"] if master else p.detach().float())
                for key, value in opt.state[p].items():
                    if key in twin.state[q] and key != "step":
                        twin.state[q][key].copy_(value.float())
        if grad_scale is not None:
            for o in (opt, twin):
                o.grad_scale, o.found_inf = torch.tensor(grad_scale), torch.tensor(0.0)
        opt.step()
        twin.step()
        for p, q in zip(ps, qs):
            assert torch.equal(p.detach().view(torch.int16), q.detach().to(dtype).view(torch.int16))
            assert torch.equal(p.grad.view(torch.int16), q.grad.to(dtype).view(torch.int16))
            for key, value in opt.state[p].items():
                want = (q if key == "master_param" else twin.state[q][key]).detach().to(value.dtype)
                bits = torch.int16 if value.dtype == dtype else torch.int32
                assert torch.equal(value.view(bits), want.view(bits)), key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("options", [dict(), dict(amsgrad=True, maximize=True, weight_decay=0.01), dict(adamax=True),
                                     dict(stochastic_rounding=True, ema_decay=0.9)],
                         ids=["adamw", "amsgrad-maximize-l2", "adamax", "sr-ema"])
def test_16bit_non_finite_values_same_bits_on_every_isa(options, dtype):
    """NaN (either sign, any payload) and inf in 16-bit params and grads, at every position of a vector register
    and in the scalar tail: where the baseline's element-by-element conversions write a non-finite value, each
    ISA copy writes the same bits (bf16 NaN -> (bits >> 16) | 0x40, like math/float16.h; an fp16 NaN keeps its
    sign, but F16C keeps payload bits the portable conversion drops, see half_convert.h); finite values agree to
    the rounding that the baseline's unfused multiply-adds change; NaN / inf where torch's fp32 step has them."""
    options = dict(options)
    if options.get("stochastic_rounding") and dtype != torch.bfloat16:
        pytest.skip("stochastic rounding is for bf16 params")
    cls = fk.FusedAdamax if options.pop("adamax", False) else fk.FusedAdamW
    n = 45  # 2 registers of 16, or 5 of 8, and a tail
    bits = torch.randn(n, generator=torch.Generator().manual_seed(5)).to(dtype).view(torch.int16)
    nan_payloads = [0x7FC1, 0x7F81, -0x7F, 0x7E01] if dtype == torch.bfloat16 else [0x7E01, 0x7C01, -0x1FF, 0x7FFF]
    inf, neg_inf = (0x7F80, -0x80) if dtype == torch.bfloat16 else (0x7C00, -0x400)  # -0x80 == 0xFF80 as int16
    for i, b in zip(range(0, n, 5), nan_payloads + [inf, neg_inf] * 3):
        bits[i] = b
    init = bits.view(dtype)
    grad = init.flip(0).clone()
    outs = {}
    before = fk.cpu_isa()
    try:
        for isa in ("baseline", "avx2", "avx512"):
            if fk.set_cpu_isa(isa) != isa:
                continue
            p = torch.nn.Parameter(init.clone())
            torch.manual_seed(0)  # the stochastic-rounding seed
            opt = cls([p], lr=1e-2, **options)
            for _ in range(2):
                p.grad = grad.clone()
                opt.step()
            outs[isa] = [p.detach()] + [v for v in opt.state[p].values() if v.dim() > 0]  # not the step counts
    finally:
        fk.set_cpu_isa(before)
    for isa, got in outs.items():
        for a, b in zip(got, outs["baseline"]):
            if a.dtype == torch.float16:  # NaN: same sign
                a, b = (torch.where(t.isnan(), torch.copysign(torch.full_like(t, float("nan")), t), t) for t in (a, b))
            special = ~b.isfinite()
            assert torch.equal(a[special].view(torch.int16), b[special].view(torch.int16)), isa
            ulps = 2 * torch.finfo(a.dtype).eps  # one rounding of the 16-bit value (or SR's step) on either side
            torch.testing.assert_close(a[~special].float(), b[~special].float(), rtol=ulps, atol=0)
    q = torch.nn.Parameter(init.float())
    torch_options = {k: v for k, v in options.items() if k not in ("stochastic_rounding", "ema_decay")}
    twin = (torch.optim.Adamax if cls is fk.FusedAdamax else torch.optim.AdamW)([q], lr=1e-2, foreach=False,
                                                                              **torch_options)
    for _ in range(2):
        q.grad = grad.float()
        twin.step()
    got = outs["baseline"][0].float()
    assert torch.equal(got.isnan(), q.detach().isnan())
    assert torch.equal(got.isinf() & (got > 0), q.detach().isinf() & (q.detach() > 0))
