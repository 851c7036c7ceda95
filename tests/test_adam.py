"""FusedAdam / FusedAdamW / FusedAdamax against torch.optim (foreach=False) and fused_kingma.reference.

Tolerances: fp32 rtol=atol=1e-6 after 100 steps (the kernel follows torch's order of operations,
fusing exactly where aten's kernels fuse; remaining differences are single roundings);
fp64 1e-12; fp16/bf16: vs the reference (fp32 math, rounded storage) to 1 ulp of the storage
type, vs torch's bf16/fp16 for-loop (which rounds after every op) loosely.
"""
import collections
import contextlib
import copy
import io

import pytest
import torch

import fused_kingma as fk
from fused_kingma import reference
from optimizer_snapshot import assert_same, snapshot  # tests/ is on sys.path under pytest

SHAPES = [(5,), (3, 7), (1,), (0,), (33, 65), (2, 1, 3)]
PAIRS = [(torch.optim.Adam, fk.FusedAdam), (torch.optim.AdamW, fk.FusedAdamW), (torch.optim.Adamax, fk.FusedAdamax)]


def make_params(dtype=torch.float32, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in shapes]


def twin_run(torch_cls, fk_cls, steps=100, dtype=torch.float32, shapes=SHAPES, torch_kw=None, **kw):
    init = make_params(dtype, shapes)
    a = [torch.nn.Parameter(p.clone()) for p in init]
    b = [torch.nn.Parameter(p.clone()) for p in init]
    ot = torch_cls(a, **{**kw, **(torch_kw or {"foreach": False})})
    of = fk_cls(b, **kw)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for x, y in zip(a, b):
            g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
            x.grad, y.grad = g.clone(), g.clone()
        ot.step()
        of.step()
    return a, b, ot, of


OPTIONS = [
    {},
    {"amsgrad": True},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "decoupled_weight_decay": True},
    {"maximize": True, "weight_decay": 0.05},
    {"lr": torch.tensor(0.01)},
    {"lr": 0.01, "betas": (0.3, 0.9), "eps": 1e-6},  # lerp weight >= 0.5 takes aten's other formula
]


