"""reparameterize / gaussian_kl against the reference (same eps), torch.distributions, gradcheck, ISAs, errors."""
import contextlib

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import fused_kingma as fk
from fused_kingma import reference as R
from fused_kingma._ops import ops

# Forward/backward tolerances per dtype: low precision rounds inputs/outputs (math in fp32); fp32 uses the
# fastmath exp (<= 1 ulp) and float32 noise; fp64 math is float64 except the float32 noise itself.
TOL = {
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float16: dict(rtol=2e-2, atol=2e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}
DTYPES = list(TOL)


def _inputs(shape, dtype, seed=0, noncontig=False, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    if not noncontig:
        return tuple((torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype) for _ in range(2))
    out = []
    for _ in range(2):  # batch dims transposed in memory and the last dim strided by 2
        big = (torch.randn((*shape[:-1], 2 * shape[-1]), generator=g, dtype=torch.float64) * scale).to(dtype)
        if big.dim() >= 2:
            big = big.transpose(0, -2).contiguous().transpose(0, -2)
        out.append(big[..., ::2])
    return tuple(out)


def _eps(seed, offset, shape, num_samples=1):
    """The kernel's float32 noise for z (checked against the float64 definition in test_philox.py), as float64:
    float64 inputs use exactly this noise, so the reference can then be compared at float64 precision."""
    zshape = (num_samples, *shape) if num_samples > 1 else tuple(shape)
    n = 1
    for s in zshape:
        n *= s
    eps = ops.philox_debug(seed, offset, 0, (n + 3) // 4, 2)[:n].double().reshape(zshape)
    torch.testing.assert_close(eps, R.reparam_eps_reference(seed, offset, shape, num_samples), rtol=1e-6, atol=2e-6)
    return eps


def _reference(mu, lv, seed, offset, num_samples=1, prior=None, free_bits=None):
    eps = _eps(seed, offset, mu.shape, num_samples)
    p = None if prior is None else tuple(t.double() for t in prior)
    return R.reparameterize_reference(mu.double(), lv.double(), eps, prior=p, free_bits=free_bits)


def _check(got, ref, dtype, scale=1.0):
    tol = TOL[dtype]
    torch.testing.assert_close(got.double(), ref.double(), rtol=tol["rtol"], atol=tol["atol"] * scale)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 33), (4, 0), (0, 3), (17, 130)])
@pytest.mark.parametrize("num_samples", [1, 3])
def test_forward_matches_reference(dtype, shape, num_samples):
    mu, lv = _inputs(shape, dtype)
    z, kl, lq, lp = fk.reparameterize(mu, lv, num_samples=num_samples, seed=11, offset=3, return_log_prob=True)
    rz, rkl, rlq, rlp = _reference(mu, lv, 11, 3, num_samples)
    zshape = (num_samples, *shape) if num_samples > 1 else shape
    bshape = (num_samples, *shape[:-1]) if num_samples > 1 else shape[:-1]
    assert z.shape == zshape and kl.shape == shape[:-1] and lq.shape == bshape and lp.shape == bshape
    assert z.dtype == kl.dtype == lq.dtype == dtype
    d = max(shape[-1], 1)
    _check(z, rz, dtype)
    _check(kl, rkl, dtype, d)
    _check(lq, rlq, dtype, d)
    _check(lp, rlp, dtype, d)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_contiguous_inputs_and_broadcast_prior(dtype):
    mu, lv = _inputs((6, 9), dtype, seed=3, noncontig=True)
    assert not mu.is_contiguous()
    pm = torch.randn(9, dtype=dtype)
    plv = torch.randn(1, 9, dtype=dtype) * 0.5
    z, kl, lq, lp = fk.reparameterize(mu, lv, prior=(pm, plv), seed=5, return_log_prob=True)
    rz, rkl, rlq, rlp = _reference(mu, lv, 5, 0, prior=(pm.expand(6, 9), plv.expand(6, 9)))
    for g, r in ((z, rz), (kl, rkl), (lq, rlq), (lp, rlp)):
        _check(g, r, dtype, 9)
    torch.testing.assert_close(fk.gaussian_kl(mu, lv, prior=(pm, plv)), kl)
    torch.testing.assert_close(fk.gaussian_kl(mu, lv), R.gaussian_kl_reference(mu.double(), lv.double()).to(dtype),
                               **TOL[dtype])


