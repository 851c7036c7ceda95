"""Property-based tests (hypothesis): random shapes, dtypes, strides and options against torch / the reference.

Low precision (fp16/bf16) is checked against the reference's fp32 math on the same (exactly widened) inputs:
the kernels compute in fp32 and round each stored result once, so a result may differ from the fp32 value by
one rounding, |got - want| <= u * |want| (u = 2^-11 fp16, 2^-8 bf16), plus the fp32 math's own error, which is
bounded here by a small multiple of the magnitude of the terms summed (``scale``).
"""
import numpy as np
import torch
from hypothesis import given, settings, strategies as st

import fused_kingma
from fused_kingma import reference
from fused_kingma._ops import ops

LOW = (torch.float16, torch.bfloat16)
UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24, torch.float64: 2.0**-53}
shapes = st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple)
latent_shapes = st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple)
layouts = st.sampled_from(["contiguous", "transposed", "sliced"])
all_dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16])


def _make(shape, dtype, layout, g, scale=1.0):
    def rand(s):
        return (torch.randn(s, generator=g, dtype=torch.float64) * scale).to(dtype)

    if layout == "transposed" and len(shape) >= 2:
        return rand(shape[::-1]).mT if len(shape) == 2 else rand(shape)
    if layout == "sliced" and len(shape) >= 1:
        return rand((shape[0] * 2,) + shape[1:])[::2]
    return rand(shape)


def assert_within_rounding(got, want, dtype, scale, rounded_terms=0.0):
    """got (stored in `dtype`) vs want (fp32/fp64 math): one rounding of `dtype` plus fp32-math error of
    1e-5 * scale (fp64: 1e-12 * scale); `rounded_terms`: sum of |terms| that were each rounded to `dtype` before
    being summed into got (each adds up to u * |term|)."""
    got, want = got.double(), want.double()
    assert got.shape == want.shape
    math_err = (1e-12 if dtype == torch.float64 else 1e-5) * torch.as_tensor(scale, dtype=torch.float64)
    u = UNIT_ROUNDOFF[dtype]
    bound = u * want.abs() + math_err + u * torch.as_tensor(rounded_terms, dtype=torch.float64)
    bad = ~((got - want).abs() <= bound) & ~(got.isnan() & want.isnan())
    assert not bad.any(), f"{int(bad.sum())} of {got.numel()} outside: got {got[bad][:4]}, want {want[bad][:4]}"


# ----------------------------------------------------------------------------------------------------- Adam
@settings(max_examples=25, deadline=None)
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


OPTIMIZERS = {"adam": (fused_kingma.FusedAdam, "adam", False), "adamw": (fused_kingma.FusedAdamW, "adam", True),
              "adamax": (fused_kingma.FusedAdamax, "adamax", False)}


@settings(max_examples=40, deadline=None)
@given(shape=shapes, layout=layouts, dtype=st.sampled_from(LOW), name=st.sampled_from(sorted(OPTIMIZERS)),
       amsgrad=st.booleans(), maximize=st.booleans(), wd=st.sampled_from([0.0, 0.1]), master=st.booleans(),
       steps_before=st.integers(0, 3), seed=st.integers(0, 2**31 - 1))