@pytest.mark.parametrize("kw", OPTIONS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "default")
def test_adam_matches_torch_fp32(kw):
    a, b, ot, of = twin_run(torch.optim.Adam, fk.FusedAdam, **kw)
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)
    for x, y in zip(a, b):
        for key in ot.state[x]:
            torch.testing.assert_close(of.state[y][key], ot.state[x][key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("torch_cls,fk_cls", PAIRS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_family_matches_torch(torch_cls, fk_cls, dtype, tol):
    kw = {"weight_decay": 0.02}
    if torch_cls is not torch.optim.Adamax:
        kw["amsgrad"] = True
    a, b, _, _ = twin_run(torch_cls, fk_cls, dtype=dtype, **kw)
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=tol, atol=tol)


@pytest.mark.parametrize("fk_cls,torch_cls", [(fk.FusedAdamW, torch.optim.AdamW), (fk.FusedAdamax, torch.optim.Adamax)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(fk_cls, torch_cls, dtype):
    # vs torch fused=True (fp32 math, rounded storage, as ours) loosely, and vs the reference tightly.
    # torch's fp16 for-loop loses eps=1e-8 (0 in fp16) and divides by 0; its fused AdamW computes in fp32.
    torch_kw = {"fused": True} if torch_cls is torch.optim.AdamW else {"foreach": False}
    if not (dtype == torch.float16 and torch_cls is torch.optim.Adamax):
        a, b, _, _ = twin_run(torch_cls, fk_cls, steps=30, dtype=dtype, torch_kw=torch_kw, lr=1e-2)
        for x, y in zip(a, b):
            torch.testing.assert_close(y.float(), x.float(), rtol=0.05, atol=0.05)
    # one step vs the reference, bitwise up to 1 ulp
    init = make_params(dtype)
    p = [torch.nn.Parameter(t.clone()) for t in init]
    q = [t.clone() for t in init]
    opt = fk_cls(p, lr=1e-2)
    grads = make_params(dtype, seed=5)
    for x, g in zip(p, grads):
        x.grad = g.clone()
    opt.step()
    second = "exp_inf" if fk_cls is fk.FusedAdamax else "exp_avg_sq"
    m = [torch.zeros_like(t) for t in q]
    v = [torch.zeros_like(t) for t in q]
    steps = [torch.tensor(0.0) for _ in q]
    reference.adam_step_(q, [g.clone() for g in grads], m, v, [], steps, [], [],
                         rule="adamax" if fk_cls is fk.FusedAdamax else "adam", lr=1e-2, beta1=0.9, beta2=0.999,
                         eps=1e-8, weight_decay=opt.param_groups[0]["weight_decay"],
                         decoupled_weight_decay=fk_cls is fk.FusedAdamW)
    for x, y, mm, vv in zip(p, q, m, v):
        ulp = torch.finfo(dtype).eps
        torch.testing.assert_close(x.float(), y.float(), rtol=ulp, atol=1e-6)
        torch.testing.assert_close(opt.state[x]["exp_avg"].float(), mm.float(), rtol=ulp, atol=1e-6)
        torch.testing.assert_close(opt.state[x][second].float(), vv.float(), rtol=ulp, atol=1e-6)
        assert opt.state[x]["exp_avg"].dtype == dtype  # state as torch keeps it


def test_non_contiguous_params_and_grads():
    base = torch.randn(6, 9)
    a = torch.nn.Parameter(base.t().clone().t())  # transposed layout (dense, not contiguous)
    b = torch.nn.Parameter(base.t().clone().t())
    big_a, big_b = torch.randn(8, 10), None
    big_b = big_a.clone()
    sa, sb = big_a[::2, 1:], big_b[::2, 1:]  # strided slice: not dense
    pa = [a, torch.nn.Parameter(sa.clone())]
    pb = [b, torch.nn.Parameter(sb.clone())]
    ot, of = torch.optim.Adam(pa, foreach=False, weight_decay=0.1), fk.FusedAdam(pb, weight_decay=0.1)
    for i in range(5):
        g = torch.randn(9, 6).t()  # non-contiguous grad for the first
        g2 = torch.randn(4, 18)[:, ::2]
        pa[0].grad, pb[0].grad = g.clone(), g.clone()
        pa[1].grad, pb[1].grad = g2, g2.clone()
        ot.step()
        of.step()
    for x, y in zip(pa, pb):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)
    assert of.state[b]["exp_avg"].stride() == ot.state[a]["exp_avg"].stride()  # preserve_format, like torch


def test_many_staged_grads_and_size_one_dim_strides_in_one_step():
    # Several read-only staged grads in one call (each temporary must live until the kernel ran: on CUDA a freed
    # one is handed to the next), and contiguous tensors whose size-1 dims carry odd strides (no staging needed).
    g = torch.Generator().manual_seed(3)
    shapes = [(7, 3)] * 6 + [(5, 1), (1, 4, 1)]
    pa = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    ot, of = torch.optim.Adam(pa, foreach=False, amsgrad=True), fk.FusedAdam(pb, amsgrad=True)
    for _ in range(4):
        grads = [torch.randn(3, 7, generator=g).t() for _ in range(6)]  # transposed: staged, only read
        grads += [torch.randn(1, 5, generator=g).t(), torch.randn(4, 1, 1, generator=g).permute(2, 0, 1)]
        assert grads[6].is_contiguous() and grads[6].stride() != pa[6].stride()
        for x, y, gr in zip(pa, pb, grads):
            x.grad, y.grad = gr.clone(), gr
        ot.step()
        of.step()
    for x, y in zip(pa, pb):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)


def test_param_groups_none_grads_and_many_tensors():
    shapes = [(64,)] * 300 + [(3,)] * 7
    init = make_params(shapes=shapes)
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    ot = torch.optim.AdamW([{"params": a[:200]}, {"params": a[200:], "lr": 0.01, "amsgrad": True}], foreach=False)
    of = fk.FusedAdamW([{"params": b[:200]}, {"params": b[200:], "lr": 0.01, "amsgrad": True}])
    for step in range(6):
        for i, (x, y) in enumerate(zip(a, b)):
            if (i + step) % 5 == 0:
                x.grad = y.grad = None
            else:
                g = torch.randn_like(x)
                x.grad, y.grad = g.clone(), g.clone()
        ot.step()
        of.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)
        assert (x in ot.state) == (y in of.state)
    of.zero_grad()
    assert all(p.grad is None for p in b)


def test_add_param_group_and_closure():
    p = torch.nn.Parameter(torch.randn(4))
    q = torch.nn.Parameter(torch.randn(3))
    opt = fk.FusedAdam([p])
    opt.add_param_group({"params": [q], "lr": 0.1})

    def closure():
        opt.zero_grad()
        loss = (p**2).sum() + (q**2).sum()
        loss.backward()
        return loss

    l0 = opt.step(closure)
    for _ in range(20):
        opt.step(closure)
    assert closure() < l0
    assert opt.state[q]["step"].item() == 21


@pytest.mark.parametrize("torch_cls,fk_cls", PAIRS)
def test_state_dict_round_trip_both_ways(torch_cls, fk_cls):
    def setup(cls, init, **kw):
        ps = [torch.nn.Parameter(t.clone()) for t in init]
        return ps, cls(ps, lr=0.01, **kw)

    init = make_params()
    grads = [make_params(seed=s) for s in range(20)]
    # reference: torch for 20 steps
    pr, orf = setup(torch_cls, init, foreach=False)
    for gs in grads:
        for p, g in zip(pr, gs):
            p.grad = g.clone()
        orf.step()
    for first, second in ((torch_cls, fk_cls), (fk_cls, torch_cls)):
        p1, o1 = setup(first, init, **({"foreach": False} if first is torch_cls else {}))
        for gs in grads[:10]:
            for p, g in zip(p1, gs):
                p.grad = g.clone()
            o1.step()
        buf = io.BytesIO()
        torch.save({"opt": o1.state_dict(), "params": [p.detach() for p in p1]}, buf)
        buf.seek(0)
        ck = torch.load(buf, weights_only=True)
        p2, o2 = setup(second, ck["params"], **({"foreach": False} if second is torch_cls else {}))
        o2.load_state_dict(ck["opt"])
        assert set(o2.state_dict()["state"][0]) >= {"step", "exp_avg"}
        assert o2.state[p2[0]]["step"].dtype == torch.float32 and o2.state[p2[0]]["step"].dim() == 0
        for gs in grads[10:]:
            for p, g in zip(p2, gs):
                p.grad = g.clone()
            o2.step()
        for x, y in zip(pr, p2):
            torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("make_sched", [
    lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5),
    lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.05, total_steps=12),
    lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0 / (1 + s)),
])
def test_schedulers(make_sched):
    a, b = make_params(shapes=[(7,), (4, 4)]), None
    b = [torch.nn.Parameter(t.clone()) for t in a]
    a = [torch.nn.Parameter(t.clone()) for t in a]
    ot, of = torch.optim.AdamW(a, foreach=False), fk.FusedAdamW(b)
    st, sf = make_sched(ot), make_sched(of)
    for _ in range(12):
        for x, y in zip(a, b):
            g = torch.randn_like(x)
            x.grad, y.grad = g.clone(), g.clone()
        ot.step()
        of.step()
        st.step()
        sf.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)


