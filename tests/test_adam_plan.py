"""The optimizers' AdamPlan (csrc/adam_plan.cpp): from a group's second step on, a C++ object holding its cached
tensor lists calls adam_step_ and reads the grads itself. Everything it does must equal the torch.ops call it
replaces (fused_kingma.optim._plan_for returning None forces that call): results bit for bit, errors, and the
places where the op must stay visible (torch.compile, torch function and dispatch modes, the profiler)."""
import re

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import fused_kingma as fk
from fused_kingma import optim

SHAPES = [(64,)] * 40 + [(3, 5), (), (1,), (257,)]


def _no_plan(monkeypatch):
    monkeypatch.setattr(optim, "_plan_for", lambda lists: None)


def _plans(opt):
    return [entry[3].plan for entry in opt._lists_cache.values()]


def _run(opt_cls, dtype=torch.float32, steps=5, seed=0, groups=1, grad_scaler=False, **kw):
    torch.manual_seed(seed)  # stochastic rounding's key comes from the default generator
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]
    split = len(params) // 2
    spec = [{"params": params}] if groups == 1 else [{"params": params[:split]}, {"params": params[split:], "lr": 3e-2}]
    opt = opt_cls(spec, lr=1e-2, **kw)
    for k in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(dtype)
        if grad_scaler:  # as GradScaler does: scaled grads, grad_scale / found_inf on the optimizer
            for p in params:
                p.grad.mul_(1024.0)
            opt.grad_scale = torch.tensor(1024.0)
            opt.found_inf = torch.tensor(1.0 if k == 2 else 0.0)
        opt.step()
    return params, opt


def _state(params, opt):
    out = [p.detach().clone() for p in params]
    for p in params:
        for key, v in sorted(opt.state[p].items()):
            out.append(v.detach().clone() if torch.is_tensor(v) else torch.tensor(v))
    return out


OPTIONS = [
    (fk.FusedAdam, torch.float32, {}),
    (fk.FusedAdam, torch.float32, {"amsgrad": True, "weight_decay": 0.1, "maximize": True}),
    (fk.FusedAdamW, torch.float32, {"ema_decay": 0.9}),
    (fk.FusedAdamax, torch.float64, {"weight_decay": 0.01}),
    (fk.FusedAdam, torch.bfloat16, {"stochastic_rounding": True}),
    (fk.FusedAdamW, torch.float16, {"master_weights": True}),
    (fk.FusedAdam, torch.bfloat16, {"groups": 2}),
    (fk.FusedAdamW, torch.float32, {"grad_scaler": True, "groups": 2}),
]


