"""free_bits through the fused per-dim KL (reparam_fwd / reparam_bwd with kl_per_dim=True): the per-dim sums
against float64 torch, an order of summation that does not depend on the thread count, z and the log-probs left
as they are, gradients against float64 autograd, opcheck. (torch.compile with free_bits: test_reparam.py's
compile tests.)"""
import pytest
import torch

import fused_kingma as fk
from fused_kingma import reference as R
from fused_kingma._ops import ops

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# fp32 math on the kernel side: each per-dim sum is within this many units of its sum of |terms| (fp64: 1e-12).
SUM_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}


def _compute(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _gaussian(shape, dtype, seed, scale=0.7):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype) for _ in range(2))


def _prior(kind, shape, dtype, seed):
    if kind is None:
        return None, None
    pshape = shape[-1:] if kind == "shared" else shape  # shared: read in place with row stride 0
    return _gaussian(pshape, dtype, seed, scale=0.5)


def _kl_terms64(mu, lv, pm, plv):
    m, l = mu.double(), lv.double()
    if pm is None:
        return 0.5 * (l.exp() + m * m - 1.0 - l)
    pm, plv = pm.double(), plv.double()
    return 0.5 * ((l.exp() + (m - pm) ** 2) * torch.exp(-plv) - 1.0 + plv - l)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (5,), (127, 8), (128, 8), (129, 8), (4097, 3), (3, 50, 7), (0, 4), (6, 0)])
@pytest.mark.parametrize("prior_kind", [None, "shared", "full"])
@pytest.mark.parametrize("num_samples", [0, 1, 3])
def test_per_dim_kl_is_the_kl_summed_over_the_rows(dtype, shape, prior_kind, num_samples):
    mu, lv = _gaussian(shape, dtype, seed=1)
    pm, plv = _prior(prior_kind, shape, dtype, seed=2)
    so = torch.tensor([5, 6])
    kl = ops.reparam_fwd(mu, lv, pm, plv, so, num_samples, False, True)[1]
    D = shape[-1]
    assert kl.dtype == _compute(dtype) and kl.shape == (D,)
    rows = mu.numel() // D if D else 0
    terms = _kl_terms64(mu, lv, pm, plv).reshape(rows, D)
    want, bound = terms.sum(0), SUM_RTOL[dtype] * terms.abs().sum(0)
    assert torch.all((kl.double() - want).abs() <= bound + 1e-30), (kl, want)