def test_grad_scaler_skips_inf_and_unscales():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    ref = copy.deepcopy(model)
    opt = fk.FusedAdam(model.parameters(), lr=0.01)
    ropt = torch.optim.Adam(ref.parameters(), lr=0.01, foreach=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(8, 4)
    for step in range(4):
        opt.zero_grad()
        ropt.zero_grad()
        loss = model(x).pow(2).sum()
        scaler.scale(loss).backward()
        ref(x).pow(2).sum().backward()
        if step == 2:
            model.weight.grad[0, 0] = float("inf")
            before = snapshot(opt)
        scaler.step(opt)
        scaler.update()
        if step == 2:
            assert_same(before, snapshot(opt))
        else:
            ropt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert opt.state[model.weight]["step"].item() == 3


def test_grad_scale_found_inf_attributes_like_torch_fused():
    def run(cls, **kw):
        p = torch.nn.Parameter(torch.ones(5))
        p.grad = torch.full((5,), 4.0)
        o = cls([p], maximize=True, **kw)
        o.grad_scale, o.found_inf = torch.tensor(2.0), torch.tensor(0.0)
        o.step()
        return p, o

    p1, _ = run(torch.optim.Adam, fused=True)
    p2, o2 = run(fk.FusedAdam)
    torch.testing.assert_close(p2, p1)
    torch.testing.assert_close(p2.grad, p1.grad)  # unscaled in place, like torch's fused kernel


BAD_INPUTS = [
    ("grad shape", lambda ps: setattr(ps[1].grad, "data", torch.randn(4)), ValueError,
     "FusedAdamW: param group 1, parameter 1: grad has shape (4,) but the parameter has shape (5,)"),
    ("grad dtype", lambda ps: setattr(ps[1].grad, "data", torch.randn(5, dtype=torch.float64)), TypeError,
     "parameter 1: grad has dtype torch.float64"),
    ("sparse grad", lambda ps: setattr(ps[0], "grad", torch.randn(3).to_sparse()), RuntimeError,
     "param group 1, parameter 0: grad is sparse"),
]


@pytest.mark.parametrize("name,spoil,exc,msg", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_grads_leave_everything_unchanged(name, spoil, exc, msg):
    ps = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(2))]
    extra = torch.nn.Parameter(torch.randn(2))  # a second group, stepped before the bad one would be
    opt = fk.FusedAdamW([{"params": [extra]}, {"params": ps}])
    for p in ps + [extra]:
        p.grad = torch.randn_like(p)
    opt.step()
    new = torch.nn.Parameter(torch.randn(4))  # a param without state yet must not get any
    opt.add_param_group({"params": [new]})
    new.grad = torch.randn(4)
    spoil(ps)
    before = snapshot(opt)
    with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)")):
        opt.step()
    assert_same(before, snapshot(opt))
    assert new not in opt.state


