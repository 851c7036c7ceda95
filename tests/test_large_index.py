"""64-bit indexing on CPU (issue 8): outputs with more than 2^31 elements, in bf16 (the smallest dtype).

The noise of z element i is defined by its flat index i (README "How the noise is defined"), so an index kept in
32 bits anywhere (the element, its Philox block i // 4, a pointer offset) gives wrong values, or a crash, past
element 2^31. Each test checks elements on both sides of 2^31 and the last ones against fused_kingma.reference
(the numpy Philox/Box-Muller spec), computed for those positions only.

Memory: skipped when /proc/meminfo's MemAvailable is below what the test needs (it says how much). The Adam
kernel indexes with int64 / uint64 throughout too (csrc/cpu/adam_cpu.cpp: numel, chunk bounds, Philox blocks for
stochastic rounding); a > 2^31-element Adam step needs four such tensors (~17 GB in bf16) and is owed to a
machine with that memory (the GPU check).
"""
import numpy as np
import pytest
import torch

import fused_kingma as fk
from fused_kingma import reference

pytestmark = pytest.mark.slow

TWO_31 = 1 << 31
BF16_U = 2.0**-8  # unit roundoff of bfloat16
SEED, OFFSET = 0x1234_5678_9ABC_DEF0, 7


def _mem_available_gb():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def _needs(gb):
    have = _mem_available_gb()
    if have < gb:
        pytest.skip(f"needs ~{gb} GB of free memory, MemAvailable is {have:.1f} GB")


def _small_pattern(rows, cols, seed):
    """A (rows, cols) bf16 tensor of varied values, made by tiling a small random block (cheap at any size)."""
    g = torch.Generator().manual_seed(seed)
    tile = (torch.randn(64, cols, generator=g) * 0.7).to(torch.bfloat16)
    return tile.repeat((rows + 63) // 64, 1)[:rows]


def _expected_z(flat_mu, flat_lv, positions, n_mu):
    """Reference z (float64, before rounding) at flat z positions (samples first) for mu/logvar of n_mu elements."""
    out = []
    for i in positions:
        eps = float(reference.normals_reference(SEED, OFFSET, 1, start=int(i))[0])
        j = int(i) % n_mu
        out.append(float(flat_mu[j]) + float(np.exp(0.5 * float(flat_lv[j]))) * eps)
    return torch.tensor(out, dtype=torch.float64)


def _assert_bf16_close(got, want):
    got = got.double()
    bound = BF16_U * want.abs() + 1e-5 * (1 + want.abs())  # one bf16 rounding + fp32 math
    assert ((got - want).abs() <= bound).all(), f"got {got.tolist()}, want {want.tolist()}"


def _positions(total):
    around = list(range(TWO_31 - 6, TWO_31 + 10))  # both sides of 2^31, across Philox blocks
    tail = list(range(total - 5, total))
    rng = np.random.default_rng(0)
    beyond = sorted(int(x) for x in rng.integers(TWO_31, total, 8))
    return around + beyond + tail


def test_samples_beyond_2_31_forward_and_backward():
    """mu of 2^24 elements, num_samples=129: z has 129 * 2^24 > 2^31 elements (4.3 GB), mu stays small.
    Backward regenerates the noise of every sample, beyond 2^31 included; through log p(z) = sum -z^2/2 + c:
    d/dmu_j = sum_k -z_kj and d/dlogvar_j = sum_k -z_kj * exp(logvar_j / 2) / 2 * eps(k * n + j)."""
    _needs(8)
    rows, cols, k = 4096, 4096, 129
    n_mu = rows * cols
    mu = _small_pattern(rows, cols, 1).requires_grad_()
    logvar = _small_pattern(rows, cols, 2).requires_grad_()
    z, kl, log_q, log_p = fk.reparameterize(mu, logvar, num_samples=k, seed=SEED, offset=OFFSET,
                                            return_log_prob=True)
    total = k * n_mu
    assert total > TWO_31 and z.shape == (k, rows, cols) and z.dtype == torch.bfloat16
    flat_mu, flat_lv = mu.detach().view(-1), logvar.detach().view(-1)
    pos = _positions(total)
    _assert_bf16_close(z.view(-1)[pos], _expected_z(flat_mu, flat_lv, pos, n_mu))
    del z  # backward needs only (seed, offset): the noise is regenerated

    g_mu, g_lv = torch.autograd.grad(log_p.sum(), (mu, logvar))
    for j in (TWO_31 % n_mu, (TWO_31 + 5) % n_mu, n_mu - 1):
        idx = np.arange(k, dtype=np.uint64) * np.uint64(n_mu) + np.uint64(j)
        eps = np.array([reference.normals_reference(SEED, OFFSET, 1, start=int(i))[0] for i in idx])
        half_std = 0.5 * np.exp(0.5 * float(flat_lv[j]))
        z_j = float(flat_mu[j]) + 2 * half_std * eps
        for got, terms in ((g_mu, -z_j), (g_lv, -z_j * half_std * eps)):
            want, scale = float(terms.sum()), float(np.abs(terms).sum())
            assert abs(float(got.view(-1)[j]) - want) <= BF16_U * abs(want) + 1e-5 * scale, (j, got.view(-1)[j], want)


def test_mu_with_more_than_2_31_elements_forward():
    """mu, logvar and z of 2^31 + 2^16 elements each (~4.3 GB apiece in bf16): z and the KL of the rows that
    start past element 2^31."""
    _needs(18)
    cols = 1 << 16
    rows = TWO_31 // cols + 1
    mu = torch.zeros(rows, cols, dtype=torch.bfloat16)
    logvar = torch.zeros(rows, cols, dtype=torch.bfloat16)
    flat_mu, flat_lv = mu.view(-1), logvar.view(-1)
    pos = _positions(rows * cols)
    # Distinct values where it is checked (elsewhere 0: z = eps there, still checked through `pos`).
    flat_mu[pos] = torch.linspace(-2, 2, len(pos)).to(torch.bfloat16)
    flat_lv[pos] = torch.linspace(1, -1, len(pos)).to(torch.bfloat16)
    z, kl = fk.reparameterize(mu, logvar, seed=SEED, offset=OFFSET)
    assert z.numel() > TWO_31
    _assert_bf16_close(z.view(-1)[pos], _expected_z(flat_mu, flat_lv, pos, rows * cols))
    # KL of the last row (all of it past 2^31): only the positions set above are nonzero terms.
    last = [p for p in pos if p >= (rows - 1) * cols]
    m, lv = flat_mu[last].double(), flat_lv[last].double()
    want = float((0.5 * (lv.exp() + m * m - 1 - lv)).sum())
    assert abs(float(kl[-1]) - want) <= BF16_U * abs(want) + 1e-5 * len(last)
    assert float(kl[rows // 2]) == 0.0  # a row without set values: KL(N(0,1) || N(0,1))