def test_matches_torch_distributions():
    mu, lv = _inputs((64, 16), torch.float64, seed=4)
    pm, plv = _inputs((16,), torch.float64, seed=5)
    z, kl, lq, lp = fk.reparameterize(mu, lv, prior=(pm, plv), num_samples=2, seed=9, return_log_prob=True)
    q, p = Normal(mu, torch.exp(0.5 * lv)), Normal(pm, torch.exp(0.5 * plv))
    torch.testing.assert_close(kl, kl_divergence(q, p).sum(-1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lq, q.log_prob(z).sum(-1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lp, p.log_prob(z).sum(-1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(fk.gaussian_kl(mu, lv), kl_divergence(q, Normal(0.0, 1.0)).sum(-1), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_prior", [False, True])
@pytest.mark.parametrize("num_samples", [1, 2])
def test_gradients_match_reference(dtype, with_prior, num_samples):
    mu, lv = _inputs((5, 13), dtype, seed=6, scale=0.7)
    prior = tuple(t.requires_grad_() for t in _inputs((13,), dtype, seed=7, scale=0.5)) if with_prior else None
    mu.requires_grad_()
    lv.requires_grad_()
    z, kl, lq, lp = fk.reparameterize(mu, lv, num_samples=num_samples, prior=prior, seed=1, offset=2,
                                      return_log_prob=True)
    g = torch.Generator().manual_seed(8)
    w = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (z, kl, lq, lp)]
    loss = sum((t.double() * wi).sum() for t, wi in zip((z, kl, lq, lp), w))
    leaves = [mu, lv] + (list(prior) if with_prior else [])
    grads = torch.autograd.grad(loss, leaves)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    rp = (leaves64[2], leaves64[3]) if with_prior else None
    eps = _eps(1, 2, mu.shape, num_samples)
    ref = R.reparameterize_reference(leaves64[0], leaves64[1], eps, prior=rp)
    rloss = sum((t * wi).sum() for t, wi in zip(ref, w))
    rgrads = torch.autograd.grad(rloss, leaves64)
    for got, exp in zip(grads, rgrads):
        assert got.dtype == dtype
        _check(got, exp, dtype, 13 * num_samples)


@pytest.mark.parametrize("used", [("z",), ("kl",), ("lq",), ("lp",), ("z", "lp")])
@pytest.mark.parametrize("num_samples", [1, 3])
def test_gradients_of_some_outputs_and_some_prior_leaves(used, num_samples):
    # The backward gets no gradient for the unused outputs (treated as zero), and only the prior mean asks
    # for a gradient (the prior logvar's is skipped): each must match autograd through the reference.
    mu, lv = (t.requires_grad_() for t in _inputs((6, 11), torch.float64, seed=31, scale=0.6))
    pm, plv = _inputs((11,), torch.float64, seed=32, scale=0.5)
    pm.requires_grad_()
    names = ("z", "kl", "lq", "lp")
    out = fk.reparameterize(mu, lv, num_samples=num_samples, prior=(pm, plv), seed=5, offset=6, return_log_prob=True)
    grads = torch.autograd.grad(sum(o.sum() for n, o in zip(names, out) if n in used), (mu, lv, pm))
    leaves64 = [t.detach().clone().requires_grad_() for t in (mu, lv, pm)]
    ref = R.reparameterize_reference(*leaves64[:2], _eps(5, 6, mu.shape, num_samples), prior=(leaves64[2], plv))
    rgrads = torch.autograd.grad(sum(o.sum() for n, o in zip(names, ref) if n in used), leaves64, allow_unused=True)
    for got, exp, leaf in zip(grads, rgrads, leaves64):  # z and log q do not depend on the prior mean: zero
        torch.testing.assert_close(got, torch.zeros_like(leaf) if exp is None else exp, **TOL[torch.float64])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(300, 7), (205, 3), (64, 40), (3, 600)])
@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("free_bits", [None, 0.2])
def test_short_rows_in_runs_equal_rows_one_at_a_time(dtype, shape, num_samples, free_bits):
    # Short rows whose arrays lie back to back go through the kernels' loops as runs of several rows (about 512
    # elements, crossing noise tiles and sample boundaries here); a prior shared by every row (stride 0) keeps
    # them one row at a time. The same prior materialized must give the same bits, forward and backward.
    mu, lv = _inputs(shape, dtype, seed=41, scale=0.8)
    pm, plv = _inputs(shape[-1:], dtype, seed=42, scale=0.5)
    results = []
    for prior in ((pm, plv), (pm.expand(shape).contiguous(), plv.expand(shape).contiguous())):
        leaves = [mu.clone().requires_grad_(), lv.clone().requires_grad_()]
        z, kl = fk.reparameterize(*leaves, num_samples=num_samples, prior=prior, free_bits=free_bits, seed=9,
                                  offset=4)
        w = torch.randn(z.shape, generator=torch.Generator().manual_seed(3)).to(dtype)
        grads = torch.autograd.grad((z * w).sum() + kl.sum(), leaves)
        _, lq, lp = fk.reparameterize(mu, lv, num_samples=num_samples, prior=prior, seed=9, offset=4,
                                      return_log_prob=True)[1:]
        results.append((z, kl, lq, lp, *grads, fk.gaussian_kl(mu, lv, prior=prior)))
    for one_at_a_time, in_runs in zip(*results):
        assert torch.equal(one_at_a_time, in_runs)
    rz, rkl = _reference(mu, lv, 9, 4, num_samples, prior=(pm.expand(shape), plv.expand(shape)))[:2]
    _check(results[1][0], rz, dtype)
    if free_bits is None:
        _check(results[1][1], rkl, dtype, shape[-1])


def test_gradcheck_fp64():
    mu, lv = _inputs((3, 4), torch.float64, seed=9, scale=0.5)
    pm, plv = _inputs((4,), torch.float64, seed=10, scale=0.5)
    leaves = [t.requires_grad_() for t in (mu, lv, pm, plv)]

    def f(m, l, a, b):
        return fk.reparameterize(m, l, prior=(a, b), num_samples=2, seed=3, return_log_prob=True)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda m, l: fk.gaussian_kl(m, l), leaves[:2])
    assert torch.autograd.gradcheck(lambda m, l: fk.reparameterize(m, l, seed=4, free_bits=0.3)[1], leaves[:2])


def test_free_bits():
    mu, lv = _inputs((8, 6), torch.float64, seed=12, scale=0.3)
    _, kl = fk.reparameterize(mu, lv, seed=1, free_bits=0.05)
    _, rkl, _, _ = _reference(mu, lv, 1, 0, free_bits=0.05)
    assert kl.shape == ()
    torch.testing.assert_close(kl, rkl)
    per_dim = 0.5 * (lv.exp() + mu ** 2 - 1 - lv).mean(0)
    torch.testing.assert_close(kl, torch.clamp(per_dim, min=0.05).sum())
    _, kl0 = fk.reparameterize(mu, lv, seed=1, free_bits=0.0)
    torch.testing.assert_close(kl0, per_dim.sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_every_isa_path_agrees(cpu_isa, dtype):
    mu, lv = _inputs((9, 37), dtype, seed=13)
    mu.requires_grad_()
    z, kl, lq, lp = fk.reparameterize(mu, lv, num_samples=2, seed=21, return_log_prob=True)
    (gmu,) = torch.autograd.grad(z.sum() + kl.sum() + lp.sum(), mu)
    rz, rkl, rlq, rlp = _reference(mu.detach(), lv, 21, 0, 2)
    for g, r in ((z, rz), (kl, rkl), (lq, rlq), (lp, rlp)):
        _check(g.detach(), r, dtype, 37)
    fk.set_cpu_isa("baseline")
    z0, kl0, lq0, lp0 = fk.reparameterize(mu, lv, num_samples=2, seed=21, return_log_prob=True)
    (gmu0,) = torch.autograd.grad(z0.sum() + kl0.sum() + lp0.sum(), mu)
    tight = dict(rtol=1e-5, atol=1e-5) if dtype != torch.bfloat16 else dict(rtol=1e-2, atol=1e-2)
    for a, b in ((z, z0), (kl, kl0), (lq, lq0), (gmu, gmu0)):
        torch.testing.assert_close(a.detach(), b.detach(), **tight)


@pytest.mark.parametrize("with_prior", [False, True])
def test_fp16_forward_is_the_fp32_forward_rounded(cpu_isa, with_prior):
    # fp16 rows are widened to float around the sample loop (with F16C on AVX2 / AVX-512, half_convert.h):
    # z, kl and the log-densities must be the float32 op's results on the widened inputs, rounded once.
    mu, lv = _inputs((37, 300), torch.float16, seed=41)
    lv[0, :5] = torch.tensor([-20.0, 11.0, 0.0, -0.0, 6e-8])  # exp(lv / 2) from tiny to large
    prior = tuple(t.half() for t in _inputs((300,), torch.float32, seed=42, scale=0.5)) if with_prior else None
    wide_prior = None if prior is None else tuple(t.float() for t in prior)
    got = fk.reparameterize(mu, lv, num_samples=2, prior=prior, seed=8, offset=1, return_log_prob=True)
    want = fk.reparameterize(mu.float(), lv.float(), num_samples=2, prior=wide_prior, seed=8, offset=1,
                             return_log_prob=True)
    for g, w in zip(got, want):
        assert torch.equal(g.view(torch.int16), w.half().view(torch.int16))


@pytest.mark.parametrize("num_samples", [1, 3])
@pytest.mark.parametrize("with_prior", [False, True])
def test_fp16_backward_is_the_fp32_backward_rounded(cpu_isa, num_samples, with_prior):
    # As the forward: fp16 rows (inputs, grad_z, outputs) are widened around the backward's row loop with F16C
    # on AVX2 / AVX-512, so the gradients are the float32 backward's on the widened values, rounded once. The
    # prior has mu's shape, so its gradients are not summed (a sum would round differently in fp16).
    mu, lv = _inputs((19, 70), torch.float16, seed=43)
    lv[0, :3] = torch.tensor([-20.0, 11.0, 6e-8])
    prior = _inputs((19, 70), torch.float16, seed=44, scale=0.5) if with_prior else ()
    leaves16 = [t.clone().requires_grad_() for t in (mu, lv, *prior)]
    leaves32 = [t.float().requires_grad_() for t in (mu, lv, *prior)]
    grads = []
    for leaves in (leaves16, leaves32):
        out = fk.reparameterize(leaves[0], leaves[1], num_samples=num_samples, prior=tuple(leaves[2:]) or None,
                                seed=4, offset=9, return_log_prob=True)
        g = torch.Generator().manual_seed(45)
        upstream = [torch.randn(o.shape, generator=g).half().to(o.dtype) for o in out]
        grads.append(torch.autograd.grad(out, leaves, upstream))
    for g16, g32 in zip(*grads):
        assert torch.equal(g16.view(torch.int16), g32.half().view(torch.int16))


def test_nothing_of_z_size_is_saved():
    mu = torch.randn(64, 32, requires_grad=True)
    lv = torch.randn(64, 32, requires_grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z, kl = fk.reparameterize(mu, lv, num_samples=4)
    assert max(sizes) <= mu.numel()  # mu, logvar and the 2-element seed_offset only


def test_seed_offset_semantics():
    mu, lv = _inputs((4, 10), torch.float32, seed=14)
    z1, _ = fk.reparameterize(mu, lv, seed=123)
    assert torch.equal(z1, fk.reparameterize(mu, lv, seed=123, offset=0)[0])
    assert not torch.equal(z1, fk.reparameterize(mu, lv, seed=123, offset=1)[0])
    assert not torch.equal(z1, fk.reparameterize(mu, lv, seed=124)[0])
    torch.manual_seed(0)
    a, _ = fk.reparameterize(mu, lv)
    b, _ = fk.reparameterize(mu, lv)
    torch.manual_seed(0)
    a2, _ = fk.reparameterize(mu, lv)
    assert torch.equal(a, a2) and not torch.equal(a, b)
    g = torch.Generator().manual_seed(5)
    c, _ = fk.reparameterize(mu, lv, generator=g)
    g.manual_seed(5)
    assert torch.equal(c, fk.reparameterize(mu, lv, generator=g)[0])
    big = fk.reparameterize(mu, lv, seed=2**64 - 1, offset=2**63)[0]
    assert torch.isfinite(big).all()


def test_non_finite_values_propagate():
    mu = torch.tensor([[0.0, float("nan"), 1.0]])
    lv = torch.tensor([[float("inf"), 0.0, -float("inf")]])
    z, kl = fk.reparameterize(mu, lv, seed=1)
    assert torch.isnan(z[0, 1]) and torch.isnan(kl[0]) and z[0, 2] == 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bf16 rows are checked while widened
@pytest.mark.parametrize("with_prior", [False, True])
def test_rows_with_extreme_logvar_take_the_full_range_exp(dtype, with_prior):
    # Rows whose |logvar| (or |prior logvar|) <= 87 use a shorter exp with the same bits; any other value sends
    # its row to the full one: overflow to inf, subnormal standard deviations, inf and nan must come out as in
    # the reference, next to ordinary rows.
    D = 40  # 2 vectors of 16 and a tail
    mu, lv = _inputs((6, D), dtype, seed=21)
    lv[1, 3] = 150.0  # exp(lv / 2) ~ 4e32: finite z, kl overflows to inf
    lv[2, 39] = -200.0  # exp(lv / 2) ~ 4e-44: subnormal
    lv[3, 0] = 87.5  # just past the moderate range
    lv[4, 17] = float("inf")
    lv[5, 5] = float("nan")
    prior = None
    if with_prior:
        pm, plv = _inputs((6, D), dtype, seed=22)
        plv[0, 7] = -95.0  # exp(-prior logvar) overflows in the KL of an otherwise ordinary row
        prior = (pm, plv)
    z, kl = fk.reparameterize(mu, lv, prior=prior, seed=9, offset=3)
    ref_z, ref_kl = _reference(mu, lv, 9, 3, prior=prior)[:2]
    tol = dict(TOL[dtype], equal_nan=True)
    torch.testing.assert_close(z.float(), ref_z.to(dtype).float(), **tol)
    torch.testing.assert_close(kl.float(), ref_kl.to(dtype).float(), **tol)
    assert torch.isinf(kl[1]) and torch.isnan(kl[5]) and z[2, 39] == mu[2, 39]
    # gaussian_kl routes its rows the same way (with its own formula: exp(lv) rather than sd * sd).
    torch.testing.assert_close(fk.gaussian_kl(mu, lv, prior).float(), ref_kl.to(dtype).float(), **tol)
    # Backward through the finite rows (0-3): the same routing decides the backward's exp.
    leaves = [mu[:4].clone().requires_grad_(), lv[:4].clone().requires_grad_()]
    if with_prior:
        leaves += [t[:4].clone().requires_grad_() for t in prior]
    z, kl = fk.reparameterize(leaves[0], leaves[1], prior=tuple(leaves[2:]) or None, seed=9, offset=3)
    grads = torch.autograd.grad(z.sum() + kl.sum(), leaves)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    ref = R.reparameterize_reference(leaves64[0], leaves64[1], _eps(9, 3, (4, D)), prior=tuple(leaves64[2:]) or None)
    for got, exp in zip(grads, torch.autograd.grad(ref[0].sum() + ref[1].sum(), leaves64)):
        torch.testing.assert_close(got.float(), exp.to(dtype).float(), **tol)


def test_opcheck():
    mu, lv = _inputs((3, 8), torch.float32, seed=15)
    pm, plv = _inputs((8,), torch.float32, seed=16)
    so = torch.tensor([3, 4])
    cases = ((mu, lv, None, None, so, 1, False), (mu, lv, pm, plv, so, 2, True), (mu, lv, None, None, so, 0, False))
    for args in cases:
        args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in args)
        torch.library.opcheck(ops.reparam_fwd, args)


def test_double_backward_is_a_clear_error():
    mu = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    lv = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    z, kl = fk.reparameterize(mu, lv, seed=1)
    (g,) = torch.autograd.grad((z ** 2).sum() + kl.sum(), mu, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


@pytest.mark.parametrize("free_bits", [None, 0.3])
def test_no_graph_when_nothing_needs_grad_and_same_values(free_bits):
    # The Autograd kernels skip autograd::Function when no input requires grad (or grad mode is off): the outputs
    # must carry no graph, and hold exactly what the recorded path computes.
    mu, lv = _inputs((5, 19), torch.float32, seed=21)
    pm, plv = _inputs((19,), torch.float32, seed=22)
    kwargs = dict(num_samples=2, prior=(pm, plv), free_bits=free_bits, return_log_prob=True, seed=5, offset=3)
    recorded = fk.reparameterize(mu.clone().requires_grad_(), lv, **kwargs)
    assert all(t.grad_fn is not None for t in recorded)
    for mode in ("plain", "no_grad", "inference_mode"):
        ctx = {"plain": contextlib.nullcontext, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
        with ctx():
            leaf = mu.clone().requires_grad_() if mode != "plain" else mu
            out = fk.reparameterize(leaf, lv, **kwargs)
        for got, exp in zip(out, recorded):
            assert got.grad_fn is None and not got.requires_grad, mode
            assert torch.equal(got, exp.detach()), mode
    # Backward without create_graph takes the direct path for reparam_bwd too; with create_graph it records the
    # node that refuses double backward (test_double_backward_is_a_clear_error).
    leaf = mu.clone().requires_grad_()
    z, kl, lq, lp = fk.reparameterize(leaf, lv, **kwargs)
    (g,) = torch.autograd.grad(z.sum() + kl.sum() + lq.sum() + lp.sum(), leaf)
    assert g.grad_fn is None
    g_direct = ops.reparam_bwd(torch.ones(2, 5, 19), torch.ones(5), torch.ones(2, 5), torch.ones(2, 5), mu, lv, pm,
                               plv, torch.tensor([5, 3]), 2)[0]
    if free_bits is None:
        torch.testing.assert_close(g, g_direct, rtol=0, atol=0)


@pytest.mark.parametrize("free_bits", [None, 0.3])
def test_torch_compile_fullgraph_matches_eager(free_bits):
    torch._dynamo.reset()

    def step(mu, lv):
        z, kl = fk.reparameterize(mu, lv, num_samples=2, free_bits=free_bits, seed=7, offset=1)
        return z.square().mean() + kl.mean()

    def step_rng(mu, lv):
        z, kl = fk.reparameterize(mu, lv)
        return z.sum() + fk.gaussian_kl(mu, lv).sum()

    mu = torch.randn(8, 16, requires_grad=True)
    lv = torch.randn(8, 16, requires_grad=True)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss, loss_c = step(mu, lv), compiled(mu, lv)
    g, g_c = torch.autograd.grad(loss, (mu, lv)), torch.autograd.grad(loss_c, (mu, lv))
    torch.testing.assert_close(loss_c, loss)
    for a, b in zip(g, g_c):
        torch.testing.assert_close(a, b)
    compiled_rng = torch.compile(step_rng, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    a = compiled_rng(mu, lv)
    torch.manual_seed(3)
    torch.testing.assert_close(a, step_rng(mu, lv))


@pytest.mark.slow
@pytest.mark.parametrize("free_bits", [None, 0.3])
def test_torch_compile_inductor(free_bits):
    torch._dynamo.reset()

    def step(mu, lv):
        z, kl = fk.reparameterize(mu, lv, free_bits=free_bits, seed=7)
        return (z * 2).sum() + kl.sum()

    mu = torch.randn(4, 8, requires_grad=True)
    lv = torch.randn(4, 8, requires_grad=True)
    compiled = torch.compile(step, fullgraph=True)
    loss_c, loss = compiled(mu, lv), step(mu, lv)
    torch.testing.assert_close(loss_c, loss)
    # The backward graph inductor compiles calls reparam_bwd (and free_bits_kl_backward) through the C++ autograd.
    for got, want in zip(torch.autograd.grad(loss_c, (mu, lv)), torch.autograd.grad(loss, (mu, lv))):
        torch.testing.assert_close(got, want)


def _bad(fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()


def test_bad_inputs_name_the_argument():
    mu = torch.randn(3, 4)
    lv = torch.randn(3, 4)
    _bad(lambda: fk.reparameterize(mu, torch.randn(3, 5)), ValueError, "logvar must have mu's shape")
    _bad(lambda: fk.reparameterize(mu.long(), lv), TypeError, "mu must be float")
    _bad(lambda: fk.reparameterize(mu, lv.long()), TypeError, "logvar must be float")
    _bad(lambda: fk.reparameterize(mu, lv.double()), TypeError, "logvar must have mu's dtype")
    _bad(lambda: fk.reparameterize(mu, lv.to("meta")), ValueError, "logvar must be on mu's device")
    _bad(lambda: fk.reparameterize(mu, lv, num_samples=0), ValueError, "num_samples")
    _bad(lambda: fk.reparameterize(mu, lv, num_samples=1.5), ValueError, "num_samples")
    _bad(lambda: fk.reparameterize(mu, lv, free_bits=-0.1), ValueError, "free_bits")
    _bad(lambda: fk.reparameterize(torch.tensor(1.0), torch.tensor(1.0)), ValueError, "mu must have at least one")
    _bad(lambda: fk.reparameterize(mu, lv, prior=(torch.zeros(5), torch.zeros(5))), ValueError, "prior")
    _bad(lambda: fk.reparameterize(mu, lv, prior=(torch.zeros(2, 3, 4), torch.zeros(4))), ValueError, "prior")
    _bad(lambda: fk.reparameterize(mu, lv, prior=(torch.zeros(4).double(), torch.zeros(4))), TypeError, "prior")
    _bad(lambda: fk.reparameterize(mu, lv, prior=torch.zeros(4)), TypeError, "prior")
    _bad(lambda: fk.reparameterize(mu, lv, seed=-1), ValueError, "seed")
    _bad(lambda: fk.reparameterize(mu, lv, seed=2**64), ValueError, "seed")
    _bad(lambda: fk.reparameterize(mu, lv, seed=1, offset=-2), ValueError, "offset")
    _bad(lambda: fk.reparameterize(mu, lv, offset=2), ValueError, "offset")
    _bad(lambda: fk.reparameterize(mu, lv, seed=1, generator=torch.Generator()), ValueError, "generator")
    _bad(lambda: fk.gaussian_kl(mu, torch.randn(4, 3)), ValueError, "logvar")
    _bad(lambda: fk.reparameterize([1.0], lv), TypeError, "mu must be a torch.Tensor")


def test_bad_input_consumes_no_randomness():
    mu = torch.randn(3, 4)
    torch.manual_seed(1)
    before = torch.random.get_rng_state()
    with pytest.raises(ValueError):
        fk.reparameterize(mu, torch.randn(3, 5))
    after = torch.random.get_rng_state()
    torch.manual_seed(1)
    _ = torch.randn(3, 5)  # the only draw in the failed call above is the argument itself
    assert torch.equal(after, torch.random.get_rng_state())
    assert not torch.equal(before, after)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_prior", [False, True])
def test_gaussian_kl_forward_and_backward(dtype, with_prior):
    mu, lv = _inputs((4, 3, 19), dtype, seed=17, scale=0.8)
    prior = tuple(t.requires_grad_() for t in _inputs((3, 1), dtype, seed=18, scale=0.5)) if with_prior else None
    leaves = [mu.requires_grad_(), lv.requires_grad_()] + (list(prior) if with_prior else [])
    kl = fk.gaussian_kl(mu, lv, prior=prior)
    assert kl.shape == (4, 3) and kl.dtype == dtype
    w = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((kl.double() * w).sum(), leaves)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    rkl = R.gaussian_kl_reference(leaves64[0], leaves64[1], tuple(leaves64[2:]) if with_prior else None)
    _check(kl, rkl, dtype, 19)
    for got, exp in zip(grads, torch.autograd.grad((rkl * w).sum(), leaves64)):
        assert got.shape == exp.shape
        _check(got, exp, dtype, 19 * 4)


@pytest.mark.parametrize("layout", ["shared", "shared_strided", "partial_broadcast", "full", "full_transposed"])
def test_prior_layouts_read_in_place_or_expanded(layout):
    """Priors shared by every row are read in place (row stride 0), others expanded: same values and grads."""
    dtype = torch.float64
    mu, lv = _inputs((3, 4, 7), dtype, seed=21, scale=0.6)
    shapes = {"shared": (7,), "shared_strided": (14,), "partial_broadcast": (3, 1, 7), "full": (3, 4, 7),
              "full_transposed": (3, 7, 4)}
    pm, plv = (t * 0.5 for t in _inputs(shapes[layout], dtype, seed=22))
    if layout == "shared_strided":
        pm, plv = pm[::2], plv[::2]
    if layout == "full_transposed":
        pm, plv = pm.transpose(1, 2), plv.transpose(1, 2)
    leaves = [t.detach().requires_grad_() for t in (mu, lv, pm, plv)]
    z, kl, lq, lp = fk.reparameterize(leaves[0], leaves[1], prior=(leaves[2], leaves[3]), num_samples=2, seed=4,
                                      return_log_prob=True)
    eps = _eps(4, 0, mu.shape, 2)
    ref_leaves = [t.detach().clone().requires_grad_() for t in (mu, lv, pm, plv)]
    ref = R.reparameterize_reference(ref_leaves[0], ref_leaves[1], eps,
                                     prior=(ref_leaves[2].expand(mu.shape), ref_leaves[3].expand(mu.shape)))
    for got, exp in zip((z, kl, lq, lp), ref):
        _check(got, exp, dtype, 14)
    w = [torch.randn(t.shape, dtype=dtype, generator=torch.Generator().manual_seed(i)) for i, t in enumerate(ref)]
    grads = torch.autograd.grad(sum((t * wi).sum() for t, wi in zip((z, kl, lq, lp), w)), leaves)
    rgrads = torch.autograd.grad(sum((t * wi).sum() for t, wi in zip(ref, w)), ref_leaves)
    for got, exp in zip(grads, rgrads):
        assert got.shape == exp.shape
        _check(got, exp, dtype, 14)
