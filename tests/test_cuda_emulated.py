"""The CUDA kernels (csrc/cuda/reparam.cu, adam.cu) run on the CPU through a small emulation of CUDA
(tools/cuda_emu: blocks in turn, a block's threads as std::threads, barriers for __syncthreads and the warp
shuffles), against the CPU op on the same (seed, offset). This checks, without a GPU, what the kernels
compute: noise indexing over samples and rows, the per-row reductions of the warp and block paths, priors
read through row strides, num_samples 0/1/K, log-probs and the backward; for Adam the multi-tensor table
and parameter paths, device step counters, found_inf, the capturable lr read from device memory, master
weights, EMA and stochastic rounding. It says nothing about the GPU's
rounding (FMA contraction), its memory model or speed: tests/test_cuda.py does, on a GPU.

Tolerance: the kernels use math/gaussian.h's KL and gradient formulas where the CPU kernel writes some of
them out with exp(lv/2)^2 for exp(lv), so results agree to a few units in the last place of the terms
(all of order 1 here): 8e-6 (fp32/fp64, whose noise is float32), 4 units of fp16 / bf16 rounding.
"""
import ctypes
import importlib.util
import os

import pytest
import torch

from fused_kingma._ops import ops

_BUILD = os.path.join(os.path.dirname(__file__), "..", "tools", "cuda_emu", "build.py")
_spec = importlib.util.spec_from_file_location("cuda_emu_build", _BUILD)
cuda_emu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cuda_emu)

_MISSING = cuda_emu.missing()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"CUDA emulation: {_MISSING}")

DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
TOL = {torch.float64: 8e-6, torch.float32: 8e-6, torch.float16: 8e-3, torch.bfloat16: 6.4e-2}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    lib = ctypes.CDLL(cuda_emu.build(str(tmp_path_factory.mktemp("cuda_emu")), "reparam"))
    for fn in (lib.emu_reparam_kl_group_rows, lib.emu_reparam_kl_groups):
        fn.restype, fn.argtypes = ctypes.c_int64, [ctypes.c_int64]
    return lib


@pytest.fixture(scope="module")
def adam_lib(tmp_path_factory):
    return ctypes.CDLL(cuda_emu.build(str(tmp_path_factory.mktemp("cuda_emu_adam")), "adam"))


def ptr(t):
    return ctypes.c_void_p(t.data_ptr() if t is not None and t.numel() > 0 else 0)


def prior_rows(p, mu):
    """The CUDA glue's layout: a prior shared by every row in place (row stride 0), else expanded."""
    e = p.expand(mu.shape)
    shared = all(e.stride(d) == 0 or e.size(d) == 1 for d in range(e.dim() - 1))
    if shared and (e.stride(-1) == 1 or mu.shape[-1] <= 1):
        return e, 0
    return e.contiguous(), mu.shape[-1]


def with_samples(shape, k):
    return (k, *shape) if k > 1 else tuple(shape)