def test_per_dim_sums_do_not_depend_on_the_thread_count():
    mu, lv = _gaussian((3000, 24), torch.float32, seed=3)
    pm, plv = _gaussian((24,), torch.float32, seed=4)
    so = torch.tensor([1, 2])
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outs.append(ops.reparam_fwd(mu, lv, pm, plv, so, 2, False, True)[1])
            outs.append(fk.reparameterize(mu, lv, prior=(pm, plv), free_bits=0.2, seed=9)[1])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(outs[:2], outs[2:4]):
        assert torch.equal(a, b)
    for a, b in zip(outs[:2], outs[4:]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_z_and_log_probs_are_those_of_the_per_row_call(dtype):
    mu, lv = _gaussian((33, 10), dtype, seed=5)
    pm, plv = _gaussian((10,), dtype, seed=6)
    so = torch.tensor([7, 8])
    per_row = ops.reparam_fwd(mu, lv, pm, plv, so, 3, True)
    per_dim = ops.reparam_fwd(mu, lv, pm, plv, so, 3, True, True)
    for i in (0, 2, 3):
        assert torch.equal(per_row[i], per_dim[i])
    # The per-row KL summed over rows is the per-dim KL summed over dims (two orders of one sum).
    torch.testing.assert_close(per_row[1].double().sum(), per_dim[1].double().sum(),
                               rtol=2e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-5, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prior_kind", [None, "shared", "full"])
@pytest.mark.parametrize("num_samples", [0, 1, 2])
def test_per_dim_gradients_match_float64_autograd(dtype, prior_kind, num_samples):
    shape = (2, 19, 6)
    mu, lv = _gaussian(shape, dtype, seed=7)
    pm, plv = _prior(prior_kind, shape, dtype, seed=8)
    leaves = [t.clone().requires_grad_() for t in (mu, lv, pm, plv) if t is not None]
    prior = tuple(leaves[2:]) if prior_kind else (None, None)
    so = torch.tensor([11, 12])
    z, kl, _, _ = ops.reparam_fwd(leaves[0], leaves[1], *prior, so, num_samples, False, True)
    g = torch.Generator().manual_seed(9)
    w_kl = torch.randn(shape[-1], generator=g, dtype=torch.float64)
    w_z = torch.randn(z.shape, generator=g, dtype=torch.float64).to(dtype)
    loss = (kl.double() * w_kl).sum() + ((z.double() * w_z.double()).sum() if num_samples else 0.0)
    grads = torch.autograd.grad(loss, leaves)

    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    rm, rl = ref_leaves[:2]
    rpm, rplv = (ref_leaves[2], ref_leaves[3]) if prior_kind else (None, None)
    ref_loss = (_kl_terms64(rm, rl, rpm, rplv).reshape(-1, shape[-1]).sum(0) * w_kl).sum()
    if num_samples:
        eps = ops.philox_debug(11, 12, 0, (num_samples * mu.numel() + 3) // 4, 2)[: num_samples * mu.numel()]
        zref = R.reparameterize_reference(rm, rl, eps.double().reshape(z.shape), prior=None)[0]
        ref_loss = ref_loss + (zref * w_z.double()).sum()
    ref_grads = torch.autograd.grad(ref_loss, ref_leaves)
    low = dtype in (torch.float16, torch.bfloat16)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-2 if low else 1e-5,
                                                                          atol=(3e-2 if low else 2e-5) * (num_samples + 1))
    for got, want in zip(grads, ref_grads):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, **tol)


def test_opcheck_per_dim():
    mu, lv = _gaussian((3, 8), torch.float32, seed=10)
    pm, plv = _gaussian((8,), torch.float32, seed=11)
    so = torch.tensor([3, 4])
    cases = ((mu, lv, None, None, so, 1, False, True), (mu, lv, pm, plv, so, 2, True, True),
             (mu, lv, None, None, so, 0, False, True))
    for args in cases:
        args = tuple(a.clone().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in args)
        torch.library.opcheck(ops.reparam_fwd, args)


@pytest.mark.parametrize("dtype", DTYPES)
def test_free_bits_floor_matches_the_reference_on_both_sides(dtype):
    """Half the latent dims below the floor (no gradient), half above (gradient 1/rows of their KL)."""
    rows, D = 40, 6
    mu, lv = _gaussian((rows, D), torch.float64, seed=12, scale=0.3)
    mu[:, :3] *= 0.01  # near the prior: per-dim KL ~ 0.02 < lam
    lv[:, :3] *= 0.01
    mu[:, 3:] += 2.0  # per-dim KL ~ 2 > lam
    mu, lv = mu.to(dtype).requires_grad_(), lv.to(dtype).requires_grad_()
    lam = 0.5
    _, kl = fk.reparameterize(mu, lv, free_bits=lam, seed=3)
    assert kl.dtype == dtype and kl.shape == ()
    g_mu, g_lv = torch.autograd.grad(kl, (mu, lv))
    m64, l64 = mu.detach().double().requires_grad_(), lv.detach().double().requires_grad_()
    want = R.reparameterize_reference(m64, l64, torch.zeros(rows, D, dtype=torch.float64), free_bits=lam)[1]
    w_mu, w_lv = torch.autograd.grad(want, (m64, l64))
    low = dtype in (torch.float16, torch.bfloat16)
    tol = dict(rtol=2e-2, atol=1e-3) if low else dict(rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(kl.double(), want.detach(), **tol)
    assert torch.all(g_mu[:, :3] == 0) and torch.all(g_lv[:, :3] == 0)
    torch.testing.assert_close(g_mu.double(), w_mu, **tol)
    torch.testing.assert_close(g_lv.double(), w_lv, **tol)


def test_free_bits_of_an_empty_batch_is_nan_like_the_mean_of_nothing():
    mu = torch.zeros(0, 4, requires_grad=True)
    _, kl = fk.reparameterize(mu, torch.zeros(0, 4), free_bits=0.1, seed=1)
    want = R.reparameterize_reference(mu.detach().double(), torch.zeros(0, 4, dtype=torch.float64),
                                      torch.zeros(0, 4, dtype=torch.float64), free_bits=0.1)[1]
    assert torch.isnan(kl) and torch.isnan(want)
    _, kl_no_dims = fk.reparameterize(torch.zeros(5, 0), torch.zeros(5, 0), free_bits=0.1, seed=1)
    assert kl_no_dims.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_free_bits_kl_op_is_the_floored_mean_summed(dtype, out_dtype):
    """The op behind the objective against the torch expression it replaces, values and gradients: dims below,
    at and above the floor, a NaN (propagates, no gradient), and no rows (NaN)."""
    sums = torch.tensor([0.5, 12.0, 4.0, 30.0, float("nan"), 3.99], dtype=dtype)
    for batch, lam in ((8, 0.5), (1, 2.0), (0, 0.5)):
        for values in (sums[:4], sums):
            a = values.clone().requires_grad_()
            b = values.clone().requires_grad_()
            got = ops.free_bits_kl(a, batch, lam, out_dtype)
            want = (b / batch).clamp(min=lam).sum().to(out_dtype)
            assert got.dtype == out_dtype and got.shape == ()
            torch.testing.assert_close(got, want, equal_nan=True)
            if batch and not torch.isnan(want):
                got.backward()
                want.backward()
                torch.testing.assert_close(a.grad, b.grad)


def test_free_bits_kl_op_checks_and_opcheck():
    with pytest.raises(RuntimeError, match="kl_per_dim must be 1-D"):
        ops.free_bits_kl(torch.zeros(2, 3), 4, 0.1, torch.float32)
    with pytest.raises(RuntimeError, match="batch must be >= 0"):
        ops.free_bits_kl(torch.zeros(3), -1, 0.1, torch.float32)
    kl = torch.tensor([0.3, 2.0, 5.0], requires_grad=True)
    torch.library.opcheck(ops.free_bits_kl, (kl, 4, 0.5, torch.float32))
    torch.library.opcheck(ops.free_bits_kl_backward, (torch.tensor(1.5), kl.detach(), 4, 0.5))

