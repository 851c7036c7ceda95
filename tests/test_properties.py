"""Property-based tests (hypothesis): random shapes, dtypes, strides and options against torch / the reference."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import fused_kingma
from fused_kingma import reference

shapes = st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple)
layouts = st.sampled_from(["contiguous", "transposed", "sliced"])


def _make(shape, dtype, layout, g):
    if layout == "transposed" and len(shape) >= 2:
        return torch.randn(shape[::-1], generator=g, dtype=torch.float64).to(dtype).mT if len(shape) == 2 else \
            torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    if layout == "sliced" and len(shape) >= 1:
        big = torch.randn((shape[0] * 2,) + shape[1:], generator=g, dtype=torch.float64).to(dtype)
        return big[::2]
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, layout=layouts, dtype=st.sampled_from([torch.float32, torch.float64]),
       decoupled=st.booleans(), amsgrad=st.booleans(), maximize=st.booleans(),
       wd=st.sampled_from([0.0, 0.1]), seed=st.integers(0, 2**31 - 1))
def test_adam_matches_torch(shape, layout, dtype, decoupled, amsgrad, maximize, wd, seed):
    g = torch.Generator().manual_seed(seed)
    p = _make(shape, dtype, layout, g).requires_grad_()
    q = p.detach().clone().requires_grad_()
    fused_cls, torch_cls = (fused_kingma.FusedAdamW, torch.optim.AdamW) if decoupled else \
        (fused_kingma.FusedAdam, torch.optim.Adam)
    kw = dict(lr=1e-2, weight_decay=wd, amsgrad=amsgrad, maximize=maximize)
    opt, ref = fused_cls([p], **kw), torch_cls([q], foreach=False, **kw)
    for _ in range(3):
        gr = _make(shape, dtype, layout, g)
        p.grad, q.grad = gr.clone(), gr.clone()
        opt.step()
        ref.step()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(p, q, **tol)


@settings(max_examples=30, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple), layout=layouts,
       dtype=st.sampled_from([torch.float32, torch.float64]), num_samples=st.integers(1, 3),
       seed=st.integers(0, 2**63 - 1), offset=st.integers(0, 2**40))
def test_reparameterize_matches_reference(shape, layout, dtype, num_samples, seed, offset):
    g = torch.Generator().manual_seed(seed % 2**31)
    mu, logvar = _make(shape, dtype, layout, g), _make(shape, dtype, layout, g)
    z, kl = fused_kingma.reparameterize(mu, logvar, num_samples=num_samples, seed=seed, offset=offset)
    eps = reference.reparam_eps_reference(seed, offset, mu.shape, num_samples=num_samples).to(dtype)
    z_ref, kl_ref = reference.reparameterize_reference(mu, logvar, eps)[:2]
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(z, z_ref, **tol)
    torch.testing.assert_close(kl, kl_ref, **tol)