def compute_dtype(dtype):
    """The kernels' compute dtype, the per-dim kl's dtype: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def emulated_forward(lib, mu, logvar, prior, seed_offset, k, log_prob, kl_per_dim=False):
    batch, d = mu.shape[:-1], mu.shape[-1]
    rows = batch.numel()
    sampled = log_prob and k > 0
    z = mu.new_empty(with_samples(mu.shape, k)) if k > 0 else mu.new_empty(0)
    kl = mu.new_empty(batch)
    partials = None
    if kl_per_dim:  # as the CUDA glue: (D,) in the compute dtype (zeros for no rows), (groups, D) float64 scratch
        # NaN where the kernels must write: a column they skip shows.
        kl = torch.full((d,), float("nan") if rows else 0.0, dtype=compute_dtype(mu.dtype))
        groups = lib.emu_reparam_kl_groups(ctypes.c_int64(rows))
        partials = torch.full((groups, d), float("nan"), dtype=torch.float64) if groups > 1 else None
    lq = mu.new_empty(with_samples(batch, k)) if sampled else mu.new_empty(0)
    lp = mu.new_empty(with_samples(batch, k)) if sampled else mu.new_empty(0)
    (pm, pm_stride), (plv, plv_stride) = (prior_rows(prior[0], mu), prior_rows(prior[1], mu)) if prior else \
        ((None, 0), (None, 0))
    rc = lib.emu_reparam_forward(DTYPE_CODE[mu.dtype], ptr(mu), ptr(logvar), ptr(pm), ptr(plv),
                                 ctypes.c_int64(pm_stride), ctypes.c_int64(plv_stride), ptr(seed_offset), ptr(z),
                                 ptr(kl), ptr(lq), ptr(lp), ctypes.c_int64(rows), ctypes.c_int64(d),
                                 ctypes.c_int64(k), ctypes.c_int(int(kl_per_dim)), ptr(partials))
    assert rc == 0
    return z, kl, lq, lp


def emulated_backward(lib, grads, mu, logvar, prior, seed_offset, k, kl_per_dim=False):
    gz, gkl, glq, glp = grads
    batch, d = mu.shape[:-1], mu.shape[-1]
    # As the CUDA glue: per-dim grad_kl as (D,) in the compute dtype, else one per row in mu's dtype.
    gkl = gkl.to(compute_dtype(mu.dtype)).reshape(-1).expand(d).contiguous() if kl_per_dim else \
        gkl.expand(batch).contiguous()
    gmu, glv = torch.empty_like(mu), torch.empty_like(mu)
    gpm, gplv = (torch.empty_like(mu), torch.empty_like(mu)) if prior else (mu.new_empty(0), mu.new_empty(0))
    (pm, pm_stride), (plv, plv_stride) = (prior_rows(prior[0], mu), prior_rows(prior[1], mu)) if prior else \
        ((None, 0), (None, 0))
    rc = lib.emu_reparam_backward(DTYPE_CODE[mu.dtype], ptr(mu), ptr(logvar), ptr(pm), ptr(plv),
                                  ctypes.c_int64(pm_stride), ctypes.c_int64(plv_stride), ptr(seed_offset),
                                  ptr(gz), ptr(gkl), ptr(glq), ptr(glp), ptr(gmu), ptr(glv), ptr(gpm), ptr(gplv),
                                  ctypes.c_int64(batch.numel()), ctypes.c_int64(d), ctypes.c_int64(k),
                                  ctypes.c_int(int(kl_per_dim)))
    assert rc == 0
    return gmu, glv, gpm, gplv


def assert_close(got, want, tol, what):
    """|got - want| <= tol * max(1, max |want|): the terms are of order 1, so a cancelling sum keeps their
    absolute rounding."""
    assert got.shape == want.shape, (what, got.shape, want.shape)
    if want.numel() == 0:
        return
    err = (got.double() - want.double()).abs().max().item()
    scale = max(1.0, want.double().abs().max().item())
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.1e} * {scale:.3e}"


PRIORS = {
    "none": None,
    "shared": lambda shape: (shape[-1],),                       # read in place, row stride 0
    "shared_keepdim": lambda shape: (1,) * (len(shape) - 1) + (shape[-1],),
    "per_row": lambda shape: shape,                            # row stride D
    "broadcast_column": lambda shape: shape[:-1] + (1,),        # expanded by the glue
}

# Shapes: odd last dims (Philox blocks straddle rows and samples), 3-D batches, a row of >= 1024 (the
# block-per-row reduction), last dims of a multiple of 4 (the 16-byte vector paths), an empty latent dim
# and an empty batch. Lanes per row (reparam.cu's forward, from the Philox blocks a row can touch: D / 4, one more
# when 4 does not divide D): 4 for D = 4, 5, 7, 8, 9, 10; 8 for 13 and 32; 16 for 37 and 60; a warp for 130; the
# block from 1024. (37, 5) puts 8 rows in a warp and ends mid-warp.
CASES = [((7,), "none"), ((6, 37), "shared"), ((2, 3, 9), "shared_keepdim"), ((5, 13), "per_row"),
         ((4, 10), "broadcast_column"), ((3, 1030), "shared"), ((5, 8), "per_row"), ((6, 32), "shared"),
         ((2, 1024), "none"), ((3, 0), "none"), ((0, 4), "none"), ((37, 5), "shared"), ((9, 60), "none"),
         ((5, 130), "per_row")]


def misaligned(t):
    """A copy of t whose storage starts one element past an aligned address (the kernels' scalar paths)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


def run_case(lib, shape, prior_kind, k, log_prob, dtype, seed, offset_inputs=False):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g).to(dtype)
    logvar = (0.5 * torch.randn(shape, generator=g)).to(dtype)
    if offset_inputs:
        mu, logvar = misaligned(mu), misaligned(logvar)
    prior = None
    if PRIORS[prior_kind] is not None:
        ps = PRIORS[prior_kind](shape)
        prior = (torch.randn(ps, generator=g).to(dtype), (0.3 * torch.randn(ps, generator=g)).to(dtype))
    so = torch.tensor([seed * 7919 + 1, 2**40 + seed], dtype=torch.int64)
    pm, plv = prior if prior else (None, None)
    want = ops.reparam_fwd(mu, logvar, pm, plv, so, k, log_prob)
    got = emulated_forward(lib, mu, logvar, prior, so, k, log_prob)
    where = f"{dtype} {shape} prior={prior_kind} K={k} log_prob={log_prob}"
    for name, a, b in zip(("z", "kl", "log_q", "log_p"), got, want):
        assert_close(a, b, TOL[dtype], f"{where} {name}")
    if mu.numel() == 0:
        return
    grads = (torch.randn(want[0].shape, generator=g).to(dtype) if k else None,
             torch.randn(want[1].shape, generator=g).to(dtype),
             torch.randn(want[2].shape, generator=g).to(dtype) if log_prob and k else None,
             torch.randn(want[3].shape, generator=g).to(dtype) if log_prob and k else None)
    want_g = ops.reparam_bwd(*grads, mu, logvar, pm, plv, so, k)
    got_g = emulated_backward(lib, grads, mu, logvar, prior, so, k)
    for name, a, b in zip(("grad mu", "grad logvar", "grad prior mu", "grad prior logvar"), got_g, want_g):
        assert_close(a, b, TOL[dtype], f"{where} {name}")


