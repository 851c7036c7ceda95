"""CUDA kernels against the CPU kernels (same csrc/math code), against torch's own CUDA fused Adam,
under CUDA-graph capture, past 2^31 elements, and with bad inputs. Every test here is marked
`cuda` and skipped without a GPU (tests/conftest.py); `make gpu-check` runs them.

Tolerances: both devices run the same formulas, but nvcc contracts a*b+c into FMAs and the GPU's
exp/log differ from the CPU's in the last bit, so results agree to a few units in the last place
of the compute type: fp64 1e-12, fp32 2e-6 (relative to the tensor's largest element), and one
unit of the storage type for fp16 (2e-3) / bf16 (1.6e-2), where a value next to a rounding
boundary may round the other way. Step counters and the Philox uniforms must match exactly.
"""
import os

import pytest
import torch

import fused_kingma
from fused_kingma._ops import ops

# FUSED_KINGMA_CUDA_TESTS_ON_CPU=1 is a developer aid for machines without a GPU: it runs this
# file's logic with "cuda" replaced by the CPU (parity tests then compare CPU with CPU and prove
# nothing about CUDA; tests that need a real GPU skip). Never set in CI or `make gpu-check`.
DRY_RUN = os.environ.get("FUSED_KINGMA_CUDA_TESTS_ON_CPU") == "1"
pytestmark = [] if DRY_RUN else [pytest.mark.cuda]
needs_gpu = pytest.mark.skipif(DRY_RUN, reason="needs a real GPU")
CUDA = torch.device("cpu" if DRY_RUN else "cuda")
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LOW = (torch.float16, torch.bfloat16)


def assert_close_scaled(got, want, tol, what=""):
    """|got - want| <= tol * max(1e-30, max|want|) elementwise (NaN only where want is NaN)."""
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, want.shape, got.dtype, want.dtype)
    got64, want64 = got.detach().cpu().double(), want.detach().cpu().double()
    assert torch.equal(got64.isnan(), want64.isnan()), f"{what}: NaN pattern differs"
    ok = ~want64.isnan()
    if not ok.any():
        return
    scale = want64[ok].abs().max().clamp_min(1e-30)
    err = (got64[ok] - want64[ok]).abs().max()
    assert err <= tol * scale, f"{what}: max error {err:.3e} > {tol:.1e} * {scale:.3e}"


def free_gpu_bytes():
    free, _ = torch.cuda.mem_get_info()
    return free


# =====================================================================================
# Adam family: the op fused_kingma::adam_step_ called directly with tensor lists.
# =====================================================================================
ADAM_LISTS = ("params", "grads", "exp_avgs", "second", "max_second", "steps", "masters", "emas")


def make_adam_group(shapes, dtype, *, amsgrad=False, master=False, ema=False, step=3.0, seed=0, device="cpu",
                    step_device=None):
    """Random parameters, grads and (non-zero) state for one param group, on `device`."""
    g = torch.Generator().manual_seed(seed)

    def rnd(shape, dt, scale=1.0):
        return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dt).to(device)

    state_dt = torch.float32 if master else dtype
    ema_dt = torch.float32 if dtype in LOW else dtype
    params = [rnd(s, dtype) for s in shapes]
    group = {
        "params": params,
        "grads": [rnd(s, dtype, 0.1) for s in shapes],
        "exp_avgs": [rnd(s, state_dt, 0.01) for s in shapes],
        "second": [rnd(s, state_dt, 0.01).square() for s in shapes],
        "max_second": [rnd(s, state_dt, 0.02).square() for s in shapes] if amsgrad else [],
        "steps": [torch.tensor(step, dtype=torch.float32, device=step_device or "cpu") for _ in shapes],
        "masters": [p.float() + rnd(p.shape, torch.float32, 1e-3) for p in params] if master else [],
        "emas": [rnd(s, ema_dt) for s in shapes] if ema else [],
    }
    return group


def clone_group(group, device=None, step_device=None):
    out = {}
    for k, lst in group.items():
        dev = (step_device or "cpu") if k == "steps" else device
        out[k] = [t.detach().clone() if dev is None else t.detach().to(dev, copy=True) for t in lst]
    return out


def adam_call(group, *, rule="adam", lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False,
              amsgrad=False, maximize=False, ema_decay=0.999, stochastic_rounding=False, seed=1234, grad_scale=None,
              found_inf=None, check_only=False):
    kwargs = dict(rule=rule, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay,
                  decoupled_weight_decay=decoupled, amsgrad=amsgrad, maximize=maximize, ema_decay=ema_decay,
                  stochastic_rounding=stochastic_rounding, seed=seed, lr_is_fp32_tensor=False,
                  grad_scale=grad_scale, found_inf=found_inf, check_only=check_only)
    names = {a.name for a in ops.adam_step_.default._schema.arguments}
    ops.adam_step_(
        group["params"], group["grads"], group["exp_avgs"], group["second"], group["max_second"], group["steps"],
        group["masters"], group["emas"], **{k: v for k, v in kwargs.items() if k in names})


def assert_groups_close(got, want, dtype, what=""):
    for k in ADAM_LISTS:
        for i, (a, b) in enumerate(zip(got[k], want[k])):
            if k == "steps":
                assert a.item() == b.item(), f"{what} steps[{i}]: {a.item()} != {b.item()}"
            else:
                assert_close_scaled(a, b, TOL[dtype] if b.dtype == dtype else TOL[torch.float32], f"{what} {k}[{i}]")


def assert_groups_equal(got, want, what=""):
    for k in ADAM_LISTS:
        for i, (a, b) in enumerate(zip(got[k], want[k])):
            assert torch.equal(a.cpu(), b.cpu()), f"{what}: {k}[{i}] changed"


# Shapes: scalar, 1 element, odd, 2-D, larger than one CUDA chunk (65536) with a tail.
SHAPES = [(), (1,), (7,), (33, 5), (1000,), (65536 + 37,)]

