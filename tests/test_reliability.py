"""Reliability: thread safety, deepcopy/pickle, odd parameter layouts (issue 8; bad input: test_bad_input.py)."""
import copy
import io
import pickle
import threading

import pytest
import torch

import fused_kingma
from fused_kingma import FusedAdam, FusedAdamW


def _make(opt_cls, seed, n=4099, **kw):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=g, requires_grad=True), torch.randn(33, 17, generator=g, requires_grad=True)]
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(5)]
    return params, opt_cls(params, lr=1e-2, **kw), grads


def _run(params, opt, grads):
    for gs in grads:
        for p, gr in zip(params, gs):
            p.grad = gr.clone()
        opt.step()


def _snapshot(params, opt):
    return copy.deepcopy(([p.detach().clone() for p in params], opt.state_dict()))


def _assert_bitwise(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b) and a.dtype == b.dtype
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_bitwise(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_bitwise(x, y)
    else:
        assert a == b or (a != a and b != b)


@pytest.mark.parametrize("opt_cls", [FusedAdam, FusedAdamW])
def test_two_optimizers_in_two_threads_match_sequential(opt_cls):
    seq = [_make(opt_cls, s, amsgrad=True) for s in (1, 2)]
    for job in seq:
        _run(*job)
    par = [_make(opt_cls, s, amsgrad=True) for s in (1, 2)]
    threads = [threading.Thread(target=_run, args=job) for job in par]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (ps, os_, _), (pp, op, _) in zip(seq, par):
        _assert_bitwise(_snapshot(ps, os_), _snapshot(pp, op))


def test_reparameterize_in_threads_with_seeds_matches_sequential():
    mu, logvar = torch.randn(64, 37), torch.randn(64, 37)
    seeds = list(range(8))
    seq = [fused_kingma.reparameterize(mu, logvar, seed=s, offset=3) for s in seeds]
    out = [None] * len(seeds)

    def work(i):
        for _ in range(20):
            out[i] = fused_kingma.reparameterize(mu, logvar, seed=seeds[i], offset=3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(seeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(seq, out):
        _assert_bitwise(list(a), list(b))


@pytest.mark.parametrize("opt_cls", [FusedAdam, FusedAdamW])
def test_deepcopy_optimizer_steps_identically(opt_cls):
    params, opt, grads = _make(opt_cls, 3)
    _run(params, opt, grads[:2])
    # deepcopy params and optimizer together (as deepcopy of a model + optimizer does): the copy's state
    # is keyed by the copied params
    params2, opt2 = copy.deepcopy((params, opt))
    assert type(opt2) is type(opt) and opt2.param_groups[0]["params"][0] is params2[0]
    for p, p2 in zip(params, params2):
        assert torch.equal(p, p2)
    _run(params, opt, grads[2:])
    _run(params2, opt2, grads[2:])
    for p, p2 in zip(params, params2):
        assert torch.equal(p, p2)


def test_state_dict_pickle_round_trip_loads_and_steps_identically():
    params, opt, grads = _make(FusedAdamW, 4, amsgrad=True)
    _run(params, opt, grads[:2])
    sd = pickle.loads(pickle.dumps(opt.state_dict()))
    params2 = [p.detach().clone().requires_grad_() for p in params]
    opt2 = FusedAdamW(params2, lr=1e-2, amsgrad=True)
    opt2.load_state_dict(sd)
    _run(params, opt, grads[2:])
    _run(params2, opt2, grads[2:])
    _assert_bitwise(_snapshot(params, opt), _snapshot(params2, opt2))


def test_channels_last_param_matches_torch():
    g = torch.Generator().manual_seed(5)
    p = torch.randn(2, 3, 5, 7, generator=g).to(memory_format=torch.channels_last).requires_grad_()
    q = p.detach().clone().requires_grad_()
    assert not p.is_contiguous()
    opt, ref = FusedAdamW([p], lr=1e-2), torch.optim.AdamW([q], lr=1e-2, foreach=False)
    for _ in range(3):
        gr = torch.randn(p.shape, generator=g).to(memory_format=torch.channels_last)
        p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    assert p.is_contiguous(memory_format=torch.channels_last)


def test_params_sharing_storage_are_updated_like_torch():
    """Two params that are disjoint views of one tensor: each gets its own update, like torch."""
    base = torch.randn(10)
    base_ref = base.clone()
    ps = [base[:5].requires_grad_() if False else torch.nn.Parameter(base[:5]), torch.nn.Parameter(base[5:])]
    qs = [torch.nn.Parameter(base_ref[:5]), torch.nn.Parameter(base_ref[5:])]
    opt, ref = FusedAdam(ps, lr=0.1), torch.optim.Adam(qs, lr=0.1, foreach=False)
    for k in range(3):
        for p, q in zip(ps, qs):
            gr = torch.full(p.shape, float(k + 1))
            p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(base, base_ref, rtol=1e-6, atol=1e-7)


def test_param_without_grad_and_zero_dim_param():
    a = torch.nn.Parameter(torch.tensor(1.5))
    b = torch.nn.Parameter(torch.randn(3))
    a2, b2 = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())
    opt, ref = FusedAdam([a, b], lr=0.1), torch.optim.Adam([a2, b2], lr=0.1, foreach=False)
    a.grad, a2.grad = torch.tensor(0.3), torch.tensor(0.3)
    opt.step()
    ref.step()
    torch.testing.assert_close(a, a2)
    assert torch.equal(b, b2) and b not in opt.state
    assert set(opt.state_dict()["state"].keys()) == set(ref.state_dict()["state"].keys())


def test_nan_inf_propagate_like_torch():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    q = torch.nn.Parameter(p.detach().clone())
    opt, ref = FusedAdam([p], lr=0.1), torch.optim.Adam([q], lr=0.1, foreach=False)
    g = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    p.grad, q.grad = g.clone(), g.clone()
    opt.step()
    ref.step()
    torch.testing.assert_close(p, q, equal_nan=True)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"], equal_nan=True)
