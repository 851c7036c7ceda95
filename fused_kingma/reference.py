"""Pure-PyTorch/NumPy definitions of every fused_kingma op: the tests' oracle and a readable spec."""
import numpy as np
import torch

# =====================================================================================================
# Reparameterization, Gaussian KL and the noise definition (fused_kingma.reparameterize / gaussian_kl)
# =====================================================================================================

_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def philox4x32_10_reference(ctr, key):
    """Philox4x32-10 on arrays: ctr (4, n) and key (2, n) of uint32 -> (4, n) uint32 (NumPy, uint64 math)."""
    c = [np.asarray(x, dtype=np.uint64) for x in ctr]
    k0, k1 = (np.asarray(x, dtype=np.uint64) for x in key)
    for rnd in range(10):
        if rnd > 0:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        p0 = c[0] * np.uint64(_PHILOX_M0)
        p1 = c[2] * np.uint64(_PHILOX_M1)
        c = [((p1 >> np.uint64(32)) ^ c[1] ^ k0) & _MASK32, p1 & _MASK32, ((p0 >> np.uint64(32)) ^ c[3] ^ k1) & _MASK32,
             p0 & _MASK32]
    return np.stack(c).astype(np.uint32)


def philox_words_reference(seed, offset, first_block, nblocks):
    """The 4 * nblocks raw words of blocks first_block.. for (seed, offset), in element order."""
    blocks = (np.uint64(first_block) + np.arange(nblocks, dtype=np.uint64)).astype(np.uint64)
    ones = np.ones(nblocks, dtype=np.uint64)
    ctr = (blocks & _MASK32, blocks >> np.uint64(32), ones * (offset & _MASK32), ones * (offset >> 32))
    key = (ones * (seed & _MASK32), ones * (seed >> 32))
    return philox4x32_10_reference(ctr, key).T.reshape(-1)


def uniforms_reference(seed, offset, n, start=0):
    """u = float32(bits) * 2^-32 + 2^-33 in float32 for flat indices start .. start + n - 1."""
    b0 = start // 4
    nblocks = (start + n + 3) // 4 - b0
    bits = philox_words_reference(seed, offset, b0, nblocks)[start - 4 * b0:start - 4 * b0 + n]
    return bits.astype(np.float32) * np.float32(2.0 ** -32) + np.float32(2.0 ** -33)


def normals_reference(seed, offset, n, start=0):
    """The defined noise eps for flat indices start.., Box-Muller computed in float64 from the float32 uniforms."""
    b0 = start // 4
    u = uniforms_reference(seed, offset, 4 * ((start + n + 3) // 4 - b0), 4 * b0).astype(np.float64).reshape(-1, 2, 2)
    r = np.sqrt(-2.0 * np.log(u[:, :, 0]))
    ang = 2.0 * np.pi * u[:, :, 1]
    normals = np.stack([r * np.cos(ang), r * np.sin(ang)], axis=-1).reshape(-1)
    return normals[start - 4 * b0:start - 4 * b0 + n]


def reparam_eps_reference(seed, offset, shape, num_samples=1):
    """eps of fused_kingma.reparameterize for mu of `shape` as a float64 tensor of z's shape."""
    zshape = (num_samples, *shape) if num_samples > 1 else tuple(shape)
    n = int(np.prod(zshape))
    return torch.from_numpy(normals_reference(seed, offset, n)).reshape(zshape)


def gaussian_kl_reference(mu, logvar, prior=None):
    """KL(N(mu, e^logvar) || prior) summed over the last dim, in plain torch (autograd-able)."""
    if prior is None:
        kl = 0.5 * (logvar.exp() + mu * mu - 1.0 - logvar)
    else:
        pm, plv = prior
        kl = 0.5 * ((logvar.exp() + (mu - pm) ** 2) * torch.exp(-plv) - 1.0 + plv - logvar)
    return kl.sum(-1)


def reparameterize_reference(mu, logvar, eps, *, prior=None, free_bits=None):
    """(z, kl, log_q, log_p) of fused_kingma.reparameterize for given noise eps (z's shape), plain torch."""
    std = torch.exp(0.5 * logvar)
    z = mu + std * eps
    half_log_2pi = 0.5 * float(np.log(2 * np.pi))
    log_q = (-0.5 * ((z - mu) / std) ** 2 - 0.5 * logvar - half_log_2pi).sum(-1)
    if prior is None:
        log_p = (-0.5 * z * z - half_log_2pi).sum(-1)
    else:
        pm, plv = prior
        log_p = (-0.5 * (z - pm) ** 2 * torch.exp(-plv) - 0.5 * plv - half_log_2pi).sum(-1)
    kl = gaussian_kl_reference(mu, logvar, prior)
    if free_bits is not None:
        if prior is None:
            per = 0.5 * (logvar.exp() + mu * mu - 1.0 - logvar)
        else:
            pm, plv = prior
            per = 0.5 * ((logvar.exp() + (mu - pm) ** 2) * torch.exp(-plv) - 1.0 + plv - logvar)
        kl = per.reshape(-1, mu.shape[-1]).mean(0).clamp(min=free_bits).sum()
    return z, kl, log_q, log_p
