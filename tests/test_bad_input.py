"""Bad input never corrupts state (issue 8): each bad state_dict, hyper-parameter or tensor gets one clear
exception naming what is wrong, and every parameter, grad, state tensor and hyper-parameter is bitwise
unchanged after it (and the optimizer then steps exactly like an untouched twin)."""
import copy
import re

import pytest
import torch

import fused_kingma as fk


# ------------------------------------------------------------------------------------------------ helpers
from optimizer_snapshot import assert_same, snapshot  # noqa: E402  (tests/ is on sys.path under pytest)


SHAPES = [(7,), (3, 5), ()]


def trained(opt_cls=fk.FusedAdam, steps=2, seed=0, **kw):
    """An optimizer with two param groups and state after `steps` steps; grads set for the next step."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    opt = opt_cls([{"params": params[:1]}, {"params": params[1:], "lr": 3e-2}], lr=1e-2, **kw)
    for _ in range(steps + 1):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        if _ < steps:
            opt.step()
    return params, opt


def assert_steps_like_untouched_twin(params, opt, make_twin):
    """After the failed call, one more step gives bitwise what an optimizer that never saw it gives."""
    twin_params, twin = make_twin()
    opt.step()
    twin.step()
    for p, q in zip(params, twin_params):
        assert torch.equal(p, q)


def _escape(msg):
    return re.escape(msg)


# -------------------------------------------------------------------------------------- bad state_dicts
def _sgd_state_dict(params):
    sgd = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=0.1, momentum=0.9)
    for p in params:
        p.grad = torch.ones_like(p)
    sgd.step()
    return sgd.state_dict()


def _spoil(kind, sd, params):
    st0 = sd["state"][0]
    if kind == "other optimizer (SGD)":
        return _sgd_state_dict([torch.nn.Parameter(p.detach().clone()) for p in params])
    if kind == "other optimizer (Adamax)":
        twin_params, twin = trained(fk.FusedAdamax)
        return twin.state_dict()
    if kind == "missing exp_avg_sq":
        del st0["exp_avg_sq"]
    elif kind == "missing step":
        del sd["state"][2]["step"]
    elif kind == "missing group key":
        del sd["param_groups"][1]["betas"]
    elif kind == "exp_avg of wrong shape":
        st0["exp_avg"] = torch.zeros(3)
    elif kind == "exp_avg_sq of transposed shape":
        sd["state"][1]["exp_avg_sq"] = sd["state"][1]["exp_avg_sq"].mT.contiguous()
    elif kind == "0-dim param's exp_avg of shape (1,)":
        sd["state"][2]["exp_avg"] = sd["state"][2]["exp_avg"].reshape(1)
    elif kind == "exp_avg int64":
        st0["exp_avg"] = st0["exp_avg"].long()
    elif kind == "exp_avg complex":
        st0["exp_avg"] = st0["exp_avg"].to(torch.complex64)
    elif kind == "exp_avg not a tensor":
        st0["exp_avg"] = 0.0
    elif kind == "step int64 tensor":
        st0["step"] = torch.tensor(2)
    elif kind == "step of two elements":
        st0["step"] = torch.tensor([2.0, 2.0])
    elif kind == "not a state_dict":
        return {"model": sd}
    elif kind == "wrong group count":
        sd["param_groups"].append(dict(sd["param_groups"][0], params=[99]))
    elif kind == "wrong param count":
        sd["param_groups"][1]["params"] = sd["param_groups"][1]["params"][:1]
    return sd


BAD_STATE_DICTS = [
    ("other optimizer (SGD)", ValueError, "FusedAdam.load_state_dict: param group 0 lacks ['betas', 'eps']"),
    ("other optimizer (Adamax)", ValueError,
     "FusedAdam.load_state_dict: state of param group 0, parameter 0 lacks ['exp_avg_sq'] (it has ['exp_avg', "
     "'exp_inf', 'step'])"),
    ("missing exp_avg_sq", ValueError, "state of param group 0, parameter 0 lacks ['exp_avg_sq']"),
    ("missing step", ValueError, "state of param group 1, parameter 1 lacks ['step']"),
    ("missing group key", ValueError, "param group 1 lacks ['betas']"),
    ("exp_avg of wrong shape", ValueError,
     "state of param group 0, parameter 0: 'exp_avg' has shape (3,) but the parameter has shape (7,)"),
    ("exp_avg_sq of transposed shape", ValueError,
     "state of param group 1, parameter 0: 'exp_avg_sq' has shape (5, 3) but the parameter has shape (3, 5)"),
    ("0-dim param's exp_avg of shape (1,)", ValueError,
     "state of param group 1, parameter 1: 'exp_avg' has shape (1,) but the parameter has shape ()"),
    ("exp_avg int64", TypeError,
     "'exp_avg' has dtype torch.int64 but a floating-point dtype was expected (parameter dtype torch.float32)"),
    ("exp_avg complex", TypeError, "'exp_avg' has dtype torch.complex64 but a floating-point dtype was expected"),
    ("exp_avg not a tensor", TypeError, "'exp_avg' must be a tensor, got float 0.0"),
    ("step int64 tensor", TypeError,
     "'step' must be a number or a 1-element floating-point tensor, got a tensor of shape () and dtype torch.int64"),
    ("step of two elements", TypeError, "'step' must be a number or a 1-element floating-point tensor"),
    ("not a state_dict", ValueError, "expected a dict with 'state' and 'param_groups'"),
    ("wrong group count", ValueError, "different number of parameter groups"),  # torch's own check
    ("wrong param count", ValueError, "doesn't match the size of optimizer's group"),  # torch's own check
]


@pytest.mark.parametrize("kind,exc,msg", BAD_STATE_DICTS, ids=[b[0] for b in BAD_STATE_DICTS])
def test_bad_state_dict_is_refused_at_load_and_changes_nothing(kind, exc, msg):
    params, opt = trained()
    sd = _spoil(kind, copy.deepcopy(opt.state_dict()), params)
    before = snapshot(opt)
    with pytest.raises(exc, match=_escape(msg)):
        opt.load_state_dict(sd)
    assert_same(before, snapshot(opt))
    assert_steps_like_untouched_twin(params, opt, trained)


def test_python_number_step_loads_like_torch():
    """Old torch checkpoints hold 'step' as a Python number; torch converts it, so do we."""
    params, opt = trained()
    sd = copy.deepcopy(opt.state_dict())
    for st in sd["state"].values():
        st["step"] = int(st["step"].item())
    params2, opt2 = trained()
    opt2.load_state_dict(sd)
    assert_steps_like_untouched_twin(params2, opt2, trained)


# ------------------------------------------------------------------------------- bad hyper-parameters
BAD_GROUP_SETTINGS = [
    ("lr", lambda: torch.tensor(0.01, device="meta"), ValueError,
     "FusedAdamW: param group 1: lr must be a number or a 1-element real tensor on the CPU or the parameters' "
     "device (cpu), got a tensor of shape () and dtype torch.float32 on meta"),
    ("lr", lambda: torch.tensor([0.01, 0.02]), ValueError, "lr must be a number or a 1-element real tensor"),
    ("lr", lambda: torch.tensor(0.01 + 0j), ValueError, "lr must be a number or a 1-element real tensor"),
    ("lr", lambda: torch.tensor(float("nan")), ValueError, "param group 1: lr must be finite, got nan"),
    ("lr", lambda: float("inf"), ValueError, "param group 1: lr must be finite, got inf"),
    ("eps", lambda: float("inf"), ValueError, "param group 1: eps must be finite, got inf"),
    ("eps", lambda: float("-inf"), ValueError, "param group 1: eps must be finite, got -inf"),
    ("weight_decay", lambda: float("nan"), ValueError, "param group 1: weight_decay must be finite"),
    ("betas", lambda: (float("nan"), 0.999), ValueError, "param group 1: betas[0] must be finite, got nan"),
    ("betas", lambda: (0.9, 1.0), ValueError, "param group 1: betas[1] must be in [0, 1), got 1.0"),
    ("betas", lambda: (0.9, 1.5), ValueError, "param group 1: betas[1] must be in [0, 1), got 1.5"),
    ("betas", lambda: (-0.5, 0.999), ValueError, "param group 1: betas[0] must be in [0, 1), got -0.5"),
    ("betas", lambda: (torch.tensor(0.9, device="meta"), 0.999), ValueError,
     "param group 1: betas[0] must be a number or a 1-element real tensor"),
    ("ema_decay", lambda: float("nan"), ValueError, "param group 1: ema_decay must be finite, got nan"),
    ("ema_decay", lambda: 1.0, ValueError, "param group 1: ema_decay must be in [0, 1), got 1.0"),
]


@pytest.mark.parametrize("opt_cls", [fk.FusedAdamW, fk.FusedAdamax])
@pytest.mark.parametrize("key,make,exc,msg", BAD_GROUP_SETTINGS,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD_GROUP_SETTINGS)])
def test_bad_hyper_parameter_changes_nothing(opt_cls, key, make, exc, msg):
    params, opt = trained(opt_cls)
    good = opt.param_groups[1][key]
    opt.param_groups[1][key] = make()
    msg = msg.replace("FusedAdamW", opt_cls.__name__)
    before = snapshot(opt)
    with pytest.raises(exc, match=_escape(msg)):
        opt.step()  # group 0 is fine and comes first: it must not have been stepped either
    assert_same(before, snapshot(opt))
    opt.param_groups[1][key] = good
    assert_steps_like_untouched_twin(params, opt, lambda: trained(opt_cls))


@pytest.mark.parametrize("opt_cls", [fk.FusedAdam, fk.FusedAdamW, fk.FusedAdamax])
def test_meta_lr_tensor_is_refused_by_the_constructor(opt_cls):
    with pytest.raises(ValueError, match=_escape(f"{opt_cls.__name__}: lr must be a number or a 1-element real "
                                                 "tensor with a value, got a tensor on meta")):
        opt_cls([torch.nn.Parameter(torch.zeros(2))], lr=torch.tensor(1e-3, device="meta"))


# ------------------------------------------------------------------------------------- bad tensors
def _set_grad(p, g):
    p.grad = None
    p.grad = torch.zeros_like(p)
    p.grad.data = g  # .data bypasses autograd's own dtype/shape check on assignment, like a buggy hook would


BAD_TENSORS = [
    ("complex grad of a real param", lambda ps: _set_grad(ps[1], torch.zeros(3, 5, dtype=torch.complex64)),
     TypeError, "FusedAdam: param group 1, parameter 0: grad has dtype torch.complex64 but torch.float32 was expected"),
    ("bf16 grad of an fp32 param", lambda ps: _set_grad(ps[1], torch.zeros(3, 5, dtype=torch.bfloat16)),
     TypeError, "param group 1, parameter 0: grad has dtype torch.bfloat16 but torch.float32 was expected"),
    ("grad of shape (1,) for a 0-dim param", lambda ps: _set_grad(ps[2], torch.zeros(1)),
     ValueError, "param group 1, parameter 1: grad has shape (1,) but the parameter has shape ()"),
    ("transposed grad", lambda ps: _set_grad(ps[1], torch.zeros(5, 3)),
     ValueError, "param group 1, parameter 0: grad has shape (5, 3) but the parameter has shape (3, 5)"),
    ("sparse grad", lambda ps: setattr(ps[1], "grad", torch.zeros(3, 5).to_sparse()),
     RuntimeError, "param group 1, parameter 0: grad is sparse"),
]


@pytest.mark.parametrize("name,spoil,exc,msg", BAD_TENSORS, ids=[b[0] for b in BAD_TENSORS])
def test_bad_grad_changes_nothing(name, spoil, exc, msg):
    params, opt = trained(fk.FusedAdam)
    good = params[1].grad.clone(), params[2].grad.clone()
    spoil(params)
    before = snapshot(opt)
    with pytest.raises(exc, match=_escape(msg)):
        opt.step()
    assert_same(before, snapshot(opt))
    params[1].grad, params[2].grad = good
    assert_steps_like_untouched_twin(params, opt, lambda: trained(fk.FusedAdam))


@pytest.mark.parametrize("opt_cls", [fk.FusedAdam, fk.FusedAdamW, fk.FusedAdamax])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_params_are_refused(opt_cls, dtype):
    good = torch.nn.Parameter(torch.randn(4))
    bad = torch.zeros(3, dtype=dtype)
    opt = opt_cls([good, bad])
    good.grad, bad.grad = torch.randn(4), torch.ones(3, dtype=dtype)
    before = snapshot(opt)
    name = str(dtype)
    with pytest.raises(TypeError, match=_escape(f"{opt_cls.__name__}: param group 0, parameter 1: parameters must "
                                                f"be float32, float64, float16, bfloat16 or complex; got {name}")):
        opt.step()
    assert_same(before, snapshot(opt))


# ---------------------------------------------------------------------------- reparameterize / gaussian_kl
MU = torch.randn(3, 4)
BAD_REPARAM = [
    ("complex mu", lambda: fk.reparameterize(MU.to(torch.complex64), MU.to(torch.complex64)), TypeError,
     "mu must be float32, float64, float16 or bfloat16, got torch.complex64"),
    ("complex logvar", lambda: fk.reparameterize(MU, MU.to(torch.complex64)), TypeError,
     "logvar must be float32, float64, float16 or bfloat16, got torch.complex64"),
    ("int prior", lambda: fk.reparameterize(MU, MU, prior=(torch.zeros(4, dtype=torch.long), torch.zeros(4))),
     TypeError, "prior[0] (prior mean) must have mu's dtype torch.float32, got torch.int64"),
    ("prior on meta", lambda: fk.reparameterize(MU, MU, prior=(torch.zeros(4), torch.zeros(4, device="meta"))),
     ValueError, "prior[1] (prior logvar) must be on mu's device cpu, got meta"),
    ("prior not broadcastable", lambda: fk.reparameterize(MU, MU, prior=(torch.zeros(3, 1), torch.zeros(2, 4))),
     ValueError, "prior[1] (prior logvar) of shape (2, 4) must broadcast to mu's shape (3, 4)"),
    ("prior broadcasting mu up", lambda: fk.reparameterize(MU, MU, prior=(torch.zeros(2, 3, 4), torch.zeros(4))),
     ValueError, "prior[0] (prior mean) of shape (2, 3, 4) must broadcast to mu's shape (3, 4)"),
    ("free_bits nan", lambda: fk.reparameterize(MU, MU, free_bits=float("nan")), ValueError,
     "free_bits must be None or a number >= 0, got nan"),
    ("num_samples bool", lambda: fk.reparameterize(MU, MU, num_samples=True), ValueError,
     "num_samples must be an integer >= 1, got True"),
    ("kl complex", lambda: fk.gaussian_kl(MU.to(torch.complex128), MU.to(torch.complex128)), TypeError,
     "mu must be float32, float64, float16 or bfloat16, got torch.complex128"),
    ("kl mu 0-dim", lambda: fk.gaussian_kl(torch.tensor(0.0), torch.tensor(0.0)), ValueError,
     "mu must have at least one dimension"),
]


@pytest.mark.parametrize("name,call,exc,msg", BAD_REPARAM, ids=[b[0] for b in BAD_REPARAM])
def test_bad_reparam_input_is_refused_before_any_randomness_is_used(name, call, exc, msg):
    before = torch.random.get_rng_state()
    with pytest.raises(exc, match=_escape(msg)):
        call()
    assert torch.equal(before, torch.random.get_rng_state())


# Direct torch.ops calls skip the Python checks: the native ops check the same things themselves (one shared
# check, csrc/reparam_glue.h), forward and backward alike. Before it, the CPU backward dereferenced a missing
# prior logvar and ran with a negative num_samples.
_SO = torch.tensor([1, 2])
_GZ, _GKL = torch.zeros(3, 4), torch.zeros(3)
BAD_NATIVE_REPARAM = [
    ("fwd negative samples", lambda: fk._ops.ops.reparam_fwd(MU, MU, None, None, _SO, -1, False),
     "num_samples must be >= 0"),
    ("bwd negative samples", lambda: fk._ops.ops.reparam_bwd(_GZ, _GKL, None, None, MU, MU, None, None, _SO, -1),
     "num_samples must be >= 0"),
    ("fwd half prior", lambda: fk._ops.ops.reparam_fwd(MU, MU, torch.zeros(4), None, _SO, 1, False),
     "prior needs both mean and logvar"),
    ("bwd half prior", lambda: fk._ops.ops.reparam_bwd(_GZ, _GKL, None, None, MU, MU, torch.zeros(4), None, _SO, 1),
     "prior needs both mean and logvar"),
    ("bwd logvar shape", lambda: fk._ops.ops.reparam_bwd(_GZ, _GKL, None, None, MU, MU[:, :3], None, None, _SO, 1),
     "logvar must have mu's shape"),
    ("bwd mu 0-dim", lambda: fk._ops.ops.reparam_bwd(_GZ, _GKL, None, None, MU[0, 0], MU[0, 0], None, None, _SO, 1),
     "mu must have at least one dimension"),
]


@pytest.mark.parametrize("name,call,msg", BAD_NATIVE_REPARAM, ids=[b[0] for b in BAD_NATIVE_REPARAM])
def test_native_reparam_ops_check_their_arguments(name, call, msg):
    with pytest.raises(RuntimeError, match=_escape(msg)):
        call()