ADAM_OPTIONS = {
    "adam": {},
    "adam_l2": {"weight_decay": 0.1},
    "adamw": {"weight_decay": 0.1, "decoupled": True},
    "amsgrad": {"amsgrad": True},
    "maximize": {"maximize": True, "weight_decay": 0.05},
    "adamax": {"rule": "adamax", "weight_decay": 0.05},
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(ADAM_OPTIONS))
def test_adam_cuda_matches_cpu_kernel(dtype, name):
    opts = ADAM_OPTIONS[name]
    cpu = make_adam_group(SHAPES, dtype, amsgrad=opts.get("amsgrad", False), seed=1)
    gpu = clone_group(cpu, CUDA)
    for _ in range(3):
        adam_call(cpu, **opts)
        adam_call(gpu, **opts)
    assert_groups_close(gpu, cpu, dtype, name)


@pytest.mark.sanitize
@pytest.mark.parametrize("dtype", LOW, ids=str)
@pytest.mark.parametrize("variant", ["master", "master_ema", "ema", "stochastic_rounding", "sr_ema"])
def test_adam_cuda_mixed_precision_matches_cpu(dtype, variant):
    master = variant.startswith("master")
    ema = variant.endswith("ema")
    sr = variant.startswith("s")
    if sr and dtype != torch.bfloat16:
        pytest.skip("stochastic rounding is for bf16")
    cpu = make_adam_group(SHAPES, dtype, master=master, ema=ema, seed=2)
    gpu = clone_group(cpu, CUDA)
    for _ in range(3):
        adam_call(cpu, weight_decay=0.01, decoupled=True, stochastic_rounding=sr)
        adam_call(gpu, weight_decay=0.01, decoupled=True, stochastic_rounding=sr)
    assert_groups_close(gpu, cpu, dtype, variant)


@pytest.mark.sanitize
def test_adam_cuda_many_tensors_table_and_param_paths_agree():
    # 100 tensors: more than one kernel-parameter batch (32 rows) -> the device table path; the
    # same group 20 tensors at a time goes through the parameter path. Same kernel body: bitwise.
    shapes = [(int(n),) for n in torch.randint(1, 3000, (100,), generator=torch.Generator().manual_seed(3))]
    cpu = make_adam_group(shapes, torch.float32, amsgrad=True, seed=3)
    whole = clone_group(cpu, CUDA)
    pieces = clone_group(cpu, CUDA)
    adam_call(whole, amsgrad=True)
    for lo in range(0, 100, 20):
        adam_call({k: v[lo:lo + 20] for k, v in pieces.items()}, amsgrad=True)
    assert_groups_equal(whole, pieces, "table vs param path")
    adam_call(cpu, amsgrad=True)
    assert_groups_close(whole, cpu, torch.float32, "vs cpu")


@pytest.mark.sanitize
def test_adam_cuda_non_contiguous_and_misaligned_tensors():
    # A transposed group (dense, run in its own layout: no staging) and views at an odd element offset
    # (pointers not 16-byte aligned: the kernel's scalar path).
    base = make_adam_group([(65, 33), (4099,)], torch.float32, seed=4)
    cpu = clone_group(base)
    cpu = {k: [t.t() if (k != "steps" and t.dim() == 2) else t for t in v] for k, v in cpu.items()}
    cpu = {k: [t[1:] if (k != "steps" and t.dim() == 1) else t for t in v] for k, v in cpu.items()}
    gpu = clone_group(base, CUDA)
    gpu = {k: [t.t() if (k != "steps" and t.dim() == 2) else t for t in v] for k, v in gpu.items()}
    gpu = {k: [t[1:] if (k != "steps" and t.dim() == 1) else t for t in v] for k, v in gpu.items()}
    assert gpu["params"][1].data_ptr() % 16 != 0
    adam_call(cpu, weight_decay=0.1)
    adam_call(gpu, weight_decay=0.1)
    assert_groups_close(gpu, cpu, torch.float32, "views")


@pytest.mark.sanitize
def test_adam_cuda_several_staged_read_only_grads():
    # Grads in another layout than their params are staged into temporaries the kernel only reads; each must
    # live until the launch ran (a freed one would be handed by the caching allocator to the next staging copy).
    base = make_adam_group([(33, 7)] * 6 + [(5, 1)], torch.float32, seed=6)
    cpu, gpu = clone_group(base), clone_group(base, CUDA)
    for group in (cpu, gpu):
        group["grads"] = [g.t().contiguous().t() if g.shape[1] > 1 else g for g in group["grads"]]
    assert not gpu["grads"][0].is_contiguous()
    adam_call(cpu, amsgrad=False)
    adam_call(gpu, amsgrad=False)
    assert_groups_close(gpu, cpu, torch.float32, "staged grads")


@pytest.mark.sanitize
@pytest.mark.parametrize("where", ["device", "cpu"])
def test_adam_cuda_grad_scaler(where):
    where = CUDA if where == "device" else torch.device("cpu")
    cpu = make_adam_group(SHAPES, torch.float32, seed=5)
    gpu = clone_group(cpu, CUDA, step_device=CUDA)
    scale = torch.tensor([1024.0])
    for lst in (cpu["grads"], gpu["grads"]):
        for t in lst:
            t.mul_(1024.0)
    adam_call(cpu, grad_scale=scale, found_inf=torch.tensor([0.0]))
    adam_call(gpu, grad_scale=scale.to(where), found_inf=torch.tensor([0.0], device=where))
    assert_groups_close(gpu, cpu, torch.float32, "grad_scale")
    # found_inf != 0: nothing changes at all, step counters included.
    before = clone_group(gpu, CUDA, step_device=CUDA)
    adam_call(gpu, grad_scale=scale.to(where), found_inf=torch.tensor([1.0], device=where))
    assert_groups_equal(gpu, before, "found_inf")


def test_adam_cuda_device_steps_match_host_steps():
    host = make_adam_group(SHAPES, torch.float32, seed=6)
    host = clone_group(host, CUDA)
    dev = clone_group(host, CUDA, step_device=CUDA)
    for _ in range(4):
        adam_call(host)
        adam_call(dev)
    assert_groups_equal(host, dev, "device vs host steps")
    assert all(s.item() == 7.0 for s in dev["steps"])


