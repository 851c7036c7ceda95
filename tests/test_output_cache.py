"""The CPU output cache (csrc/cpu/output_cache.h): reused blocks give the same results as fresh ones, even when
they hold garbage; limits, emptying, resizing, threads and the environment variable behave as documented."""
import os
import subprocess
import sys
import threading

import pytest
import torch

import fused_kingma as fk

MiB = 1 << 20
# 512 x 1024 fp32 = 2 MiB per z / gradient: above the cache's 1 MiB floor.
SHAPE = (512, 1024)


@pytest.fixture(autouse=True)
def fresh_cache():
    old = fk.set_cpu_cache_limit(256 * MiB)
    fk.empty_cpu_cache()
    yield
    fk.empty_cpu_cache()
    fk.set_cpu_cache_limit(old)


def _inputs(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(SHAPE, generator=g).to(dtype)
    lv = (0.5 * torch.randn(SHAPE, generator=g)).to(dtype)
    prior = (torch.randn(SHAPE, generator=g).to(dtype), (0.3 * torch.randn(SHAPE, generator=g)).to(dtype))
    return mu, lv, prior


def _fwd_bwd(mu, lv, prior, seed=7):
    mu, lv = mu.clone().requires_grad_(), lv.clone().requires_grad_()
    pm, plv = (t.clone().requires_grad_() for t in prior)
    z, kl, lq, lp = fk.reparameterize(mu, lv, prior=(pm, plv), return_log_prob=True, seed=seed, offset=0)
    torch.autograd.backward([z, kl, lq, lp], [torch.ones_like(z), torch.ones_like(kl), torch.ones_like(lq),
                                              torch.ones_like(lp)])
    return [t.detach() for t in (z, kl, lq, lp, mu.grad, lv.grad, pm.grad, plv.grad)]


def _poison_cache(dtype, count=12):
    """Fills the cache with freed blocks of the outputs' size holding NaN."""
    nbytes = SHAPE[0] * SHAPE[1] * torch.empty(0, dtype=dtype).element_size()
    zeros = torch.zeros(SHAPE, dtype=dtype)
    blocks = [fk.reparameterize(zeros, zeros)[0].fill_(float("nan")) for _ in range(count)]
    del blocks
    assert fk.cpu_cache_info()["cached_bytes"] >= count * nbytes


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_reused_blocks_give_the_results_of_fresh_memory(dtype):
    mu, lv, prior = _inputs(dtype)
    fk.set_cpu_cache_limit(0)
    fresh = _fwd_bwd(mu, lv, prior)
    fk.set_cpu_cache_limit(256 * MiB)
    _poison_cache(dtype)
    hits = fk.cpu_cache_info()["hits"]
    reused = _fwd_bwd(mu, lv, prior)
    assert fk.cpu_cache_info()["hits"] > hits  # z and the expanded gradients came from NaN-filled blocks
    for a, b in zip(fresh, reused):
        assert torch.equal(a, b)


def test_freed_output_is_handed_out_again_at_the_same_size_only():
    mu, lv, _ = _inputs()
    z, _ = fk.reparameterize(mu, lv)
    ptr = z.data_ptr()
    del z
    info = fk.cpu_cache_info()
    assert info["cached_blocks"] == 1 and info["cached_bytes"] == mu.numel() * 4
    z2, _ = fk.reparameterize(mu[:, :512].contiguous(), lv[:, :512].contiguous())  # other size: not reused
    assert z2.data_ptr() != ptr and fk.cpu_cache_info()["cached_blocks"] == 1
    z3, _ = fk.reparameterize(mu, lv)
    assert z3.data_ptr() == ptr and fk.cpu_cache_info()["cached_blocks"] == 0


def test_small_outputs_bypass_the_cache():
    mu, lv = torch.randn(16, 64), torch.randn(16, 64)
    before = fk.cpu_cache_info()
    for _ in range(3):
        fk.reparameterize(mu, lv)
    after = fk.cpu_cache_info()
    assert after["cached_bytes"] == 0 and (after["hits"], after["misses"]) == (before["hits"], before["misses"])


def test_limit_evicts_oldest_and_zero_turns_it_off():
    mu, lv, _ = _inputs()
    zs = [fk.reparameterize(mu, lv)[0] for _ in range(4)]
    del zs
    assert fk.cpu_cache_info()["cached_blocks"] == 4
    fk.set_cpu_cache_limit(2 * mu.numel() * 4)
    assert fk.cpu_cache_info()["cached_blocks"] == 2
    assert fk.set_cpu_cache_limit(0) == 2 * mu.numel() * 4
    assert fk.cpu_cache_info()["cached_bytes"] == 0
    z, _ = fk.reparameterize(mu, lv)
    del z
    assert fk.cpu_cache_info()["cached_bytes"] == 0


def test_empty_cpu_cache_frees_everything_and_live_outputs_stay_valid():
    mu, lv, _ = _inputs()
    keep, _ = fk.reparameterize(mu, lv, seed=1, offset=0)
    expected = keep.clone()
    drop, _ = fk.reparameterize(mu, lv)
    del drop
    fk.empty_cpu_cache()
    assert fk.cpu_cache_info()["cached_bytes"] == 0
    assert torch.equal(keep, expected)
    del keep  # freed into the (now empty) cache, which takes it again
    assert fk.cpu_cache_info()["cached_blocks"] == 1


def test_outputs_are_ordinary_resizable_tensors():
    mu, lv, _ = _inputs()
    z, _ = fk.reparameterize(mu, lv, seed=3, offset=0)
    head = z[:4].clone()
    z.resize_(2 * SHAPE[0], SHAPE[1])  # grows through the cache's allocator, keeping the contents
    assert torch.equal(z[:4], head)
    z.resize_(1, 3)
    z.add_(1)
    assert z.shape == (1, 3)


@pytest.mark.parametrize("bad", [-1, 1.5, "8", True])
def test_bad_limit_is_refused(bad):
    with pytest.raises(ValueError, match="limit_bytes"):
        fk.set_cpu_cache_limit(bad)


def test_threads_share_the_cache_safely():
    mu, lv, _ = _inputs()
    expected = [fk.reparameterize(mu, lv, seed=s, offset=0)[0] for s in range(4)]
    errors = []

    def work(s):
        try:
            for _ in range(20):
                z, _ = fk.reparameterize(mu, lv, seed=s, offset=0)
                if not torch.equal(z, expected[s]):
                    errors.append(s)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def _run_with_env(value, code):
    env = dict(os.environ, FUSED_KINGMA_CPU_CACHE_MB=value)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_environment_variable_sets_the_limit_and_a_bad_value_is_named():
    code = "import fused_kingma as fk; print(fk.cpu_cache_info()['limit_bytes'])"
    ok = _run_with_env("3", code)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(3 * MiB)
    bad = _run_with_env("lots", code)
    assert bad.returncode != 0 and "FUSED_KINGMA_CPU_CACHE_MB" in bad.stderr