@pytest.mark.parametrize("opt_cls,dtype,kw", OPTIONS, ids=[f"{c.__name__}-{d}-{sorted(k)}" for c, d, k in OPTIONS])
def test_plan_steps_bitwise_like_the_torch_ops_call(monkeypatch, opt_cls, dtype, kw):
    params, opt = _run(opt_cls, dtype, **kw)
    assert _plans(opt) and all(isinstance(p, fk._C.AdamPlan) for p in _plans(opt)), _plans(opt)
    got = _state(params, opt)
    _no_plan(monkeypatch)
    params, opt = _run(opt_cls, dtype, **kw)
    assert all(p is None for p in _plans(opt))
    want = _state(params, opt)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_plan_matches_torch_adam_in_a_training_loop():
    """Fresh grads from backward each step (zero_grad sets them to None): the plan reads the new ones."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(9, 17), torch.nn.Tanh(), torch.nn.Linear(17, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(9, 17), torch.nn.Tanh(), torch.nn.Linear(17, 3))
    twin.load_state_dict(model.state_dict())
    opt = fk.FusedAdam(model.parameters(), lr=1e-2)
    ref = torch.optim.Adam(twin.parameters(), lr=1e-2, foreach=False)
    x = torch.randn(32, 9)
    for _ in range(6):
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()
    assert isinstance(_plans(opt)[0], fk._C.AdamPlan)
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_a_param_without_grad_leaves_the_plan_for_the_general_path():
    params, opt = _run(fk.FusedAdam, steps=3)
    plan = _plans(opt)[0]
    frozen = params[5].detach().clone()
    frozen_state = opt.state[params[5]]["exp_avg"].clone()
    for p in params:
        p.grad = torch.ones_like(p)
    params[5].grad = None
    opt.step()
    assert torch.equal(params[5].detach(), frozen) and torch.equal(opt.state[params[5]]["exp_avg"], frozen_state)
    assert float(opt.state[params[0]]["step"]) == 4.0 and float(opt.state[params[5]]["step"]) == 3.0
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()  # all grads again: the cached lists (and their plan) are still the group's
    assert _plans(opt)[0] is plan and float(opt.state[params[5]]["step"]) == 4.0


BAD_GRADS = [
    ("shape", lambda p: torch.zeros(65), ValueError, "param group 0, parameter 3: grad has shape (65,)"),
    ("dtype", lambda p: torch.zeros(64, dtype=torch.float64), TypeError,
     "param group 0, parameter 3: grad has dtype torch.float64 but torch.float32 was expected"),
    ("sparse", lambda p: torch.zeros(64).to_sparse(), RuntimeError, "param group 0, parameter 3: grad is sparse"),
]


@pytest.mark.parametrize("use_plan", [True, False], ids=["plan", "torch.ops"])
@pytest.mark.parametrize("name,make,exc,msg", BAD_GRADS, ids=[b[0] for b in BAD_GRADS])
def test_bad_grad_through_the_plan_raises_the_same_error_and_changes_nothing(monkeypatch, use_plan, name, make,
                                                                           exc, msg):
    if not use_plan:
        _no_plan(monkeypatch)
    params, opt = _run(fk.FusedAdam, steps=3)
    for p in params:
        p.grad = torch.ones_like(p)
    bad = make(params[3])
    if bad.layout == torch.strided:
        params[3].grad = torch.zeros_like(params[3])
        params[3].grad.data = bad  # past autograd's own check on assignment, as a buggy hook would
    else:
        params[3].grad = bad
    before = _state(params, opt)
    with pytest.raises(exc, match=re.escape(f"FusedAdam: {msg}")):
        opt.step()
    for a, b in zip(before, _state(params, opt)):
        assert torch.equal(a, b)
    assert (_plans(opt)[0] is not None) == use_plan


class _RecordingFunctionMode(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


class _RecordingDispatchMode(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode_cls", [_RecordingFunctionMode, _RecordingDispatchMode])
def test_modes_see_the_op_although_a_plan_exists(mode_cls):
    params, opt = _run(fk.FusedAdam, steps=3)
    assert isinstance(_plans(opt)[0], fk._C.AdamPlan)
    for p in params:
        p.grad = torch.ones_like(p)
    with mode_cls() as mode:
        opt.step()
    assert any("fused_kingma.adam_step_" in s for s in mode.seen), mode.seen


def test_profiler_records_the_op_called_by_the_plan():
    params, opt = _run(fk.FusedAdam, steps=3)
    assert isinstance(_plans(opt)[0], fk._C.AdamPlan)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert "fused_kingma::adam_step_" in {e.key for e in prof.key_averages()}


def test_tensor_subclass_params_get_no_plan():
    class Tagged(torch.Tensor):
        pass

    params = [torch.nn.Parameter(torch.randn(8)) for _ in range(3)]
    opt = fk.FusedAdam(params, lr=1e-2)
    for _ in range(3):
        for p in params:
            p.grad = torch.ones(8)
        opt.step()
    assert isinstance(_plans(opt)[0], fk._C.AdamPlan)
    sub = [torch.randn(8).as_subclass(Tagged).requires_grad_() for _ in range(2)]
    opt = fk.FusedAdam(sub, lr=1e-2)
    for _ in range(3):
        for p in sub:
            p.grad = torch.ones(8)
        opt.step()
    assert _plans(opt) == [False]


def test_plan_refuses_what_is_not_a_tensor():
    with pytest.raises(TypeError, match="AdamPlan: exp_avgs must hold tensors, got int"):
        fk._C.AdamPlan([torch.zeros(1)], [1], [], [], [], [], [])