def test_adam_cuda_step_counter_shared_by_tensors_is_incremented_once():
    # One device counter passed for tensors 0, 5 and 35 of 40 (torch never does; a direct op call may): incremented
    # once per step, every update using the new value, as the CPU op does with a shared host counter. 40 tensors
    # take the device-table path eagerly.
    shapes = [(int(n),) for n in torch.randint(1, 300, (40,), generator=torch.Generator().manual_seed(6))]
    cpu = make_adam_group(shapes, torch.float32, seed=6)
    gpu = clone_group(cpu, CUDA, step_device=CUDA)
    for group in (cpu, gpu):
        group["steps"][5] = group["steps"][35] = group["steps"][0]
    for _ in range(2):
        adam_call(cpu)
        adam_call(gpu)
    assert [s.item() for s in gpu["steps"]] == [5.0] * 40
    assert_groups_close(gpu, cpu, torch.float32, "shared step counter")


@needs_gpu
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adam_cuda_matches_torch_fused_adam_100_steps(amsgrad, weight_decay):
    g = torch.Generator(device=CUDA).manual_seed(7)
    shapes = [(1000,), (257, 3), (1,), (65536 + 5,)]
    ref_params = [torch.randn(s, device=CUDA, generator=g).requires_grad_() for s in shapes]
    ours = {
        "params": [p.detach().clone() for p in ref_params],
        "grads": [torch.zeros_like(p) for p in ref_params],
        "exp_avgs": [torch.zeros_like(p) for p in ref_params],
        "second": [torch.zeros_like(p) for p in ref_params],
        "max_second": [torch.zeros_like(p) for p in ref_params] if amsgrad else [],
        "steps": [torch.zeros((), device=CUDA) for _ in ref_params],
        "masters": [],
        "emas": [],
    }
    opt = torch.optim.AdamW if weight_decay else torch.optim.Adam
    ref = opt(ref_params, lr=1e-3, weight_decay=weight_decay, amsgrad=amsgrad, fused=True)
    for _ in range(100):
        for p, mine in zip(ref_params, ours["grads"]):
            grad = torch.randn(p.shape, device=CUDA, generator=g)
            p.grad = grad.clone()
            mine.copy_(grad)
        ref.step()
        adam_call(ours, lr=1e-3, weight_decay=weight_decay, decoupled=bool(weight_decay), amsgrad=amsgrad)
    for i, (p, mine) in enumerate(zip(ref_params, ours["params"])):
        rel = ((mine - p.detach()).abs().max() / p.detach().abs().max()).item()
        assert rel <= 1e-6, f"param {i}: relative difference {rel:.2e} after 100 steps"


@needs_gpu
def test_adam_cuda_graph_capture_replay_equals_eager():
    # Capturable use: steps, grad_scale and found_inf on the GPU. 40 tensors, so the eager calls
    # take the device-table path and the captured call the kernel-parameter path.
    shapes = [(1000,), (33, 5), (65536 + 3,)] + [(17,)] * 37
    base = make_adam_group(shapes, torch.float32, amsgrad=True, seed=8)
    captured = clone_group(base, CUDA, step_device=CUDA)
    eager = clone_group(base, CUDA, step_device=CUDA)
    scale = torch.tensor([4.0], device=CUDA)
    found_inf = torch.tensor([0.0], device=CUDA)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        adam_call(captured, amsgrad=True, grad_scale=scale, found_inf=found_inf)
    # Capture ran nothing: state is still the initial one.
    assert_groups_equal(captured, clone_group(base, CUDA, step_device=CUDA), "after capture")
    g = torch.Generator(device=CUDA).manual_seed(9)
    for it in range(5):
        for a, b in zip(captured["grads"], eager["grads"]):
            grad = torch.randn(a.shape, device=CUDA, generator=g) * 4.0
            a.copy_(grad)
            b.copy_(grad)
        found_inf.fill_(1.0 if it == 2 else 0.0)  # one skipped step, decided on the device
        graph.replay()
        adam_call(eager, amsgrad=True, grad_scale=scale, found_inf=found_inf)
    torch.cuda.synchronize()
    assert_groups_equal(captured, eager, "graph replay vs eager")
    assert all(s.item() == 3.0 + 4 for s in captured["steps"])


def test_adam_cuda_master_weights_group_with_fp32_params_matches_cpu():
    # A master-weights group may hold fp32 params (a LayerNorm kept in fp32): FusedAdam passes the param itself
    # as its master_params entry, which the kernels ignore for non-fp16/bf16 params.
    def run(device):
        g = torch.Generator().manual_seed(21)
        ps = [torch.nn.Parameter(torch.randn(s, generator=g).to(dt).to(device))
              for s, dt in (((300,), torch.bfloat16), ((7, 5), torch.float32), ((64,), torch.float16))]
        opt = fused_kingma.FusedAdamW(ps, lr=1e-2, weight_decay=0.1, master_weights=True)
        for _ in range(3):
            for p in ps:
                p.grad = torch.randn(p.shape, generator=g).to(p.dtype).to(device)
            opt.step()
        return [p.detach().cpu() for p in ps], [opt.state[p]["exp_avg"].cpu() for p in ps]

    (gpu_p, gpu_m), (cpu_p, cpu_m) = run(CUDA), run("cpu")
    for a, b in zip(gpu_p + gpu_m, cpu_p + cpu_m):
        assert_close_scaled(a, b, TOL[a.dtype], "master-weights group")


@needs_gpu
def test_adam_cuda_capture_with_host_steps_is_refused_untouched():
    # Host step counters would be read once, at capture: every replay would repeat that step. Refused before
    # anything changes (torch's Adam refuses the same without capturable=True).
    group = make_adam_group([(100,), (7,)], torch.float32, device=CUDA)
    snapshot = clone_group(group, CUDA)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="capturable=True"):
        with torch.cuda.graph(graph):
            adam_call(group)
    assert_groups_equal(group, snapshot, "refused capture")