def test_adam_low_precision_step_matches_fp32_reference(shape, layout, dtype, name, amsgrad, maximize, wd, master,
                                                       steps_before, seed):
    """From any state the optimizer reached, one fused fp16/bf16 step = reference.adam_step_ (fp32 math, each
    stored tensor rounded once) on copies of that state, within one rounding of the storage dtype."""
    cls, rule, decoupled = OPTIMIZERS[name]
    amsgrad = amsgrad and rule == "adam"
    g = torch.Generator().manual_seed(seed)
    p = _make(shape, dtype, layout, g).requires_grad_()
    hyper = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=wd, maximize=maximize)
    opt = cls([p], master_weights=master, **hyper, **({"amsgrad": amsgrad} if rule == "adam" else {}))
    for _ in range(steps_before + 1):
        p.grad = _make(shape, dtype, layout, g, scale=0.1)
        if _ < steps_before:
            opt.step()
    second_key = "exp_inf" if rule == "adamax" else "exp_avg_sq"
    state = {k: v.clone() for k, v in opt.state[p].items()} if p in opt.state else None
    before = p.detach().clone()
    opt.step()
    st_after = opt.state[p]

    if state is None:  # first step: the state the reference starts from is torch's zero state
        moment_dtype = torch.float32 if master else dtype
        state = {"step": torch.tensor(0.0), "exp_avg": torch.zeros(shape, dtype=moment_dtype),
                 second_key: torch.zeros(shape, dtype=moment_dtype)}
        if amsgrad:
            state["max_exp_avg_sq"] = torch.zeros(shape, dtype=moment_dtype)
        if master:
            state["master_param"] = before.float()
    ref_p = before.clone()
    # Magnitude of the terms each state update sums (the weight-decay term can cancel the gradient).
    theta = (state["master_param"] if master else before).float().abs()
    gterm = p.grad.float().abs() + wd * theta
    scales = {"exp_avg": state["exp_avg"].abs() + gterm, second_key: state[second_key].abs() + gterm * (gterm + 1),
              "master_param": theta + hyper["lr"]}
    scales["max_exp_avg_sq"] = scales[second_key] + state.get("max_exp_avg_sq", state[second_key]).abs()
    reference.adam_step_([ref_p], [p.grad.clone()], [state["exp_avg"]], [state[second_key]],
                         [state["max_exp_avg_sq"]] if amsgrad else [], [state["step"]],
                         [state["master_param"]] if master else [], [], rule=rule, lr=hyper["lr"], beta1=0.9,
                         beta2=0.99, eps=1e-6, weight_decay=wd, decoupled_weight_decay=decoupled, amsgrad=amsgrad,
                         maximize=maximize)
    assert float(st_after["step"]) == float(state["step"])
    # The fp32 math's own error in the update is relative to lr (the size of the step), not to the value.
    assert_within_rounding(p, ref_p, dtype, scale=hyper["lr"])
    for key in ("exp_avg", second_key) + (("max_exp_avg_sq",) if amsgrad else ()) + (
            ("master_param",) if master else ()):
        got = st_after[key]
        assert got.dtype == (torch.float32 if master else dtype), key
        assert_within_rounding(got, state[key], got.dtype, scale=scales[key])


# ------------------------------------------------------------------------------------------ reparameterize
def _prior_shape(data, shape):
    """A shape that broadcasts to `shape`: some leading dims dropped, some of the others set to 1."""
    drop = data.draw(st.integers(0, len(shape) - 1), label="prior dims dropped")
    kept = shape[drop:]
    ones = data.draw(st.lists(st.booleans(), min_size=len(kept), max_size=len(kept)), label="prior dims of size 1")
    return tuple(1 if one else s for s, one in zip(kept, ones))


