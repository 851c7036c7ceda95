"""The Python package's CUDA paths over fake CUDA tensors (FakeTensorMode), on any machine with a CUDA build of
the extension: here that is .ci/load_check.sh's build loaded into the CPU torch, on the GPU machine the real one
(plain `make test` skips this file: a CPU build has no CUDA kernels to pick).

Fake tensors carry a device, shape and dtype but no data, and reading one on the host (.item(), float(),
bool()) raises DataDependentOutputException: so a step that runs to the end here makes no host read, which is
what capturable=True promises (a CUDA graph cannot capture one). The op each call reaches, with its arguments,
is recorded on the way. What this cannot see: the kernels (tests/test_cuda.py), and autograd over fake CUDA
tensors, which a CPU torch cannot run (its device guard has no CUDA), so the reparameterization here is the
forward without gradients.
"""
import pytest
import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import fused_kingma
from fused_kingma import _capturable

pytestmark = pytest.mark.skipif(not fused_kingma._C.built_with_cuda,
                                reason="needs a CUDA build of the extension (.ci/load_check.sh runs this file)")

CLASSES = [fused_kingma.FusedAdam, fused_kingma.FusedAdamW, fused_kingma.FusedAdamax]


class OpLog(TorchDispatchMode):
    """The ops called (innermost mode: it sees them before FakeTensorMode fakes them), with their arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.calls.append((str(func.overloadpacket), args, kwargs))
        return func(*args, **kwargs)

    def named(self, name):
        return [(args, kwargs) for op, args, kwargs in self.calls if op == name]


def fake_params(mode, dtype=torch.float32, shapes=((7,), (3, 5), (1,))):
    with mode:
        return [torch.nn.Parameter(torch.randn(s, device="cuda").to(dtype)) for s in shapes]


def set_grads(mode, params):
    with mode:
        for p in params:
            p.grad = torch.randn_like(p)


OPTIONS = {
    "plain": ({}, torch.float32),
    "amsgrad": ({"amsgrad": True}, torch.float32),
    "ema": ({"ema_decay": 0.99}, torch.float32),
    "fp16 master weights": ({"master_weights": True}, torch.float16),
    "bf16 stochastic rounding": ({"stochastic_rounding": True}, torch.bfloat16),
}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("lr_on_device", [False, True], ids=["float lr", "device lr"])
def test_capturable_step_reads_nothing_on_the_host(cls, option, lr_on_device):
    kwargs, dtype = OPTIONS[option]
    if cls is fused_kingma.FusedAdamax and "amsgrad" in kwargs:
        pytest.skip("Adamax has no amsgrad")
    mode = FakeTensorMode()
    params = fake_params(mode, dtype)
    opt = cls(params, lr=1e-3, weight_decay=0.01, capturable=True, **kwargs)  # torch's __init__ reads lr
    with mode:
        lr = torch.tensor(1e-3, device="cuda")
        if lr_on_device:
            opt.param_groups[0]["lr"] = lr  # as a scheduler's capturable lr tensor
        opt.grad_scale = torch.ones((), device="cuda")
        opt.found_inf = torch.zeros((), device="cuda")
    log = OpLog()
    for _ in range(2):  # the second step reads the state the first one made
        set_grads(mode, params)
        with mode, log:
            opt.step()
    name = "fused_kingma.adam_step_lr_tensor_" if lr_on_device else "fused_kingma.adam_step_"
    calls = log.named(name)
    assert len(calls) == 2 and not log.named("aten._local_scalar_dense"), [c[0] for c in log.calls]
    args, kw = calls[-1]
    assert [a.device.type for lst in args for a in lst] == ["cuda"] * sum(len(lst) for lst in args)
    assert kw["found_inf"] is opt.found_inf and kw["grad_scale"] is opt.grad_scale
    if lr_on_device:
        assert kw["lr"] is lr  # the tensor itself: an in-place change before a replay is seen
    for p in params:
        step = opt.state[p]["step"]
        assert step.device.type == "cuda" and step.dtype == torch.float32 and step.shape == ()
        if "master_weights" in kwargs:
            assert opt.state[p]["master_param"].dtype == torch.float32


def test_device_lr_needs_capturable_and_the_cuda_op():
    mode = FakeTensorMode()
    params = fake_params(mode)
    opt = fused_kingma.FusedAdamW(params, lr=1e-3)
    with mode:
        opt.param_groups[0]["lr"] = torch.tensor(1e-3, device="cuda")
    assert _capturable.HAS_LR_TENSOR_OP
    assert _capturable.device_lr(opt.param_groups[0]) is None  # not capturable: read on the host, as torch
    opt.param_groups[0]["capturable"] = True
    assert _capturable.device_lr(opt.param_groups[0]) is opt.param_groups[0]["lr"]


def test_non_capturable_step_reads_found_inf_on_the_host():
    # As torch's non-capturable Adam: a GradScaler's found_inf is read to skip the step. That read is what the
    # capturable test above would catch, so this shows the check works.
    mode = FakeTensorMode()
    params = fake_params(mode)
    opt = fused_kingma.FusedAdam(params, lr=1e-3)
    with mode:
        opt.found_inf = torch.zeros((), device="cuda")
    set_grads(mode, params)
    with mode, pytest.raises(DataDependentOutputException):
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("num_samples,prior,free_bits,log_prob", [
    (1, False, None, False), (3, False, None, True), (1, True, None, True), (2, True, 0.5, False),
    (1, False, 0.25, True)])
def test_reparameterize_keeps_everything_on_the_device(dtype, num_samples, prior, free_bits, log_prob):
    shape = (5, 3, 6)
    real_mu = torch.randn(shape, dtype=dtype)
    real_prior = (torch.randn(6, dtype=dtype), torch.randn(3, 6, dtype=dtype)) if prior else None
    want = fused_kingma.reparameterize(real_mu, real_mu, num_samples=num_samples, prior=real_prior,
                                       free_bits=free_bits, return_log_prob=log_prob, seed=1)
    mode, log = FakeTensorMode(), OpLog()
    with mode:
        mu = torch.randn(shape, device="cuda", dtype=dtype)
        lv = torch.randn(shape, device="cuda", dtype=dtype)
        pr = None
        if prior:  # one prior row shared by every row, and one per middle index (broadcast over the first)
            pr = (torch.randn(6, device="cuda", dtype=dtype), torch.randn(3, 6, device="cuda", dtype=dtype))
    with mode, log:
        got = fused_kingma.reparameterize(mu, lv, num_samples=num_samples, prior=pr, free_bits=free_bits,
                                          return_log_prob=log_prob)
    assert not log.named("aten._local_scalar_dense")
    (args, _), = log.named("fused_kingma.reparam_fwd")
    seed_offset = args[4]
    assert seed_offset.device.type == "cuda" and seed_offset.dtype == torch.int64 and seed_offset.shape == (2,)
    draws = [kw.get("device") for op, _, kw in log.calls if op == "aten.randint"]
    assert draws and all(torch.device(d).type == "cuda" for d in draws), draws  # the device's generator: graph-safe
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert (g.device.type, g.shape, g.dtype) == ("cuda", w.shape, w.dtype)
