"""The CUDA reparam kernels (csrc/cuda/reparam.cu) run on the CPU through a small emulation of CUDA
(tools/cuda_emu: blocks in turn, a block's threads as std::threads, barriers for __syncthreads and the warp
shuffles), against the CPU op on the same (seed, offset). This checks, without a GPU, what the kernels
compute: noise indexing over samples and rows, the per-row reductions of the warp and block paths, priors
read through row strides, num_samples 0/1/K, log-probs and the backward. It says nothing about the GPU's
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

pytestmark = pytest.mark.skipif(cuda_emu.missing() is not None, reason=f"CUDA emulation: {cuda_emu.missing()}")

DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}
TOL = {torch.float64: 8e-6, torch.float32: 8e-6, torch.float16: 8e-3, torch.bfloat16: 6.4e-2}


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return ctypes.CDLL(cuda_emu.build(str(tmp_path_factory.mktemp("cuda_emu"))))


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


def emulated_forward(lib, mu, logvar, prior, seed_offset, k, log_prob):
    batch, d = mu.shape[:-1], mu.shape[-1]
    rows = batch.numel()
    sampled = log_prob and k > 0
    z = mu.new_empty(with_samples(mu.shape, k)) if k > 0 else mu.new_empty(0)
    kl = mu.new_empty(batch)
    lq = mu.new_empty(with_samples(batch, k)) if sampled else mu.new_empty(0)
    lp = mu.new_empty(with_samples(batch, k)) if sampled else mu.new_empty(0)
    (pm, pm_stride), (plv, plv_stride) = (prior_rows(prior[0], mu), prior_rows(prior[1], mu)) if prior else \
        ((None, 0), (None, 0))
    rc = lib.emu_reparam_forward(DTYPE_CODE[mu.dtype], ptr(mu), ptr(logvar), ptr(pm), ptr(plv),
                                 ctypes.c_int64(pm_stride), ctypes.c_int64(plv_stride), ptr(seed_offset), ptr(z),
                                 ptr(kl), ptr(lq), ptr(lp), ctypes.c_int64(rows), ctypes.c_int64(d),
                                 ctypes.c_int64(k))
    assert rc == 0
    return z, kl, lq, lp


def emulated_backward(lib, grads, mu, logvar, prior, seed_offset, k):
    gz, gkl, glq, glp = grads
    batch, d = mu.shape[:-1], mu.shape[-1]
    gkl = gkl.expand(batch).contiguous()
    gmu, glv = torch.empty_like(mu), torch.empty_like(mu)
    gpm, gplv = (torch.empty_like(mu), torch.empty_like(mu)) if prior else (mu.new_empty(0), mu.new_empty(0))
    (pm, pm_stride), (plv, plv_stride) = (prior_rows(prior[0], mu), prior_rows(prior[1], mu)) if prior else \
        ((None, 0), (None, 0))
    rc = lib.emu_reparam_backward(DTYPE_CODE[mu.dtype], ptr(mu), ptr(logvar), ptr(pm), ptr(plv),
                                  ctypes.c_int64(pm_stride), ctypes.c_int64(plv_stride), ptr(seed_offset),
                                  ptr(gz), ptr(gkl), ptr(glq), ptr(glp), ptr(gmu), ptr(glv), ptr(gpm), ptr(gplv),
                                  ctypes.c_int64(batch.numel()), ctypes.c_int64(d), ctypes.c_int64(k))
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
# block-per-row reduction), an empty latent dim and an empty batch.
CASES = [((7,), "none"), ((6, 37), "shared"), ((2, 3, 9), "shared_keepdim"), ((5, 13), "per_row"),
         ((4, 10), "broadcast_column"), ((3, 1030), "shared"), ((3, 0), "none"), ((0, 4), "none")]


def run_case(lib, shape, prior_kind, k, log_prob, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g).to(dtype)
    logvar = (0.5 * torch.randn(shape, generator=g)).to(dtype)
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
    for i, (shape, prior_kind) in enumerate(CASES[:6]):
        run_case(lib, shape, prior_kind, 2, True, dtype, seed=100 + i)


def test_emulated_cuda_reparam_noise_is_the_cpu_stream(lib):
    # mu = 0, logvar = 0: z is the noise; element i of z (samples first) is normal number i of the stream.
    zeros = torch.zeros(3, 11)
    so = torch.tensor([-5, 123], dtype=torch.int64)  # a seed with the top bit set
    z = emulated_forward(lib, zeros, zeros, None, so, 4, False)[0]
    want = ops.philox_debug(-5, 123, 0, (z.numel() + 3) // 4, 2)[:z.numel()]
    assert_close(z.flatten(), want, 2e-6, "z = eps")