def test_adam_cuda_bad_inputs_leave_state_untouched():
    gpu = make_adam_group([(10,), (3, 4)], torch.float32, device=CUDA)
    snapshot = clone_group(gpu, CUDA)
    cases = [
        ("grads", 1, lambda t: t.cpu(), r"grad is on cpu"),
        ("exp_avgs", 0, lambda t: t[:5], r"exp_avg has shape"),
        ("second", 1, lambda t: t.double(), r"exp_avg_sq has dtype"),
        ("params", 1, lambda t: t.cpu(), r"on cpu"),
    ] if not DRY_RUN else [
        ("exp_avgs", 0, lambda t: t[:5], r"exp_avg has shape"),
    ]
    for key, i, change, message in cases:
        bad = {k: list(v) for k, v in gpu.items()}
        bad[key][i] = change(bad[key][i])
        with pytest.raises((RuntimeError, TypeError, ValueError), match=message):
            adam_call(bad)
        assert_groups_equal(gpu, snapshot, f"after bad {key}")
    with pytest.raises((RuntimeError, ValueError), match="found_inf"):
        adam_call(gpu, found_inf=torch.zeros(2, device=CUDA))
    assert_groups_equal(gpu, snapshot, "after bad found_inf")


@needs_gpu
@pytest.mark.skipif(not torch.cuda.is_available() or free_gpu_bytes() < 24 * 2**30, reason="needs 24 GiB free")
def test_adam_cuda_huge_tensor_past_2_31_elements():
    # bf16 param + grad + bf16 state: 4 x 4.3 GB. Elements on both sides of 2^31 must get the same
    # update as the CPU kernel gives the same values (64-bit indexing, no wrap-around).
    n = 2**31 + 1001
    g = torch.Generator(device=CUDA).manual_seed(10)
    group = {
        "params": [torch.randn(n, device=CUDA, generator=g, dtype=torch.bfloat16)],
        "grads": [torch.randn(n, device=CUDA, generator=g, dtype=torch.bfloat16)],
        "exp_avgs": [torch.zeros(n, device=CUDA, dtype=torch.bfloat16)],
        "second": [torch.zeros(n, device=CUDA, dtype=torch.bfloat16)],
        "max_second": [], "steps": [torch.zeros((), device=CUDA)], "masters": [], "emas": [],
    }
    probes = [0, 5, 2**31 - 3, 2**31, 2**31 + 2, n - 4]
    ref = {k: [] for k in ADAM_LISTS}
    for k in ("params", "grads", "exp_avgs", "second"):
        ref[k] = [torch.cat([group[k][0][i:i + 4].cpu() for i in probes])]
    ref["steps"] = [torch.zeros(())]
    adam_call(group)
    adam_call(ref)
    got = torch.cat([group["params"][0][i:i + 4].cpu() for i in probes])
    assert_close_scaled(got, ref["params"][0], TOL[torch.bfloat16], "params around 2^31")
    got_m = torch.cat([group["exp_avgs"][0][i:i + 4].cpu() for i in probes])
    assert_close_scaled(got_m, ref["exp_avgs"][0], TOL[torch.bfloat16], "exp_avg around 2^31")


# =====================================================================================
# Reparameterization + KL through the public function, with explicit (seed, offset) so the CPU and
# the CUDA kernel draw the same noise.
# =====================================================================================
TOL_Z = {torch.float64: 2e-6, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
TOL_KL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}

# Philox4x32-10 and the noise definition of README "How the noise is defined", in plain Python:
# an oracle independent of both kernels (used for a few elements).
_M32 = 0xFFFFFFFF


def philox_words(seed, offset, block):
    c = [block & _M32, (block >> 32) & _M32, offset & _M32, (offset >> 32) & _M32]
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & _M32, (k1 + 0xBB67AE85) & _M32
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [((p1 >> 32) ^ c[1] ^ k0) & _M32, p1 & _M32, ((p0 >> 32) ^ c[3] ^ k1) & _M32, p0 & _M32]
    return c


