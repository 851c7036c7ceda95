"""The noise definition: Philox4x32-10 known answers, uniforms bit for bit, normals and fastmath accuracy."""
import numpy as np
import pytest
import torch

import fused_kingma  # noqa: F401
from fused_kingma import reference as R
from fused_kingma._ops import ops

_U64 = 1 << 64


def _i64(v):
    return v - _U64 if v >= (1 << 63) else v


def _words(seed, offset, block, nblocks=1):
    return [w & 0xFFFFFFFF for w in ops.philox_debug(_i64(seed), _i64(offset), _i64(block), nblocks, 0).tolist()]


# Random123 kat_vectors, philox4x32_10: (ctr0..3, key0..1) -> out0..3. Our counter = (lo(block), hi(block),
# lo(offset), hi(offset)), key = (lo(seed), hi(seed)).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_philox_known_answers_through_the_op(ctr, key, expected, cpu_isa):
    block = ctr[0] | (ctr[1] << 32)
    offset = ctr[2] | (ctr[3] << 32)
    seed = key[0] | (key[1] << 32)
    assert _words(seed, offset, block) == list(expected)
    ref = R.philox4x32_10_reference([[c] for c in ctr], [[k] for k in key])[:, 0].tolist()
    assert ref == list(expected)


def test_reference_philox_words_match_the_kernel():
    seed, offset = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    for first in (0, 5, (1 << 32) - 3):  # crosses the 32-bit counter carry
        got = np.array(_words(seed, offset, first, 64), dtype=np.uint64)
        ref = R.philox_words_reference(seed, offset, first, 64).astype(np.uint64)
        np.testing.assert_array_equal(got, ref)


def test_uniforms_bit_for_bit_and_never_zero(cpu_isa):
    seed, offset = 1234, 99
    got = ops.philox_debug(seed, offset, 0, 4096, 1).numpy()
    ref = R.uniforms_reference(seed, offset, 4 * 4096)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))
    assert got.min() > 0 and got.max() <= 1
    # the extremes of the mapping
    bits = np.array([0, 0xFFFFFFFF], dtype=np.uint32).astype(np.float32)
    ext = bits * np.float32(2.0 ** -32) + np.float32(2.0 ** -33)
    assert ext[0] == np.float32(2.0 ** -33) and ext[1] == np.float32(1.0)


def test_normals_match_float64_box_muller(cpu_isa):
    seed, offset = 42, 7
    got = ops.philox_debug(seed, offset, 3, 8192, 2).numpy().astype(np.float64)
    ref = R.normals_reference(seed, offset, 4 * 8192, start=12)
    # float32 transform of float32 uniforms: |err| <= a few ulp of r (r <= ~6.7 -> ulp 4.8e-7).
    err = np.abs(got - ref)
    assert err.max() < 2e-6, err.max()
    assert (err / np.maximum(np.abs(ref), 1.0)).max() < 6e-7


def _ulp_error(y, ref):
    spacing = np.spacing(np.abs(ref.float().numpy())).astype(np.float64)
    return ((y.double() - ref).abs().numpy() / spacing).max()


def test_fast_log_over_the_uniform_range(cpu_isa):
    g = torch.Generator().manual_seed(0)
    u = torch.cat([torch.rand(1 << 18, generator=g), torch.exp2(-33 * torch.rand(1 << 18, generator=g)),
                   torch.tensor([2.0 ** -33, 1.0, 0.5, 1 - 2.0 ** -24, 0.70710677, 0.70710683])]).float()
    assert _ulp_error(ops.fastmath_debug(u, 0), torch.log(u.double())) <= 2.0


def test_fast_exp_accuracy_and_special_values(cpu_isa):
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(1 << 18, generator=g, dtype=torch.float64) * 175.5 - 87.0).float()
    x = torch.cat([x, torch.tensor([0.0, -0.0, 1e-30, -1e-30, 88.72, -87.3])])
    assert _ulp_error(ops.fastmath_debug(x, 1), torch.exp(x.double())) <= 2.0
    special = torch.tensor([float("inf"), -float("inf"), float("nan"), 89.0, 1000.0, -104.0, -1000.0])
    got = ops.fastmath_debug(special, 1)
    assert got[0] == float("inf") and got[1] == 0 and torch.isnan(got[2])
    assert got[3] == float("inf") and got[4] == float("inf") and got[5] == 0 and got[6] == 0
    tiny = torch.tensor([-88.0, -95.0, -100.0])  # subnormal results: absolute accuracy
    assert (ops.fastmath_debug(tiny, 1).double() - torch.exp(tiny.double())).abs().max() < 2e-45


def test_moderate_exp_gives_the_full_exp_bits(cpu_isa):
    # The kernels switch to fast_expf_moderate on rows whose |logvar| <= 87: it must not change a bit there.
    # Every float in [-87, 87] with an exponent step of 2^-7 of its ulp grid (~4M values), plus the ends.
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(1 << 22, generator=g, dtype=torch.float64) * 174.0 - 87.0).float()
    x = torch.cat([x, torch.tensor([-87.0, 87.0, 0.0, -0.0, 1e-38, -1e-38, 0.5, -0.5, 43.5, -43.5])])
    assert torch.equal(ops.fastmath_debug(x, 4).view(torch.int32), ops.fastmath_debug(x, 1).view(torch.int32))


def test_fast_sincos_2pi_over_the_uniform_range(cpu_isa):
    g = torch.Generator().manual_seed(2)
    u = torch.cat([torch.rand(1 << 18, generator=g), torch.arange(1, 4097) / 4096.0,
                   torch.tensor([2.0 ** -33, 1e-7, 1 - 2.0 ** -24])]).float()
    angle = 2 * np.pi * u.double()
    for fn, ref in ((2, torch.sin(angle)), (3, torch.cos(angle))):
        err = (ops.fastmath_debug(u, fn).double() - ref).abs()
        assert err.max() < 2e-7, (fn, err.max())  # < 2 ulp of 1
    small = torch.tensor([2.0 ** -33, 1e-7, 1e-4])  # near 0: relative accuracy
    rel = (ops.fastmath_debug(small, 2).double() / torch.sin(2 * np.pi * small.double()) - 1).abs()
    assert rel.max() < 3e-7


def test_isa_paths_give_the_same_bits_and_close_normals():
    before = fused_kingma.cpu_isa()
    outs = {}
    try:
        for isa in ("baseline", "avx2", "avx512"):
            if fused_kingma.set_cpu_isa(isa) != isa:
                continue
            outs[isa] = (ops.philox_debug(5, 6, 0, 1000, 0), ops.philox_debug(5, 6, 0, 1000, 2))
    finally:
        fused_kingma.set_cpu_isa(before)
    base = outs["baseline"]
    for bits, normals in outs.values():
        assert torch.equal(bits, base[0])
        torch.testing.assert_close(normals, base[1], rtol=1e-6, atol=1e-6)