@pytest.mark.parametrize("shape, prior_kind", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("num_samples", [0, 1, 3])
def test_emulated_cuda_reparam_matches_cpu_op_fp32(lib, shape, prior_kind, num_samples):
    for log_prob in (False, True):
        run_case(lib, shape, prior_kind, num_samples, log_prob, torch.float32, seed=len(shape) + num_samples)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16], ids=str)
def test_emulated_cuda_reparam_matches_cpu_op_other_dtypes(lib, dtype):
    for i, (shape, prior_kind) in enumerate(CASES[:8]):
        run_case(lib, shape, prior_kind, 2, True, dtype, seed=100 + i)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_emulated_cuda_reparam_misaligned_inputs_take_the_scalar_path(lib, dtype):
    # Last dim a multiple of 4 but mu / logvar 1 element off alignment: the vector paths must not be taken.
    assert misaligned(torch.zeros(8, dtype=dtype)).data_ptr() % 8 != 0
    for k in (1, 3):
        run_case(lib, (6, 32), "shared", k, True, dtype, seed=200 + k, offset_inputs=True)


def test_emulated_cuda_reparam_noise_is_the_cpu_stream(lib):
    # mu = 0, logvar = 0: z is the noise; element i of z (samples first) is normal number i of the stream.
    zeros = torch.zeros(3, 11)
    so = torch.tensor([-5, 123], dtype=torch.int64)  # a seed with the top bit set
    z = emulated_forward(lib, zeros, zeros, None, so, 4, False)[0]
    want = ops.philox_debug(-5, 123, 0, (z.numel() + 3) // 4, 2)[:z.numel()]
    assert_close(z.flatten(), want, 2e-6, "z = eps")


# =====================================================================================
# Per-dim KL (kl_per_dim, the fused part of free_bits): kl is the KL summed over the rows, per latent dim, in the
# compute dtype, from two kernels (groups of rows, then the groups); the backward reads grad_kl[j] per column.
# Checked against float64 torch (and against the CPU op where its build has the flag).
# =====================================================================================
def cpu_op_has_kl_per_dim():
    return all(any(a.name == "kl_per_dim" for a in op.default._schema.arguments)
               for op in (ops.reparam_fwd, ops.reparam_bwd))


def kl_terms64(mu, logvar, prior):
    """KL(q || p) of every coordinate in float64 (p = N(0, I) without a prior); differentiable."""
    m, lv = mu.double(), logvar.double()
    if prior is None:
        return 0.5 * (lv.exp() + m.square() - 1 - lv)
    pm, plv = (p.double().expand(mu.shape) for p in prior)
    return 0.5 * ((lv.exp() + (m - pm).square()) * (-plv).exp() - 1 + plv - lv)


def per_dim_inputs(shape, dtype, prior_kind, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g).to(dtype)
    logvar = (0.5 * torch.randn(shape, generator=g)).to(dtype)
    prior = None
    if PRIORS[prior_kind] is not None:
        ps = PRIORS[prior_kind](shape)
        prior = (torch.randn(ps, generator=g).to(dtype), (0.3 * torch.randn(ps, generator=g)).to(dtype))
    so = torch.tensor([seed * 7919 + 1, 2**40 + seed], dtype=torch.int64)
    return mu, logvar, prior, so


# Row counts around the group size (64 rows a group up to 64 * 1024 rows: one group up to 64 rows, then partials),
# a 3-D batch, last dims of 1, odd and a multiple of 4 (the backward's vector path).
PER_DIM_SHAPES = [(1, 5), (63, 8), (64, 1), (65, 5), (200, 8), (4, 50, 1)]
# The column sums in float32 against float64: the terms' rounding plus a sum's (terms >= 0, no cancellation).
KL_SUM_TOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}