def reference_normal(seed, offset, i):
    import math

    import numpy as np

    w = philox_words(seed, offset, i // 4)
    u = [float(np.float32(x) * np.float32(2.0**-32) + np.float32(2.0**-33)) for x in w]
    a, b = (u[0], u[1]) if i % 4 < 2 else (u[2], u[3])
    r = math.sqrt(-2.0 * math.log(a))
    return r * (math.cos(2 * math.pi * b) if i % 2 == 0 else math.sin(2 * math.pi * b))


def reparam(mu, logvar, **kw):
    return fused_kingma.reparameterize(mu, logvar, **kw)


def random_latents(shape, dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    logvar = (0.5 * torch.randn(shape, generator=g, dtype=torch.float64)).to(dtype)
    return mu.to(device), logvar.to(device)


# (1,), odd last dims (Philox blocks straddle rows), one row >= 1024 (a block per row); short rows, several to a
# warp (4, 8 and 16 lanes each), with row counts that end mid-warp and mid-block.
REPARAM_SHAPES = [(1,), (7,), (3, 5), (64, 33), (4, 1031), (1001, 8), (517, 32), (129, 60)]


@pytest.mark.sanitize
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", REPARAM_SHAPES, ids=str)
@pytest.mark.parametrize("num_samples", [1, 3])
def test_reparam_cuda_matches_cpu_kernel(dtype, shape, num_samples):
    mu, logvar = random_latents(shape, dtype, seed=11)
    kw = dict(num_samples=num_samples, seed=1234, offset=8)
    results = {}
    for dev in ("cpu", CUDA):
        m = mu.to(dev).requires_grad_()
        lv = logvar.to(dev).requires_grad_()
        z, kl = reparam(m, lv, **kw)
        g = torch.Generator().manual_seed(12)
        gz = torch.randn(z.shape, generator=g, dtype=torch.float64).to(dtype).to(dev)
        gkl = torch.randn(kl.shape, generator=g, dtype=torch.float64).to(dtype).to(dev)
        torch.autograd.backward([z, kl], [gz, gkl])
        results[str(dev)] = (z.detach(), kl.detach(), m.grad, lv.grad)
    (zc, klc, gmc, glc), (zg, klg, gmg, glg) = results["cpu"], results[str(CUDA)]
    assert_close_scaled(zg, zc, TOL_Z[dtype], "z")
    assert_close_scaled(klg, klc, TOL_KL[dtype], "kl")
    assert_close_scaled(gmg, gmc, TOL_Z[dtype], "grad mu")
    assert_close_scaled(glg, glc, TOL_Z[dtype], "grad logvar")


@pytest.mark.sanitize
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_reparam_cuda_prior_matches_cpu_kernel(dtype):
    mu, logvar = random_latents((9, 37), dtype, seed=13)
    pm, plv = random_latents((37,), dtype, seed=14)  # broadcast over the batch, learned
    results = {}
    for dev in ("cpu", CUDA):
        leaves = [t.to(dev).requires_grad_() for t in (mu, logvar, pm, plv)]
        z, kl = reparam(leaves[0], leaves[1], prior=(leaves[2], leaves[3]), num_samples=2, seed=5, offset=0)
        (z.square().sum() + kl.sum()).backward()
        results[str(dev)] = [z.detach(), kl.detach()] + [t.grad for t in leaves]
    for name, a, b in zip(["z", "kl", "grad mu", "grad logvar", "grad prior mu", "grad prior logvar"],
                          results[str(CUDA)], results["cpu"]):
        assert_close_scaled(a, b, TOL_Z[dtype], name)


@pytest.mark.sanitize
def test_reparam_cuda_noise_is_the_defined_noise():
    # mu = 0, logvar = 0: z is the noise itself; check elements against the plain-Python oracle,
    # in the first Philox block, at a row boundary and at the end.
    n = 3 * 4099
    z, _ = reparam(torch.zeros(3, 4099, device=CUDA), torch.zeros(3, 4099, device=CUDA), seed=2**40 + 7, offset=3)
    flat = z.flatten().cpu().double()
    for i in [0, 1, 2, 3, 4098, 4099, 4100, n - 1]:
        want = reference_normal(2**40 + 7, 3, i)
        assert abs(flat[i].item() - want) <= 1e-5 * max(1.0, abs(want)), (i, flat[i].item(), want)


@pytest.mark.parametrize("dim", [5, 64, 1024, 4099])
def test_reparam_cuda_row_reduction_is_deterministic_and_exact(dim):
    # Run twice: the per-row sums must be bitwise equal (fixed reduction order, no atomics), and
    # equal to a float64 sum to fp32 rounding.
    mu, logvar = random_latents((37, dim), torch.float32, seed=15, device=CUDA)
    kl1 = reparam(mu, logvar, seed=1, offset=0)[1]
    kl2 = reparam(mu, logvar, seed=1, offset=0)[1]
    assert torch.equal(kl1, kl2)
    m, lv = mu.double(), logvar.double()
    want = 0.5 * (m.square() + lv.exp() - 1 - lv).sum(-1)
    assert_close_scaled(kl1.double(), want, 1e-5, "kl vs float64")


@needs_gpu
def test_reparam_cuda_graph_replay_draws_fresh_noise():
    mu = torch.zeros(256, 64, device="cuda")
    logvar = torch.zeros(256, 64, device="cuda")
    reparam(mu, logvar)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z, kl = reparam(mu, logvar)
    draws = []
    for _ in range(3):
        graph.replay()
        draws.append(z.clone())
    torch.cuda.synchronize()
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2]), "replays reused noise"
    for d in draws:
        assert abs(d.mean().item()) < 0.05 and abs(d.std().item() - 1) < 0.05
    assert torch.equal(kl, torch.zeros_like(kl))


@needs_gpu
@pytest.mark.skipif(not torch.cuda.is_available() or free_gpu_bytes() < 20 * 2**30, reason="needs 20 GiB free")
def test_reparam_cuda_huge_batch_past_2_31_elements():
    rows, dim = 2**22 + 1, 512  # 2^31 + 512 elements, bf16
    mu = torch.zeros(rows, dim, device="cuda", dtype=torch.bfloat16)
    logvar = torch.zeros_like(mu)
    seed, offset = 99, 5
    z, kl = reparam(mu, logvar, seed=seed, offset=offset)
    flat = z.flatten()
    for i in [0, 2**31 - 2, 2**31, 2**31 + 3, rows * dim - 1]:
        want = reference_normal(seed, offset, i)
        got = flat[i].float().item()
        assert abs(got - want) <= 1e-2 * max(1.0, abs(want)), (i, got, want)
    assert kl.shape == (rows,) and torch.equal(kl, torch.zeros_like(kl))


def test_reparam_cuda_bad_inputs():
    mu, logvar = random_latents((4, 6), torch.float32, seed=16, device=CUDA)
    with pytest.raises((RuntimeError, ValueError, TypeError), match="logvar"):
        reparam(mu, logvar.cpu() if not DRY_RUN else logvar[:, :5])
    with pytest.raises((RuntimeError, ValueError, TypeError), match="logvar"):
        reparam(mu, logvar.double())
    if not DRY_RUN:  # the op with mu on the CPU, seed_offset on the GPU: the CUDA kernel is picked, names mu
        seed_offset = torch.zeros(2, dtype=torch.int64, device=CUDA)
        with pytest.raises(RuntimeError, match="mu is on cpu"):
            ops.reparam_fwd(mu.cpu(), logvar.cpu(), None, None, seed_offset, 1, False)