@pytest.mark.parametrize("group_kw,msg", [
    ({"lr": -1.0}, "lr must be >= 0"),
    ({"lr": float("nan")}, "lr must be finite"),
    ({"eps": -1e-8}, "eps must be >= 0"),
    ({"weight_decay": float("inf")}, "weight_decay must be finite"),
    ({"betas": (1.0, 0.999)}, r"betas\[0\] must be in \[0, 1\)"),
    ({"betas": (0.9, -0.1)}, r"betas\[1\] must be in \[0, 1\)"),
])
def test_bad_hyper_parameters_in_groups(group_kw, msg):
    ps = [torch.nn.Parameter(torch.randn(3))]
    opt = fk.FusedAdam(ps)
    ps[0].grad = torch.randn(3)
    opt.step()
    opt.param_groups[0].update(group_kw)
    before = snapshot(opt)
    with pytest.raises(ValueError, match=msg):
        opt.step()
    assert_same(before, snapshot(opt))


def test_constructor_validation_like_torch():
    p = [torch.nn.Parameter(torch.randn(2))]
    for kw, msg in [({"lr": -1}, "Invalid learning rate: -1"), ({"eps": -1}, "Invalid epsilon value"),
                    ({"betas": (1.0, 0.9)}, "Invalid beta parameter at index 0"),
                    ({"weight_decay": -1}, "Invalid weight_decay value"), ({"ema_decay": 1.5}, "ema_decay")]:
        with pytest.raises(ValueError, match=msg):
            fk.FusedAdam(p, **kw)
    with pytest.raises(NotImplementedError):
        fk.FusedAdamW(p, differentiable=True)
    fk.FusedAdam(p, foreach=False, fused=True, capturable=False)  # accepted like torch