def test_emulated_cuda_kl_groups_follow_the_formula(lib):
    # launch.h: G = max(64, ceil(rows / 1024)) rows a group, ceil(rows / G) <= 1024 groups covering the rows.
    for rows in [1, 2, 63, 64, 65, 200, 4096, 65535, 65536, 65537, 70001, 10**6, 2**31 + 7, 2**40 + 3]:
        g = max(64, -(-rows // 1024))
        groups = -(-rows // g)
        assert lib.emu_reparam_kl_group_rows(rows) == g, rows
        assert lib.emu_reparam_kl_groups(rows) == groups, rows
        assert groups <= 1024 and (groups - 1) * g < rows <= groups * g, rows
    assert lib.emu_reparam_kl_groups(0) == 0
    # Several groups and no scratch for their partials: refused, not written through a null pointer.
    mu = torch.zeros(65, 3)
    kl = torch.empty(3)
    rc = lib.emu_reparam_forward(0, ptr(mu), ptr(mu), None, None, ctypes.c_int64(0), ctypes.c_int64(0),
                                 ptr(torch.zeros(2, dtype=torch.int64)), None, ptr(kl), None, None,
                                 ctypes.c_int64(65), ctypes.c_int64(3), ctypes.c_int64(0), ctypes.c_int(1), None)
    assert rc != 0


# Every prior layout in float32; the other dtypes with one layout each (the emulation runs blocks one by one).
@pytest.mark.parametrize("dtype, prior_kind", [(torch.float32, "none"), (torch.float32, "shared"),
                                               (torch.float32, "per_row"), (torch.float64, "shared"),
                                               (torch.float16, "per_row"), (torch.bfloat16, "none")], ids=str)
def test_emulated_cuda_kl_per_dim_forward(lib, dtype, prior_kind):
    check_cpu = cpu_op_has_kl_per_dim()
    for i, shape in enumerate(PER_DIM_SHAPES):
        mu, logvar, prior, so = per_dim_inputs(shape, dtype, prior_kind, seed=300 + i)
        want = kl_terms64(mu, logvar, prior).reshape(-1, shape[-1]).sum(0)
        for k in (0, 1, 3):
            where = f"{dtype} {shape} prior={prior_kind} K={k}"
            got = emulated_forward(lib, mu, logvar, prior, so, k, k > 0, kl_per_dim=True)
            assert got[1].shape == (shape[-1],) and got[1].dtype == compute_dtype(dtype), where
            assert_close(got[1], want, KL_SUM_TOL[dtype], f"{where} per-dim kl")
            if k == 0 or mu.numel() // shape[-1] > 65:  # 200 rows: the same code as these, slow to emulate
                continue
            # Only the kl changes: z and the log-densities are those of the per-row call, bit for bit.
            rows_call = emulated_forward(lib, mu, logvar, prior, so, k, True)
            for name, a, b in zip(("z", "log_q", "log_p"), (got[0], got[2], got[3]),
                                  (rows_call[0], rows_call[2], rows_call[3])):
                assert torch.equal(a, b), f"{where} {name} differs from the per-row call"
            if check_cpu:
                pm, plv = prior if prior else (None, None)
                cpu = ops.reparam_fwd(mu, logvar, pm, plv, so, k, k > 0, kl_per_dim=True)
                assert cpu[1].dtype == got[1].dtype, where
                assert_close(got[1], cpu[1], KL_SUM_TOL[dtype], f"{where} per-dim kl vs CPU op")


@pytest.mark.parametrize("prior_kind", ["none", "shared"])
def test_emulated_cuda_kl_per_dim_many_groups(lib, prior_kind):
    # Past 64 * 1024 rows: groups of 69 rows (the last one shorter), 1015 partials a column.
    shape = (70001, 2)
    assert lib.emu_reparam_kl_group_rows(shape[0]) == 69 and lib.emu_reparam_kl_groups(shape[0]) == 1015
    mu, logvar, prior, so = per_dim_inputs(shape, torch.float32, prior_kind, seed=7)
    want = kl_terms64(mu, logvar, prior).sum(0)
    # Without samples (only the two KL kernels run: 70001 rows of the sampling kernel are slow to emulate).
    kl = emulated_forward(lib, mu, logvar, prior, so, 0, False, kl_per_dim=True)[1]
    assert_close(kl, want, 1e-5, f"{shape} prior={prior_kind} per-dim kl")


def test_emulated_cuda_kl_per_dim_is_deterministic(lib):
    # Each column sum runs in a fixed order (rows of a group, then the groups): two runs agree to the bit.
    for shape, prior_kind, k in [((200, 5), "shared", 1), ((70001, 2), "none", 0)]:
        mu, logvar, prior, so = per_dim_inputs(shape, torch.float32, prior_kind, seed=8)
        runs = [emulated_forward(lib, mu, logvar, prior, so, k, False, kl_per_dim=True)[1] for _ in range(2)]
        assert torch.equal(runs[0], runs[1]), shape


@pytest.mark.parametrize("shape", [(0, 5), (3, 0)], ids=str)
def test_emulated_cuda_kl_per_dim_empty(lib, shape):
    # No rows: kl is zeros (written by the glue; no kernel runs). No latent dim: an empty kl, nothing launched.
    mu = torch.zeros(shape)
    for k in (0, 2):
        kl = emulated_forward(lib, mu, mu, None, torch.tensor([1, 2]), k, False, kl_per_dim=True)[1]
        assert torch.equal(kl, torch.zeros(shape[-1])), (shape, k)


def reference_backward64(grads, mu, logvar, prior, seed_offset, k, c):
    """Float64 autograd of sum_j c_j sum_r KL_rj + <grad_z, z> + <grad_log_q, log q> + <grad_log_p, log p>, on the
    kernels' noise (the CPU stream's float32 normals); the prior's grads w.r.t. the prior expanded to mu's shape."""
    gz, _, glq, glp = grads
    d = mu.shape[-1]
    m = mu.to(torch.float64, copy=True).requires_grad_()  # a copy: never mark the caller's float64 tensors
    lv = logvar.to(torch.float64, copy=True).requires_grad_()
    leaves = [m, lv]
    pr = None
    if prior:
        pr = tuple(p.double().expand(mu.shape).clone().requires_grad_() for p in prior)
        leaves += list(pr)
    loss = (kl_terms64(m, lv, pr).reshape(-1, d).sum(0) * c.double()).sum()
    if k > 0:
        n = k * mu.numel()
        seed, offset = (int(v) for v in seed_offset)
        eps = ops.philox_debug(seed, offset, 0, (n + 3) // 4, 2)[:n].double().reshape(k, *mu.shape)
        z = m + (0.5 * lv).exp() * eps
        loss = loss + (gz.double().reshape(z.shape) * z).sum()
        if glq is not None:
            log_q = (-0.5 * (eps.square() + lv)).sum(-1)  # eps fixed: the constant -D/2 ln(2 pi) has no grad
            log_p = (-0.5 * ((z - pr[0]).square() * (-pr[1]).exp() + pr[1])).sum(-1) if pr else \
                (-0.5 * z.square()).sum(-1)
            loss = loss + (glq.double().reshape(log_q.shape) * log_q).sum() + \
                (glp.double().reshape(log_p.shape) * log_p).sum()
    loss.backward()
    out = [t.grad.to(mu.dtype) for t in leaves]
    return out if prior else out + [mu.new_empty(0), mu.new_empty(0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("prior_kind", ["none", "shared", "per_row"])
def test_emulated_cuda_kl_per_dim_backward(lib, dtype, prior_kind):
    check_cpu = cpu_op_has_kl_per_dim()
    for i, shape in enumerate([(1, 5), (63, 8), (65, 5), (200, 1), (4, 50, 8)]):
        mu, logvar, prior, so = per_dim_inputs(shape, dtype, prior_kind, seed=400 + i)
        batch, d = shape[:-1], shape[-1]
        g = torch.Generator().manual_seed(500 + i)
        for k in (0, 1, 3):
            for log_prob in ((False, True) if k else (False,)):
                c = torch.randn(d, generator=g).to(compute_dtype(dtype))  # the per-dim kl's grad
                grads = (torch.randn(with_samples(shape, k), generator=g).to(dtype) if k else None, c,
                         torch.randn(with_samples(batch, k), generator=g).to(dtype) if log_prob else None,
                         torch.randn(with_samples(batch, k), generator=g).to(dtype) if log_prob else None)
                where = f"{dtype} {shape} prior={prior_kind} K={k} log_prob={log_prob}"
                got = emulated_backward(lib, grads, mu, logvar, prior, so, k, kl_per_dim=True)
                want = reference_backward64(grads, mu, logvar, prior, so, k, c)
                names = ("grad mu", "grad logvar", "grad prior mu", "grad prior logvar")
                for name, a, b in zip(names, got, want):
                    assert_close(a, b, TOL[dtype], f"{where} {name}")
                if check_cpu:
                    pm, plv = prior if prior else (None, None)
                    cpu = ops.reparam_bwd(*grads, mu, logvar, pm, plv, so, k, kl_per_dim=True)
                    for name, a, b in zip(names, got, cpu):
                        assert_close(a, b, TOL[dtype], f"{where} {name} vs CPU op")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_emulated_cuda_kl_per_dim_backward_with_equal_grads_is_the_per_row_one(lib, dtype):
    # The same grad for every dim and every row: grad_kl[j] and grad_kl[r] are the same number, so the two modes
    # run the same arithmetic (scalar path D = 5, vector path D = 8).
    for shape in [(65, 5), (9, 8)]:
        mu, logvar, prior, so = per_dim_inputs(shape, dtype, "shared", seed=600)
        gz = torch.randn(with_samples(shape, 2), generator=torch.Generator().manual_seed(601)).to(dtype)
        per_dim = emulated_backward(lib, (gz, torch.full((shape[-1],), 0.75), None, None), mu, logvar, prior, so, 2,
                                    kl_per_dim=True)
        per_row = emulated_backward(lib, (gz, torch.full(shape[:-1], 0.75, dtype=dtype), None, None), mu, logvar,
                                    prior, so, 2)
        for a, b in zip(per_dim, per_row):
            assert torch.equal(a, b), shape


# =====================================================================================
# Adam: csrc/cuda/adam.cu's adam_step (table filled as the CUDA glue fills it) against the CPU op.
# =====================================================================================
ADAM_KEYS = ("params", "grads", "exp_avgs", "second", "max_second", "steps", "masters", "emas")
SLOTS = ("params", "grads", "exp_avgs", "second", "max_second", "masters", "emas")  # launch.h AdamSlot order
ADAM_OPTIONS = {
    "adam": {},
    "adam_l2": {"weight_decay": 0.1},
    "adamw": {"weight_decay": 0.1, "decoupled_weight_decay": True},
    "amsgrad": {"amsgrad": True},
    "maximize": {"maximize": True, "weight_decay": 0.05},
    "adamax": {"rule": "adamax", "weight_decay": 0.05},
}


def adam_group(shapes, dtype, *, amsgrad=False, master=False, ema=False, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(shape, dt, scale=1.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dt)

    low = dtype in (torch.float16, torch.bfloat16)
    state_dt = torch.float32 if master else dtype
    params = [rnd(s, dtype) for s in shapes]
    return {
        "params": params,
        "grads": [rnd(s, dtype, 0.1) for s in shapes],
        "exp_avgs": [rnd(s, state_dt, 0.01) for s in shapes],
        "second": [rnd(s, state_dt, 0.01).square() for s in shapes],
        "max_second": [rnd(s, state_dt, 0.02).square() for s in shapes] if amsgrad else [],
        "steps": [torch.tensor(3.0) for _ in shapes],
        "masters": [p.float() + rnd(p.shape, torch.float32, 1e-3) for p in params] if master else [],
        "emas": [rnd(s, torch.float32 if low else dtype) for s in shapes] if ema else [],
    }


def clone(group):
    return {k: [t.clone() for t in v] for k, v in group.items()}


def adam_kwargs(**opts):
    kw = dict(rule="adam", lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
              amsgrad=False, maximize=False, ema_decay=0.999, stochastic_rounding=False, seed=1234,
              lr_is_fp32_tensor=False, grad_scale=None, found_inf=None)
    kw.update(opts)
    return kw


def cpu_adam(group, **kw):
    ops.adam_step_(*(group[k] for k in ADAM_KEYS), check_only=False, **kw)


def emulated_adam(adam_lib, group, *, lr_device=None, use_table=False, **kw):
    """One step with the CUDA kernels; step counters are 'device' counters (the kernel increments them)."""
    n = len(group["params"])
    adamax = kw["rule"] == "adamax"
    decoupled = kw["decoupled_weight_decay"] and not adamax
    dtype = group["params"][0].dtype
    master = bool(group["masters"])
    ptrs = (ctypes.c_void_p * (n * len(SLOTS)))()
    for i in range(n):
        for s, key in enumerate(SLOTS):
            lst = group[key]
            ptrs[i * len(SLOTS) + s] = lst[i].data_ptr() if lst and lst[i].numel() > 0 else None
    steps = (ctypes.c_void_p * n)(*[t.data_ptr() for t in group["steps"]])
    step_values = (ctypes.c_double * n)()
    numels = (ctypes.c_int64 * n)(*[p.numel() for p in group["params"]])
    opt_ptr = lambda t: ctypes.c_void_p(t.data_ptr()) if t is not None else ctypes.c_void_p(0)  # noqa: E731
    rc = adam_lib.emu_adam_step(
        DTYPE_CODE[dtype], int(master), int(kw["stochastic_rounding"] and dtype == torch.bfloat16 and not master),
        2 if adamax else (1 if kw["amsgrad"] else 0), int(kw["maximize"]),
        int(not decoupled and kw["weight_decay"] != 0), int(decoupled), int(bool(group["emas"])), 0,
        int(kw["lr_is_fp32_tensor"]), ctypes.c_double(0.0 if lr_device is not None else kw["lr"]),
        opt_ptr(lr_device), ctypes.c_double(kw["beta1"]), ctypes.c_double(kw["beta2"]), ctypes.c_double(kw["eps"]),
        ctypes.c_double(kw["weight_decay"]), ctypes.c_double(kw["ema_decay"]), ctypes.c_uint64(kw["seed"]),
        opt_ptr(kw["grad_scale"]), opt_ptr(kw["found_inf"]), ptrs, steps, step_values, numels, ctypes.c_int64(n),
        int(use_table))
    assert rc == 0


def assert_groups_close(got, want, tol, what):
    for key in ADAM_KEYS:
        for i, (a, b) in enumerate(zip(got[key], want[key])):
            assert_close(a, b, tol, f"{what} {key}[{i}]")


# Scalar, 1 element, odd, 2-D, more than one 65536-element chunk with a tail.
ADAM_SHAPES = [(), (1,), (7,), (33, 5), (1000,), (65536 + 37,)]


@pytest.mark.parametrize("name", list(ADAM_OPTIONS))
@pytest.mark.parametrize("lr_kind", ["float", "device_fp32"])
def test_emulated_cuda_adam_matches_cpu_op(adam_lib, name, lr_kind):
    opts = ADAM_OPTIONS[name]
    cpu = adam_group(ADAM_SHAPES, torch.float32, amsgrad=opts.get("amsgrad", False), seed=1)
    emu = clone(cpu)
    # lr as a float32 tensor on the device (capturable): the kernel reads it; the CPU op gets its value
    # and lr_is_fp32_tensor, as optim.py passes a float32 tensor lr.
    lr = torch.tensor(3e-3, dtype=torch.float32)
    lr_device = lr.double() if lr_kind == "device_fp32" else None
    kw = adam_kwargs(lr=lr.item(), lr_is_fp32_tensor=lr_kind == "device_fp32", **opts)
    for _ in range(3):
        cpu_adam(cpu, **kw)
        emulated_adam(adam_lib, emu, lr_device=lr_device, **kw)
    assert_groups_close(emu, cpu, 2e-6, f"{name} lr={lr_kind}")
    assert all(s.item() == 6.0 for s in emu["steps"])


def test_emulated_cuda_adam_device_lr_is_read_at_launch(adam_lib):
    # The lr in device memory changes between steps (a scheduler under CUDA graphs): each step uses its value.
    cpu = adam_group([(100,), (7,)], torch.float32, seed=2)
    emu = clone(cpu)
    lr_device = torch.zeros((), dtype=torch.float64)
    for lr in (1e-2, 5e-3, 1e-3):
        lr_device.fill_(lr)
        cpu_adam(cpu, **adam_kwargs(lr=lr))
        emulated_adam(adam_lib, emu, lr_device=lr_device, **adam_kwargs(lr=lr))
    assert_groups_close(emu, cpu, 2e-6, "changing lr")


def test_emulated_cuda_adam_table_and_param_paths_match_cpu(adam_lib):
    # 40 tensors: over one kernel-parameter batch (32 rows); the table path reads them all from one table.
    shapes = [(int(n),) for n in torch.randint(1, 3000, (40,), generator=torch.Generator().manual_seed(3))]
    cpu = adam_group(shapes, torch.float32, amsgrad=True, seed=3)
    table, params = clone(cpu), clone(cpu)
    kw = adam_kwargs(amsgrad=True, weight_decay=0.01, decoupled_weight_decay=True)
    cpu_adam(cpu, **kw)
    emulated_adam(adam_lib, table, use_table=True, **kw)
    emulated_adam(adam_lib, params, use_table=False, **kw)
    assert_groups_close(table, cpu, 2e-6, "table path")
    assert_groups_close(params, cpu, 2e-6, "parameter path")


def test_emulated_cuda_adam_step_counter_shared_by_tensors_is_incremented_once(adam_lib):
    # One device counter passed for rows 0, 5 and 35 (torch never does; a direct op call may): its first row's
    # thread increments it, once, and all three updates use the new value, as the CPU op does with one host
    # counter. Rows 0 and 35 fall in different kernel-parameter batches of 32.
    shapes = [(int(n),) for n in torch.randint(1, 300, (40,), generator=torch.Generator().manual_seed(6))]
    cpu = adam_group(shapes, torch.float32, seed=6)
    table, params = clone(cpu), clone(cpu)
    for group in (cpu, table, params):
        group["steps"][5] = group["steps"][35] = group["steps"][0]
    kw = adam_kwargs()
    for _ in range(2):
        cpu_adam(cpu, **kw)
        emulated_adam(adam_lib, table, use_table=True, **kw)
        emulated_adam(adam_lib, params, use_table=False, **kw)
    for group, what in ((cpu, "cpu op"), (table, "table path"), (params, "parameter path")):
        assert [s.item() for s in group["steps"]] == [5.0] * 40, what
    assert_groups_close(table, cpu, 2e-6, "table path")
    assert_groups_close(params, cpu, 2e-6, "parameter path")


def test_emulated_cuda_adam_grad_scale_and_found_inf(adam_lib):
    cpu = adam_group(ADAM_SHAPES[:5], torch.float32, seed=4)
    for t in cpu["grads"]:
        t.mul_(1024.0)
    emu = clone(cpu)
    scale = torch.tensor([1024.0])
    kw = adam_kwargs(grad_scale=scale, found_inf=torch.tensor([0.0]))
    cpu_adam(cpu, **kw)
    emulated_adam(adam_lib, emu, **kw)
    assert_groups_close(emu, cpu, 2e-6, "grad_scale")
    before = clone(emu)
    emulated_adam(adam_lib, emu, **adam_kwargs(grad_scale=scale, found_inf=torch.tensor([1.0])))
    for key in ADAM_KEYS:  # found_inf != 0: nothing changes, step counters included
        for a, b in zip(emu[key], before[key]):
            assert torch.equal(a, b), key


@pytest.mark.parametrize("variant", ["bf16_master_ema", "fp16_master", "bf16_stochastic_rounding", "fp64"])
def test_emulated_cuda_adam_formats_match_cpu(adam_lib, variant):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}[variant.split("_")[0]]
    cpu = adam_group(ADAM_SHAPES, dtype, master="master" in variant, ema="ema" in variant, seed=5)
    emu = clone(cpu)
    kw = adam_kwargs(weight_decay=0.01, decoupled_weight_decay=True,
                     stochastic_rounding="stochastic" in variant)
    for _ in range(2):
        cpu_adam(cpu, **kw)
        emulated_adam(adam_lib, emu, **kw)
    tol = {torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float64: 1e-12}[dtype]
    assert_groups_close(emu, cpu, tol, variant)


# =====================================================================================
# The noise kernel (csrc/cuda/philox_noise.cu, the GPU's philox_debug) against the CPU stream.
# =====================================================================================
@pytest.fixture(scope="module")
def noise_lib(tmp_path_factory):
    return ctypes.CDLL(cuda_emu.build(str(tmp_path_factory.mktemp("cuda_emu_noise")), "philox_noise"))


@pytest.mark.parametrize("n", [1, 4, 4 * 1000 + 3])
def test_emulated_cuda_noise_kernel_matches_cpu_stream(noise_lib, n):
    lib = noise_lib
    so = torch.tensor([2**40 + 9, -3], dtype=torch.int64)
    for kind in (1, 2):
        out = torch.full((n,), float("nan"))
        assert lib.emu_philox_noise(ptr(out), ctypes.c_int64(n), kind, ptr(so)) == 0
        want = ops.philox_debug(2**40 + 9, -3, 0, (n + 3) // 4, kind)[:n]
        if kind == 1:
            assert torch.equal(out, want), "uniforms differ"
        else:
            assert_close(out, want, 2e-6, "normals")