# =====================================================================================
# Reparameterization: the noise, sample counts, priors and log-densities of the CUDA op against the CPU
# op on the same (seed, offset), and graph capture.
# =====================================================================================
def cpu_noise(seed, offset, n, kind):
    """Numbers 0 .. n - 1 of the CPU noise stream: uniforms (kind 1) or normals (kind 2)."""
    return ops.philox_debug(seed, offset, 0, (n + 3) // 4, kind)[:n]


@needs_gpu
@pytest.mark.sanitize
@pytest.mark.parametrize("seed, offset", [(0, 0), (1234, 8), (2**64 - 5, 2**63 + 11)], ids=str)
def test_cuda_uniforms_bit_for_bit_and_normals_match_cpu(seed, offset):
    n = 4 * 1000 + 3  # a partial last block
    so = torch.tensor([fused_kingma.functional._as_int64(seed, "seed"),
                       fused_kingma.functional._as_int64(offset, "offset")], dtype=torch.int64, device=CUDA)
    uniforms = ops.philox_debug_cuda(so, n, 1).cpu()
    assert torch.equal(uniforms, cpu_noise(seed, offset, n, 1)), "CUDA uniforms differ from the CPU's"
    normals = ops.philox_debug_cuda(so, n, 2).cpu()
    assert_close_scaled(normals, cpu_noise(seed, offset, n, 2), 2e-6, "normals")


# z's flat index (samples first) picks the noise number: mu = 0, logvar = 0 makes z the noise itself.
@pytest.mark.sanitize
@pytest.mark.parametrize("shape, num_samples", [((7,), 1), ((3, 5), 3), ((2, 3, 9), 2), ((5, 1030), 2)], ids=str)
def test_reparam_cuda_noise_indexing_matches_cpu_stream(shape, num_samples):
    seed, offset = 2**40 + 3, 17
    zeros = torch.zeros(shape, device=CUDA)
    z, _ = reparam(zeros, zeros, num_samples=num_samples, seed=seed, offset=offset)
    want_shape = (num_samples, *shape) if num_samples > 1 else shape
    assert z.shape == want_shape
    want = cpu_noise(seed, offset, z.numel(), 2).reshape(want_shape)
    assert_close_scaled(z.cpu(), want, 2e-6, "z = eps")


PRIOR_LAYOUTS = {  # prior shapes for mu of shape (B, D) = (6, 37): shared rows (stride 0) or expanded
    "none": None,
    "shared_1d": (37,),
    "shared_2d": (1, 37),
    "per_row": (6, 37),
    "per_row_column": (6, 1),
}


def reparam_all_outputs(dev, mu, logvar, prior, num_samples, seed):
    """Forward with log-probs and backward with random output grads on `dev`; returns outputs and grads."""
    leaves = [t.to(dev).requires_grad_() for t in [mu, logvar] + list(prior or [])]
    pr = (leaves[2], leaves[3]) if prior else None
    if num_samples == 0:
        outs = [fused_kingma.gaussian_kl(leaves[0], leaves[1], prior=pr)]
    else:
        outs = list(reparam(leaves[0], leaves[1], prior=pr, num_samples=num_samples, return_log_prob=True,
                            seed=seed, offset=3))
    g = torch.Generator().manual_seed(21)
    grads = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype).to(dev) for o in outs]
    torch.autograd.backward(outs, grads)
    return [o.detach().cpu() for o in outs] + [t.grad.cpu() for t in leaves]


# Under compute-sanitizer (`sanitize`) only the float32 cases run: the layouts and sample counts are the point.
@pytest.mark.parametrize("dtype", [pytest.param(d, marks=[pytest.mark.sanitize] if d == torch.float32 else [])
                                   for d in DTYPES], ids=str)
@pytest.mark.parametrize("layout", list(PRIOR_LAYOUTS))
@pytest.mark.parametrize("num_samples", [0, 1, 4])
def test_reparam_cuda_samples_prior_log_probs_match_cpu(dtype, layout, num_samples):
    mu, logvar = random_latents((6, 37), dtype, seed=17)
    shape = PRIOR_LAYOUTS[layout]
    prior = None if shape is None else list(random_latents(shape, dtype, seed=18))
    got = reparam_all_outputs(CUDA, mu, logvar, prior, num_samples, seed=77)
    want = reparam_all_outputs("cpu", mu, logvar, prior, num_samples, seed=77)
    names = (["kl"] if num_samples == 0 else ["z", "kl", "log_q", "log_p"]) + \
        ["grad mu", "grad logvar", "grad prior mu", "grad prior logvar"]
    for name, a, b in zip(names, got, want):
        # log-densities and grads sum over rows / samples: a sum's rounding on top of the terms'.
        assert_close_scaled(a, b, 4 * TOL_Z[dtype], f"{layout} K={num_samples} {name}")


def test_reparam_cuda_empty_and_degenerate_shapes_match_cpu():
    for shape in [(0, 5), (3, 0), (1,)]:
        for k in (0, 1, 2):
            mu = torch.randn(shape)
            outs = {}
            for dev in ("cpu", CUDA):
                so = torch.tensor([5, 6], dtype=torch.int64, device=dev)
                outs[str(dev)] = [t.cpu() for t in ops.reparam_fwd(mu.to(dev), mu.to(dev), None, None, so, k, True)]
            for a, b in zip(outs[str(CUDA)], outs["cpu"]):
                assert a.shape == b.shape, (shape, k, a.shape, b.shape)
                assert_close_scaled(a, b, 2e-6, f"shape {shape} K={k}")


@needs_gpu
def test_reparam_cuda_graph_replay_noise_follows_the_cuda_generator():
    # (seed, offset) are drawn by a torch RNG op inside the graph and read by the kernel on the device: a
    # replay after torch.cuda.manual_seed(s) gives the noise of an eager call after the same manual_seed.
    mu = torch.randn(64, 33, device="cuda")
    logvar = torch.randn(64, 33, device="cuda") * 0.3
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        reparam(mu, logvar, num_samples=2)  # warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z, kl = reparam(mu, logvar, num_samples=2)
    torch.cuda.manual_seed(123)
    graph.replay()
    replay_a = z.clone()
    graph.replay()
    replay_b = z.clone()
    torch.cuda.manual_seed(123)
    eager_z, eager_kl = reparam(mu, logvar, num_samples=2)
    torch.cuda.manual_seed(123)
    graph.replay()
    torch.cuda.synchronize()
    assert not torch.equal(replay_a, replay_b), "two replays drew the same noise"
    assert torch.equal(z, replay_a), "a replay after manual_seed did not repeat the noise"
    assert torch.equal(replay_a, eager_z), "a replay differs from the eager call after the same manual_seed"
    assert torch.equal(kl, eager_kl)


