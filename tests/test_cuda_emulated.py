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
    return ctypes.CDLL(cuda_emu.build(str(tmp_path_factory.mktemp("cuda_emu")), "reparam"))


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
# block-per-row reduction), last dims of a multiple of 4 (the 16-byte vector paths), an empty latent dim
# and an empty batch.
CASES = [((7,), "none"), ((6, 37), "shared"), ((2, 3, 9), "shared_keepdim"), ((5, 13), "per_row"),
         ((4, 10), "broadcast_column"), ((3, 1030), "shared"), ((5, 8), "per_row"), ((6, 32), "shared"),
         ((2, 1024), "none"), ((3, 0), "none"), ((0, 4), "none")]


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