def _kernel_eps(seed, offset, zshape):
    """The kernel's float32 noise for z (the definition is checked against its float64 spec in test_philox.py)."""
    n = int(np.prod(zshape))
    u64 = (1 << 64)
    return ops.philox_debug(seed - u64 if seed >= 1 << 63 else seed, offset, 0, (n + 3) // 4, 2)[:n].reshape(zshape)


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@settings(max_examples=40, deadline=None)
@given(shape=latent_shapes, layout=layouts, dtype=all_dtypes, num_samples=st.integers(1, 3),
       with_prior=st.booleans(), free_bits=st.one_of(st.none(), st.sampled_from([0.0, 0.3, 2.0])),
       return_log_prob=st.booleans(), seed=st.integers(0, 2**64 - 1), offset=st.integers(0, 2**40),
       data=st.data())
def test_reparameterize_matches_reference(shape, layout, dtype, num_samples, with_prior, free_bits, return_log_prob,
                                          seed, offset, data):
    g = torch.Generator().manual_seed(seed % 2**31)
    mu, logvar = _make(shape, dtype, layout, g), _make(shape, dtype, layout, g, scale=0.7)
    prior = None
    if with_prior:
        pshape = _prior_shape(data, shape)
        prior = (_make(pshape, dtype, "contiguous", g), _make(pshape, dtype, "contiguous", g, scale=0.5))
    out = fused_kingma.reparameterize(mu, logvar, num_samples=num_samples, prior=prior, free_bits=free_bits,
                                      return_log_prob=return_log_prob, seed=seed, offset=offset)
    assert len(out) == (4 if return_log_prob else 2)
    zshape = (num_samples, *shape) if num_samples > 1 else shape
    cd = _compute_dtype(dtype)
    widen = (lambda t: t.to(cd))
    eps = _kernel_eps(seed, offset, zshape).to(cd)
    ref_prior = None if prior is None else tuple(map(widen, prior))
    z_ref, kl_ref, lq_ref, lp_ref = reference.reparameterize_reference(widen(mu), widen(logvar), eps, prior=ref_prior,
                                                                      free_bits=free_bits)
    assert all(t.dtype == dtype for t in out)
    z, kl = out[:2]
    std_eps = (torch.exp(0.5 * widen(logvar)) * eps).abs()
    assert_within_rounding(z, z_ref, dtype, scale=widen(mu).abs() + std_eps)
    # kl, log_q, log_p: sums over the latent dim of O(1..10) terms
    d = shape[-1]
    terms = 1.0 + widen(mu).abs() ** 2 + widen(logvar).abs() + torch.exp(widen(logvar))
    if prior is not None:
        terms = terms * torch.exp(-widen(prior[1])).expand(shape) + widen(prior[0]).abs().expand(shape) ** 2
    if free_bits is None:
        assert kl.shape == shape[:-1]
        assert_within_rounding(kl, kl_ref, dtype, scale=terms.sum(-1))
    else:  # a scalar: sum over latent dims of max(free_bits, mean over the batch of the per-coordinate KL)
        assert kl.shape == ()
        assert_within_rounding(kl, kl_ref, dtype, scale=terms.reshape(-1, d).mean(0).sum())
    if return_log_prob:
        lterms = (terms + eps.abs() ** 2 + widen(logvar).abs()).sum(-1) + (z_ref.abs() ** 2).sum(-1)
        lterms = lterms.expand(lq_ref.shape) if lterms.dim() else lterms
        assert_within_rounding(out[2], lq_ref, dtype, scale=lterms)
        assert_within_rounding(out[3], lp_ref, dtype, scale=lterms)


@settings(max_examples=30, deadline=None)
@given(shape=latent_shapes, layout=layouts, dtype=all_dtypes, num_samples=st.integers(1, 3),
       with_prior=st.booleans(), free_bits=st.one_of(st.none(), st.sampled_from([0.0, 0.3])),
       return_log_prob=st.booleans(), seed=st.integers(0, 2**63 - 1), data=st.data())
def test_reparameterize_gradients_match_reference_autograd(shape, layout, dtype, num_samples, with_prior, free_bits,
                                                           return_log_prob, seed, data):
    """Backward (noise regenerated from (seed, offset)) = autograd through the reference with the same noise,
    for mu, logvar and a broadcast prior, with random upstream gradients on every output."""
    g = torch.Generator().manual_seed(seed % 2**31)
    leaves = [_make(shape, dtype, layout, g, scale=0.7), _make(shape, dtype, layout, g, scale=0.7)]
    if with_prior:
        pshape = _prior_shape(data, shape)
        leaves += [_make(pshape, dtype, "contiguous", g, scale=0.5), _make(pshape, dtype, "contiguous", g, scale=0.5)]
    leaves = [t.requires_grad_() for t in leaves]
    prior = tuple(leaves[2:]) if with_prior else None
    out = fused_kingma.reparameterize(leaves[0], leaves[1], num_samples=num_samples, prior=prior,
                                      free_bits=free_bits, return_log_prob=return_log_prob, seed=seed, offset=5)
    # Upstream gradients as the op receives them: in the outputs' dtype.
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype).double() for t in out]
    grads = torch.autograd.grad(sum((t.double() * w).sum() for t, w in zip(out, weights)), leaves)

    cd = _compute_dtype(dtype)
    # Prior leaves expanded to mu's shape: the reference then gives the per-element prior gradients, which the op
    # returns in the storage dtype and autograd sums over the broadcast dims (each term rounded once).
    ref_leaves = [t.detach().to(cd).expand(shape).clone().requires_grad_() for t in leaves]
    zshape = (num_samples, *shape) if num_samples > 1 else shape
    eps = _kernel_eps(seed, 5, zshape).to(cd)
    ref_out = reference.reparameterize_reference(ref_leaves[0], ref_leaves[1], eps,
                                                 prior=tuple(ref_leaves[2:]) if with_prior else None,
                                                 free_bits=free_bits)[:len(out)]
    ref_grads = torch.autograd.grad(sum((t * w.to(cd)).sum() for t, w in zip(ref_out, weights)), ref_leaves)
    # Each gradient element sums O(num_samples * (1 + log-prob terms)) products of O(1) factors.
    scale = 10.0 * (num_samples * (3 if return_log_prob else 1) + 1)
    for leaf, got, want in zip(leaves, grads, ref_grads):
        assert got.dtype == dtype and got.shape == leaf.shape
        summed = want.sum_to_size(leaf.shape)
        reduced = want.numel() // max(1, leaf.numel())
        rounded = want.abs().sum_to_size(leaf.shape) if reduced > 1 else 0.0
        assert_within_rounding(got, summed, dtype, scale=scale * reduced, rounded_terms=rounded)