@needs_gpu
def test_reparam_cuda_graph_captures_backward():
    # Forward and backward in one graph: the backward regenerates the noise of the replay's (seed, offset),
    # so grad logvar = sum over samples of grad z * eps * sd / 2 holds replay after replay.
    mu = torch.randn(16, 40, device="cuda", requires_grad=True)
    logvar = (torch.randn(16, 40, device="cuda") * 0.3).requires_grad_()

    def step():
        mu.grad = logvar.grad = None
        z, kl = reparam(mu, logvar, num_samples=3)
        (z.sum() + 0 * kl.sum()).backward()
        return z

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    mu.grad = logvar.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z = step()
    seen = []
    for _ in range(2):
        graph.replay()
        torch.cuda.synchronize()
        eps = (z.detach() - mu.detach()) / (0.5 * logvar.detach()).exp()
        want = (0.5 * (0.5 * logvar.detach()).exp() * eps).sum(0)
        assert_close_scaled(logvar.grad, want, 1e-4, "grad logvar after replay")
        assert torch.equal(mu.grad, torch.full_like(mu, 3.0))
        seen.append(z.detach().clone())
    assert not torch.equal(seen[0], seen[1])


# =====================================================================================
# Per-dim KL (reparam_fwd / reparam_bwd with kl_per_dim, behind free_bits): the KL summed over the rows per latent
# dim, (D,) in the compute dtype. CUDA sums its rows in other groups than the CPU, so the two agree to the sums'
# rounding; CUDA against itself, bit for bit.
# =====================================================================================
def compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


# Sums of terms >= 0 (no cancellation) in two orders: a few units of the compute type, relative.
TOL_KL_SUM = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
# One row, one group of rows, several groups, a 3-D batch, groups of more than 64 rows (70001 rows: 1015 groups).
PER_DIM_SHAPES = [(1, 5), (65, 8), (200, 5), (3, 7, 33), (70001, 3)]


def with_samples(shape, k):
    return (k, *shape) if k > 1 else tuple(shape)


@pytest.mark.parametrize("dtype", [pytest.param(d, marks=[pytest.mark.sanitize] if d == torch.float32 else [])
                                   for d in DTYPES], ids=str)
@pytest.mark.parametrize("prior_kind", ["none", "shared", "per_row"])
@pytest.mark.parametrize("num_samples", [0, 1, 3])
def test_reparam_cuda_kl_per_dim_matches_cpu(dtype, prior_kind, num_samples):
    for i, shape in enumerate(PER_DIM_SHAPES):
        mu, logvar = random_latents(shape, dtype, seed=40 + i)
        prior = None
        if prior_kind != "none":  # (D,): read in place with row stride 0; mu's shape: row stride D
            prior = random_latents(shape[-1:] if prior_kind == "shared" else shape, dtype, seed=60 + i)
        so = torch.tensor([1234 + i, 8], dtype=torch.int64)
        g = torch.Generator().manual_seed(80 + i)
        gkl = torch.randn(shape[-1], generator=g, dtype=torch.float64).to(compute_dtype(dtype))
        gz = torch.randn(with_samples(shape, num_samples), generator=g, dtype=torch.float64).to(dtype) \
            if num_samples else None
        out = {}
        for dev in ("cpu", CUDA):
            pm, plv = (p.to(dev) for p in prior) if prior else (None, None)
            args = (mu.to(dev), logvar.to(dev), pm, plv, so.to(dev), num_samples)
            fwd = ops.reparam_fwd(*args, num_samples > 0, kl_per_dim=True)
            per_row = ops.reparam_fwd(*args, num_samples > 0)
            # Only the kl changes: z and the log-densities are the per-row call's, bit for bit.
            for name, a, b in zip(("z", "log_q", "log_p"), (fwd[0], fwd[2], fwd[3]),
                                  (per_row[0], per_row[2], per_row[3])):
                assert torch.equal(a, b), f"{dev} {shape} {name} differs from the per-row call"
            grads = ops.reparam_bwd(gz.to(dev) if gz is not None else None, gkl.to(dev), None, None, *args,
                                    kl_per_dim=True)
            out[str(dev)] = [fwd[1].cpu()] + [t.cpu() for t in grads]
        got, want = out[str(CUDA)], out["cpu"]
        where = f"{shape} prior={prior_kind} K={num_samples}"
        assert got[0].shape == (shape[-1],) and got[0].dtype == compute_dtype(dtype), where
        assert_close_scaled(got[0], want[0], TOL_KL_SUM[dtype], f"{where} per-dim kl")
        for name, a, b in zip(("grad mu", "grad logvar", "grad prior mu", "grad prior logvar"), got[1:], want[1:]):
            assert_close_scaled(a, b, 4 * TOL_Z[dtype], f"{where} {name}")


PER_DIM_LARGE = [(200, 5), (4097, 64), (100003, 7)]  # groups of 64 rows (4, 65 groups); of 98 rows (1021 groups)


@pytest.mark.parametrize("shape", PER_DIM_LARGE, ids=str)
def test_reparam_cuda_kl_per_dim_is_deterministic_and_exact(shape):
    # The groups of rows depend on the row count alone and each sum runs in order: bit for bit from run to run,
    # and a float64 sum to float32 rounding.
    mu, logvar = random_latents(shape, torch.float32, seed=19, device=CUDA)
    so = torch.tensor([1, 0], dtype=torch.int64, device=CUDA)
    kls = [ops.reparam_fwd(mu, logvar, None, None, so, 0, False, kl_per_dim=True)[1] for _ in range(2)]
    assert torch.equal(kls[0], kls[1])
    m, lv = mu.double(), logvar.double()
    want = 0.5 * (m.square() + lv.exp() - 1 - lv).sum(0)
    assert_close_scaled(kls[0].double(), want, 1e-5, "per-dim kl vs float64")


@needs_gpu
@pytest.mark.parametrize("shape", PER_DIM_LARGE, ids=str)
def test_reparam_cuda_kl_per_dim_does_not_depend_on_num_samples(shape):
    # On CUDA the per-dim kl always comes from the same two kernels (the sampling kernel leaves it out), so the
    # number of samples cannot change a bit of it. (The CPU op sums inside its sampling loop: not bitwise there.)
    mu, logvar = random_latents(shape, torch.float32, seed=20, device="cuda")
    so = torch.tensor([1, 0], dtype=torch.int64, device="cuda")
    kls = [ops.reparam_fwd(mu, logvar, None, None, so, k, k > 0, kl_per_dim=True)[1] for k in (0, 1, 3)]
    assert torch.equal(kls[0], kls[1]) and torch.equal(kls[0], kls[2])


