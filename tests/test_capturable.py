"""capturable=True off the GPU: the CPU behaviour must not change (the GPU half is in tests/test_cuda.py)."""
import torch

import fused_kingma
from fused_kingma import _capturable


def make(cls, capturable, lr=1e-2):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s)) for s in [(7,), (3, 5)]]
    return params, cls(params, lr=lr, capturable=capturable, weight_decay=0.01)


def test_capturable_on_cpu_steps_like_non_capturable():
    for cls in (fused_kingma.FusedAdam, fused_kingma.FusedAdamW, fused_kingma.FusedAdamax):
        (pa, a), (pb, b) = make(cls, True), make(cls, False)
        for k in range(3):
            for x, y in zip(pa, pb):
                x.grad = torch.full_like(x, 0.1 * (k + 1))
                y.grad = x.grad.clone()
            a.step()
            b.step()
        for x, y in zip(pa, pb):
            assert torch.equal(x, y), cls.__name__
            assert a.state[x]["step"].device.type == "cpu" and a.state[x]["step"].item() == 3.0


def test_capturable_cpu_lr_tensor_and_found_inf_stay_on_the_host_path():
    params, opt = make(fused_kingma.FusedAdamW, True, lr=torch.tensor(1e-2))
    assert _capturable.device_lr(opt.param_groups[0]) is None  # a CPU lr is read on the host
    for p in params:
        p.grad = torch.ones_like(p)
    before = [p.detach().clone() for p in params]
    opt.grad_scale, opt.found_inf = torch.tensor([1.0]), torch.tensor([1.0])
    assert not _capturable.found_inf_read_on_device(opt.found_inf, opt.param_groups)
    opt.step()  # found_inf != 0: skipped on the host, nothing changes
    assert all(torch.equal(p, q) for p, q in zip(params, before)) and not opt.state
    opt.found_inf = torch.tensor([0.0])
    opt.step()
    assert all(not torch.equal(p, q) for p, q in zip(params, before))
