"""Statistics of the in-kernel noise over 2^20 draws: moments, KS test, tails, independence."""
import math

import pytest
import torch

import fused_kingma as fk

N_ROWS, D = 1024, 1024  # 2^20 draws
Z_BOUND = 5.0  # |statistic| < 5 standard errors: false alarm ~ 6e-7 per check (and the seeds are fixed)


def _eps(**kw):
    zeros = torch.zeros(N_ROWS, D)
    z, _ = fk.reparameterize(zeros, zeros, **kw)  # mu = 0, logvar = 0: z is eps itself
    return z.reshape(-1).double()


def _ks_pvalue(x):
    """Two-sided Kolmogorov-Smirnov test of x against N(0, 1) with the asymptotic (Kolmogorov) p-value."""
    n = x.numel()
    cdf = torch.special.ndtr(torch.sort(x).values)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = torch.maximum((i / n - cdf).max(), (cdf - (i - 1) / n).max()).item()
    t = math.sqrt(n) * d
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * t * t) for k in range(1, 101))
    return d, min(max(p, 0.0), 1.0)


def _corr(a, b):
    a, b = a - a.mean(), b - b.mean()
    return ((a * b).mean() / (a.std() * b.std())).item()


@pytest.mark.parametrize("seed,offset", [(0, 0), (12345, 1), (2**64 - 1, 2**40)])
def test_moments_ks_and_tails(seed, offset):
    e = _eps(seed=seed, offset=offset)
    n = e.numel()
    assert abs(e.mean().item()) < Z_BOUND / math.sqrt(n)
    assert abs(e.var().item() - 1) < Z_BOUND * math.sqrt(2 / n)
    assert abs((e ** 3).mean().item()) < Z_BOUND * math.sqrt(15 / n)  # skewness; Var(x^3) = 15
    assert abs((e ** 4).mean().item() - 3) < Z_BOUND * math.sqrt(96 / n)  # kurtosis; Var(x^4) = 96
    d, p = _ks_pvalue(e)
    assert p > 1e-4, (d, p)
    tail = (e.abs() > 3).double().mean().item()
    p3 = 2 * torch.special.ndtr(torch.tensor(-3.0, dtype=torch.float64)).item()
    assert abs(tail - p3) < Z_BOUND * math.sqrt(p3 / n)
    assert e.abs().max() < 6.7  # sqrt(-2 ln 2^-33) = 6.66: the largest normal the definition can make


def test_neighbours_within_and_across_blocks_are_uncorrelated():
    e = _eps(seed=7)
    bound = Z_BOUND / math.sqrt(e.numel())
    for lag in (1, 2, 3, 4, 5, 8, D):  # same pair, same block, next block, next row
        assert abs(_corr(e[:-lag], e[lag:])) < bound, lag
    pairs = e.reshape(-1, 2)  # n_a, n_b of one Box-Muller pair: uncorrelated, and so are their squares
    assert abs(_corr(pairs[:, 0], pairs[:, 1])) < bound
    assert abs(_corr(pairs[:, 0] ** 2, pairs[:, 1] ** 2)) < Z_BOUND * math.sqrt(2 / e.numel())


def test_calls_offsets_and_samples_are_independent():
    bound = Z_BOUND / math.sqrt(N_ROWS * D)
    torch.manual_seed(0)
    a, b = _eps(), _eps()
    assert abs(_corr(a, b)) < bound
    assert abs(_corr(_eps(seed=3, offset=0), _eps(seed=3, offset=1))) < bound
    assert abs(_corr(_eps(seed=3), _eps(seed=4))) < bound
    zeros = torch.zeros(N_ROWS // 2, D)
    z, _ = fk.reparameterize(zeros, zeros, num_samples=2, seed=9)
    assert abs(_corr(z[0].reshape(-1).double(), z[1].reshape(-1).double())) < Z_BOUND / math.sqrt(zeros.numel())
    torch.manual_seed(0)
    assert torch.equal(a, _eps())


def test_scale_and_shift():
    mu = torch.full((N_ROWS, D), 2.0)
    lv = torch.full((N_ROWS, D), math.log(9.0))
    z, _ = fk.reparameterize(mu, lv, seed=17)
    n = z.numel()
    assert abs(z.double().mean().item() - 2) < Z_BOUND * 3 / math.sqrt(n)
    assert abs(z.double().std().item() - 3) < Z_BOUND * 3 / math.sqrt(2 * n)