def test_reparam_cuda_kl_per_dim_empty_shapes_match_cpu():
    # No rows: kl is zeros((D,)); no latent dim: an empty kl. Nothing may launch with a zero-sized grid.
    for shape in [(0, 5), (3, 0)]:
        for k in (0, 2):
            mu = torch.randn(shape)
            outs = {}
            for dev in ("cpu", CUDA):
                so = torch.tensor([5, 6], dtype=torch.int64, device=dev)
                outs[str(dev)] = ops.reparam_fwd(mu.to(dev), mu.to(dev), None, None, so, k, True, kl_per_dim=True)[1]
            assert torch.equal(outs[str(CUDA)].cpu(), outs["cpu"]), (shape, k)
            assert torch.equal(outs["cpu"], torch.zeros(shape[-1])), (shape, k)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_reparam_cuda_free_bits_matches_cpu(dtype):
    # The public path: reparameterize(free_bits=) floors each dim's batch-mean KL (the per-dim kl / rows), so some
    # dims pass their gradient and others (below the floor) none.
    mu, logvar = random_latents((300, 8), dtype, seed=23)
    mu[:, :3] *= 0.1  # dims whose mean KL sits well below the floor
    results = {}
    for dev in ("cpu", CUDA):
        m = mu.to(dev).requires_grad_()
        lv = logvar.to(dev).requires_grad_()
        z, kl = reparam(m, lv, num_samples=2, free_bits=0.3, seed=3, offset=0)
        (z.square().sum() + 5 * kl).backward()
        results[str(dev)] = (z.detach(), kl.detach(), m.grad, lv.grad)
    for name, a, b in zip(("z", "kl", "grad mu", "grad logvar"), results[str(CUDA)], results["cpu"]):
        assert_close_scaled(a, b, 4 * TOL_Z[dtype], name)


# =====================================================================================
# capturable FusedAdam / FusedAdamW: opt.step() captured in a CUDA graph, replayed, equal to eager steps.
# =====================================================================================
def _capturable_pair(cls, lr_kind, shapes, **kw):
    g = torch.Generator(device="cuda").manual_seed(31)
    base = [torch.randn(s, device="cuda", generator=g) for s in shapes]
    pair = []
    for _ in range(2):
        params = [torch.nn.Parameter(b.clone()) for b in base]
        for p in params:
            p.grad = torch.zeros_like(p)
        lr = torch.tensor(1e-2, device="cuda") if lr_kind == "tensor" else 1e-2
        pair.append((params, cls(params, lr=lr, capturable=True, **kw)))
    return pair


@needs_gpu
@pytest.mark.parametrize("cls", [fused_kingma.FusedAdam, fused_kingma.FusedAdamW], ids=lambda c: c.__name__)
@pytest.mark.parametrize("lr_kind", ["float", "tensor"])
def test_fused_adam_capturable_graph_step_equals_eager(cls, lr_kind):
    shapes = [(1000,), (33, 5), (65536 + 3,), (1,)]
    (cap_params, cap_opt), (eager_params, eager_opt) = _capturable_pair(cls, lr_kind, shapes, weight_decay=0.01,
                                                                         amsgrad=True)
    grad_scale = torch.tensor([4.0], device="cuda")
    found_inf = torch.tensor([0.0], device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(32)

    def set_grads(it):
        for a, b in zip(cap_params, eager_params):
            grad = torch.randn(a.shape, device="cuda", generator=gen) * 4.0
            a.grad.copy_(grad)
            b.grad.copy_(grad)
        found_inf.fill_(1.0 if it == 3 else 0.0)  # one step skipped, decided on the device
        if lr_kind == "tensor":  # a scheduler changing lr in place between replays
            for opt in (cap_opt, eager_opt):
                opt.param_groups[0]["lr"].fill_(1e-2 / (it + 1))

    for opt in (cap_opt, eager_opt):  # GradScaler's protocol: grad_scale / found_inf attributes during step
        opt.grad_scale, opt.found_inf = grad_scale, found_inf
    set_grads(0)
    stream = torch.cuda.Stream()  # warm-up step (creates the state) on a side stream, as torch's docs do
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        cap_opt.step()
    torch.cuda.current_stream().wait_stream(stream)
    eager_opt.step()
    assert all(st["step"].device.type == "cuda" for st in cap_opt.state.values())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        cap_opt.step()
    for it in range(1, 6):
        set_grads(it)
        graph.replay()
        torch.cuda.set_sync_debug_mode("error")  # a host sync in the eager capturable step raises
        try:
            eager_opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    for i, (a, b) in enumerate(zip(cap_params, eager_params)):
        assert torch.equal(a, b), f"param {i}: graph replay differs from eager"
        sa, sb = cap_opt.state[a], eager_opt.state[b]
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "step"):
            assert torch.equal(sa[key], sb[key]), f"param {i}: state {key} differs"
        assert sa["step"].item() == 5.0, "1 warm-up + 5 replays, one skipped by found_inf"


@needs_gpu
def test_fused_adam_capturable_matches_torch_capturable_adam():
    shapes = [(1000,), (33, 5)]
    g = torch.Generator(device="cuda").manual_seed(33)
    base = [torch.randn(s, device="cuda", generator=g) for s in shapes]
    ours = [torch.nn.Parameter(b.clone()) for b in base]
    ref = [torch.nn.Parameter(b.clone()) for b in base]
    lr = 1e-2
    opt = fused_kingma.FusedAdamW(ours, lr=torch.tensor(lr, device="cuda"), capturable=True)
    ref_opt = torch.optim.AdamW(ref, lr=torch.tensor(lr, device="cuda"), capturable=True, foreach=False)
    for _ in range(20):
        for a, b in zip(ours, ref):
            a.grad = torch.randn(a.shape, device="cuda", generator=g)
            b.grad = a.grad.clone()
        opt.step()
        ref_opt.step()
    for a, b in zip(ours, ref):
        rel = ((a - b).abs().max() / b.abs().max()).item()
        assert rel <= 1e-6, f"relative difference {rel:.2e} after 20 steps"