def test_complex_params_like_torch():
    a, b, _, _ = twin_run(torch.optim.Adam, fk.FusedAdam, steps=20, dtype=torch.complex64, shapes=[(4,), (2, 3)],
                          weight_decay=0.1)
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)


def test_isa_paths_agree(cpu_isa):
    # Each ISA copy vs torch (fp32, bf16 via reference tolerance): all paths follow the same math.
    a, b, _, _ = twin_run(torch.optim.AdamW, fk.FusedAdamW, steps=20, shapes=[(37,), (1000,), (3, 5)], amsgrad=True)
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)
    a, b, _, _ = twin_run(torch.optim.Adamax, fk.FusedAdamax, steps=10, shapes=[(37,), (1000,)],
                          torch_kw={"foreach": False}, dtype=torch.float64)
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-12)


def test_large_tensor_uses_threads_and_matches():
    a, b, _, _ = twin_run(torch.optim.Adam, fk.FusedAdam, steps=3, shapes=[(300_001,), (70_000,)])
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)


@contextlib.contextmanager
def _single_process_group(tmp_path):
    """A gloo group of one rank for the test (file rendezvous: no fixed port to collide with another test run on
    this machine); an existing group is used as it is."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch without distributed")
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        yield dist
    finally:
        if created:
            dist.destroy_process_group()


def test_dtensor_params_run_on_local_shards(tmp_path):
    with _single_process_group(tmp_path) as dist:
        from torch.distributed.tensor import DTensor, Replicate, init_device_mesh
        mesh = init_device_mesh("cpu", (1,))
        local = torch.randn(6)
        p = torch.nn.Parameter(DTensor.from_local(local.clone(), mesh, [Replicate()]))
        q = torch.nn.Parameter(local.clone())
        op, oq = fk.FusedAdamW([p]), torch.optim.AdamW([q], foreach=False)
        for _ in range(3):
            g = torch.randn(6)
            p.grad = DTensor.from_local(g.clone(), mesh, [Replicate()])
            q.grad = g.clone()
            op.step()
            oq.step()
        assert isinstance(op.state[p]["exp_avg"], DTensor)
        torch.testing.assert_close(p.to_local(), q.detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_conversions_on_every_isa(cpu_isa, dtype):
    # Subnormals, large values, exact zeros and signed zeros through the bit-trick conversions,
    # vs the reference (torch's own .to() rounding).
    info = torch.finfo(dtype)
    special = torch.tensor([0.0, -0.0, info.tiny, info.tiny / 4, -info.tiny / 2, 1e-3, info.max / 2, -info.max / 4,
                            1.0, -1.5, 3.14159])
    init = torch.cat([special, torch.randn(200) * 10]).to(dtype)
    grad = torch.cat([torch.randn(special.numel()), torch.randn(200)]).to(dtype)
    p = torch.nn.Parameter(init.clone())
    p.grad = grad.clone()
    opt = fk.FusedAdam([p], lr=1e-2, weight_decay=0.01)
    opt.step()
    q, m, v = init.clone(), torch.zeros_like(init), torch.zeros_like(init)
    reference.adam_step_([q], [grad.clone()], [m], [v], [], [torch.tensor(0.0)], [], [], lr=1e-2, beta1=0.9,
                         beta2=0.999, eps=1e-8, weight_decay=0.01)
    ulp = torch.finfo(dtype).eps
    torch.testing.assert_close(p.detach().float(), q.float(), rtol=ulp, atol=0)
    torch.testing.assert_close(opt.state[p]["exp_avg"].float(), m.float(), rtol=ulp, atol=0)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"].float(), v.float(), rtol=ulp, atol=0)


def test_non_finite_values_propagate_like_torch():
    init = torch.tensor([1.0, 2.0, float("inf"), -3.0, 0.5])
    grad = torch.tensor([float("nan"), 1.0, 1.0, float("inf"), -1.0])
    for kw in ({}, {"weight_decay": 0.1}, {"amsgrad": True}):
        a, b = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
        ta, fb = torch.optim.Adam([a], foreach=False, **kw), fk.FusedAdam([b], **kw)
        for _ in range(2):
            a.grad, b.grad = grad.clone(), grad.clone()
            ta.step()
            fb.step()
        torch.testing.assert_close(b, a, equal_nan=True)
        torch.testing.assert_close(fb.state[b]["exp_avg_sq"], ta.state[a]["exp_avg_sq"], equal_nan=True)


def test_first_step_skipped_by_grad_scaler_then_normal_steps():
    # State created for a skipped (or failed) first step must not linger outside optimizer.state.
    p, q = torch.nn.Parameter(torch.randn(5)), None
    q = torch.nn.Parameter(p.detach().clone())
    opt, ref = fk.FusedAdam([p]), torch.optim.Adam([q], foreach=False)
    p.grad = torch.randn(5)
    opt.grad_scale, opt.found_inf = torch.tensor(1.0), torch.tensor(1.0)
    opt.step()
    del opt.grad_scale, opt.found_inf
    assert p not in opt.state
    for _ in range(3):
        g = torch.randn(5)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    assert opt.state_dict()["state"][0]["step"].item() == 3


def test_adam_schema_argument_positions_match_the_boxed_kernels():
    # csrc/boxed_adam.h (and the CUDA glue's lr-tensor twin) read the arguments by position on the dispatcher's
    # stack: a schema edit must come with an edit there.
    lists = ["params", "grads", "exp_avgs", "second_moments", "max_second_moments", "steps", "master_params", "emas"]
    tail = ["beta1", "beta2", "eps", "weight_decay", "decoupled_weight_decay", "amsgrad", "maximize", "ema_decay",
            "stochastic_rounding", "seed"]
    from fused_kingma._ops import ops

    schema = [(a.name, str(a.type)) for a in ops.adam_step_.default._schema.arguments]
    assert [n for n, _ in schema] == lists + ["rule", "lr"] + tail + [
        "lr_is_fp32_tensor", "grad_scale", "found_inf", "check_only"]
    assert [t for _, t in schema] == ["List[Tensor]"] * 8 + ["str"] + ["float"] * 5 + ["bool"] * 3 + [
        "float", "bool", "int", "bool", "Optional[Tensor]", "Optional[Tensor]", "bool"]
    if hasattr(ops, "adam_step_lr_tensor_"):  # CUDA builds
        names = [a.name for a in ops.adam_step_lr_tensor_.default._schema.arguments]
        assert names == lists + ["rule", "lr"] + tail + ["grad_scale", "found_inf", "check_only"]


def test_written_tensors_sharing_memory_are_refused_untouched():
    # An expanded exp_avg (elements sharing memory) cannot be written in place: refused before anything changes,
    # step counters included. An expanded grad is only read, and steps like the reference; with grad_scale it
    # would be unscaled in place, so it is refused too.
    from fused_kingma._ops import ops

    ps = [torch.randn(3, 5), torch.randn(4)]
    grads = [torch.randn(5).expand(3, 5), torch.randn(4)]

    def fresh():
        return ([p.clone() for p in ps], [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps],
                [torch.tensor(2.0) for _ in ps])

    kw = dict(rule="adam", lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
              amsgrad=False, maximize=False, ema_decay=0.0, stochastic_rounding=False, seed=0,
              lr_is_fp32_tensor=False, found_inf=None)
    params, m, v, steps = fresh()
    m[0] = torch.zeros(5).expand(3, 5)
    before = [t.clone() for t in params + m + v + steps]
    with pytest.raises(ValueError, match="tensor 0: exp_avg has elements that share memory"):
        ops.adam_step_(params, grads, m, v, [], steps, [], [], grad_scale=None, check_only=False, **kw)
    assert all(torch.equal(x, y) for x, y in zip(before, params + m + v + steps))
    params, m, v, steps = fresh()
    with pytest.raises(ValueError, match=r"tensor 0: grad \(unscaled in place with grad_scale\) has elements"):
        ops.adam_step_(params, grads, m, v, [], steps, [], [], grad_scale=torch.tensor(2.0), check_only=False, **kw)
    assert all(s.item() == 2.0 for s in steps) and all(torch.equal(x, y) for x, y in zip(params, ps))
    ops.adam_step_(params, grads, m, v, [], steps, [], [], grad_scale=None, check_only=False, **kw)
    want_p, want_m, want_v, want_steps = fresh()
    reference.adam_step_(want_p, [g.contiguous() for g in grads], want_m, want_v, [], want_steps, [], [],
                         grad_scale=None, **kw)
    for got, want in zip(params + m + v + steps, want_p + want_m + want_v + want_steps):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("amsgrad,ema", [(False, False), (True, True)])
def test_opcheck_adam_step(amsgrad, ema):
    from fused_kingma._ops import ops

    ps = [torch.randn(5), torch.randn(3, 2)]
    args = (ps, [torch.randn_like(p) for p in ps], [torch.zeros_like(p) for p in ps],
            [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps] if amsgrad else [],
            [torch.tensor(0.0) for _ in ps], [], [torch.zeros_like(p) for p in ps] if ema else [])
    kw = dict(rule="adam", lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
              amsgrad=amsgrad, maximize=False, ema_decay=0.9 if ema else 0.0, stochastic_rounding=False, seed=0,
              lr_is_fp32_tensor=False, grad_scale=torch.tensor(2.0), found_inf=torch.tensor(0.0), check_only=False)
    torch.library.opcheck(ops.adam_step_.default, args, kw)


def _swap_param(opt, p):
    params = opt.param_groups[0]["params"]
    params[params.index(p)] = torch.nn.Parameter(torch.full_like(p, 0.5))


STATE_CHANGES = {
    "param state reset": lambda opt, p: opt.state.__setitem__(p, {}),
    "param state removed": lambda opt, p: opt.state.pop(p),
    "exp_avg replaced": lambda opt, p: opt.state[p].__setitem__("exp_avg", torch.zeros_like(p)),
    "step replaced": lambda opt, p: opt.state[p].__setitem__("step", torch.tensor(0.0)),
    "plain dict put back, then changed": lambda opt, p: (
        opt.state.__setitem__(p, dict(opt.state[p])), opt.state[p].__setitem__("exp_avg_sq", torch.ones_like(p))),
    "whole state replaced": lambda opt, p: setattr(opt, "state", collections.defaultdict(dict)),
    "param swapped in the group's list": _swap_param,
    "group's list replaced": lambda opt, p: opt.param_groups[0].__setitem__("params", opt.param_groups[0]["params"][1:]),
}


@pytest.mark.parametrize("change", list(STATE_CHANGES))
def test_state_changed_by_assignment_is_used_like_torch(change):
    # torch's optimizers read param_groups and state every step; FusedAdam caches the argument lists, and must
    # still see params and state replaced or reset by assignment (in-place changes need nothing).
    def run(make):
        g = torch.Generator().manual_seed(5)
        ps = [torch.nn.Parameter(torch.randn(6, generator=g)), torch.nn.Parameter(torch.randn(2, 3, generator=g))]
        opt = make(ps)
        for i in range(5):
            for p in opt.param_groups[0]["params"]:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
            if i == 1:
                STATE_CHANGES[change](opt, ps[0])
        return opt

    ours, theirs = run(lambda ps: fk.FusedAdam(ps, lr=0.1)), run(lambda ps: torch.optim.Adam(ps, lr=0.1, fused=True))
    assert len(ours.param_groups[0]["params"]) == len(theirs.param_groups[0]["params"])
    for p, q in zip(ours.param_groups[0]["params"], theirs.param_groups[0]["params"]):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
        assert ours.state[p].keys() == theirs.state[q].keys()
        for key in theirs.state[q]:
            torch.testing.assert_close(ours.state[p][key], theirs.state[q][key], rtol=1e-6, atol=1e-6)


def test_named_parameters_like_torch():
    # torch's optimizers take model.named_parameters() and keep the names in state_dict()["param_groups"]:
    # same steps, same names, and checkpoints load both ways.
    torch.manual_seed(0)
    ours_model, torch_model = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    torch_model.load_state_dict(ours_model.state_dict())
    ours = fk.FusedAdamW(ours_model.named_parameters(), lr=0.1)
    theirs = torch.optim.AdamW(torch_model.named_parameters(), lr=0.1, foreach=False)
    for _ in range(3):
        x = torch.randn(4, 3)
        for model, opt in ((ours_model, ours), (torch_model, theirs)):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for a, b in zip(ours_model.parameters(), torch_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert ours.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]
    assert theirs.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]
    torch.optim.AdamW(torch.nn.Linear(3, 2).named_parameters()).load_state_dict(ours.state_dict())
    fk.FusedAdamW(torch.nn.Linear(3, 2).named_parameters()).load_state_dict(theirs.state_dict())


def test_compiled_step_traces_the_op_and_equals_eager():
    # torch.compile(opt.step) puts fused_kingma::adam_step_ in the graph (no graph break around it) and steps
    # bit for bit like eager, with grads that change between steps.
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    g = torch.Generator().manual_seed(4)
    ps = [torch.nn.Parameter(torch.randn(5, 3, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    compiled, eager = fk.FusedAdamW(ps, lr=1e-2, weight_decay=0.1), fk.FusedAdamW(qs, lr=1e-2, weight_decay=0.1)
    step = torch.compile(compiled.step, backend=backend)
    for _ in range(3):
        for p, q in zip(ps, qs):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        step()
        eager.step()
    assert any("fused_kingma.adam_step_" in graph for graph in graphs)
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
        assert torch.equal(compiled.state[p]["exp_avg_sq"], eager.state[q]["exp_avg_sq"])
    assert compiled.state[ps[0]]["step"].item() == 3


def test_zero_redundancy_optimizer_wraps_fused_adamw(tmp_path):
    with _single_process_group(tmp_path) as dist:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        torch.manual_seed(0)
        m, r = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
        r.load_state_dict(m.state_dict())
        opt = ZeroRedundancyOptimizer(m.parameters(), optimizer_class=fk.FusedAdamW, lr=0.01)
        ref = torch.optim.AdamW(r.parameters(), lr=0.01, foreach=False)
        x = torch.randn(4, 5)
        for _ in range(3):
            opt.zero_grad()
            ref.zero_grad()
            m(x).sum().backward()
            r(x).sum().backward()
            opt.step()
            ref.step()
        for a, b in zip(m.parameters(), r.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fused_cls, torch_cls", [(fk.FusedAdam, torch.optim.Adam), (fk.FusedAdamW, torch.optim.AdamW),
                                                  (fk.FusedAdamax, torch.optim.Adamax)])
def test_param_group_keys_equal_torch_when_extras_are_off(fused_cls, torch_cls):
    # Strict loaders (torch.distributed.checkpoint) need the same keys on both sides.
    p = torch.nn.Parameter(torch.ones(3))
    ours = fused_cls([p]).state_dict()["param_groups"][0]
    theirs = torch_cls([p]).state_dict()["param_groups"][0]
    assert set(ours) == set(theirs)
    with_ema = fused_cls([p], ema_decay=0.9).state_dict()["param_groups"][0]
    assert with_ema["ema_decay"] == 0.9
