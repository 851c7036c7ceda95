"""Function-style API: reparameterize and gaussian_kl (fused kernels, see README "Reparameterization")."""
import math
import numbers

import torch

from . import _reparam_ops  # noqa: F401  (registers fake kernels and autograd)
from ._ops import ops

__all__ = ["reparameterize", "gaussian_kl"]

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_U64 = 1 << 64
_I64_MAX = (1 << 63) - 1


def _check_gaussian(mu, logvar, prior):
    for name, t in (("mu", mu), ("logvar", logvar)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if mu.dim() == 0:
        raise ValueError(
            "mu must have at least one dimension (the latent dimension is the last one), got a 0-dim tensor"
        )
    if logvar.shape != mu.shape:
        raise ValueError(f"logvar must have mu's shape {tuple(mu.shape)}, got {tuple(logvar.shape)}")
    if logvar.dtype != mu.dtype:
        raise TypeError(f"logvar must have mu's dtype {mu.dtype}, got {logvar.dtype}")
    if logvar.device != mu.device:
        raise ValueError(f"logvar must be on mu's device {mu.device}, got {logvar.device}")
    if prior is None:
        return None, None
    if not (isinstance(prior, (tuple, list)) and len(prior) == 2):
        raise TypeError("prior must be None or a pair (prior_mu, prior_logvar) of tensors")
    for name, t in zip(("prior[0] (prior mean)", "prior[1] (prior logvar)"), prior):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != mu.dtype:
            raise TypeError(f"{name} must have mu's dtype {mu.dtype}, got {t.dtype}")
        if t.device != mu.device:
            raise ValueError(f"{name} must be on mu's device {mu.device}, got {t.device}")
        try:
            ok = torch.broadcast_shapes(t.shape, mu.shape) == mu.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{name} of shape {tuple(t.shape)} must broadcast to mu's shape {tuple(mu.shape)}")
    return prior[0], prior[1]


def _as_int64(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) < _U64:
        raise ValueError(f"{name} must be an integer in [0, 2**64), got {value!r}")
    value = int(value)
    return value - _U64 if value >= (1 << 63) else value


def _seed_offset(mu, generator, seed, offset):
    if seed is None:
        if offset is not None:
            raise ValueError("offset= needs seed= (without seed, seed and offset come from the torch generator)")
        # Two fresh 63-bit words from the torch generator: reproducible under torch.manual_seed, new noise on
        # every call, and an ordinary RNG op that torch.compile traces (and CUDA graphs capture).
        return torch.randint(0, _I64_MAX, (2,), dtype=torch.int64, device=mu.device, generator=generator)
    if generator is not None:
        raise ValueError("pass either seed= (and offset=) or generator=, not both")
    off = 0 if offset is None else offset
    return torch.tensor([_as_int64(seed, "seed"), _as_int64(off, "offset")], dtype=torch.int64, device=mu.device)


def reparameterize(mu, logvar, *, num_samples=1, prior=None, free_bits=None, return_log_prob=False, generator=None,
                   seed=None, offset=None):
    """Sample z = mu + exp(logvar / 2) * eps with eps ~ N(0, I) made inside the kernel, and the Gaussian KL.

    Args:
        mu, logvar: tensors of the same shape (..., D), float32/float64/float16/bfloat16; the last dim is
            the latent dimension. Any strides (non-contiguous inputs are copied to contiguous internally).
        num_samples: K >= 1. K == 1 gives z of mu's shape; K > 1 gives (K, *mu.shape) (IWAE).
        prior: None for N(0, I), or (prior_mu, prior_logvar) broadcastable to mu's shape (gradients flow to them).
        free_bits: None, or lam >= 0: then kl is the IAF free-bits objective (Kingma et al. 2016),
            the scalar sum_j max(lam, mean over all batch dims of KL_j) over the latent dims j.
        return_log_prob: also return log q(z|x) and log p(z), summed over the last dim, per sample
            (shape (K, *mu.shape[:-1]) or mu.shape[:-1] when K == 1).
        generator: torch.Generator for the default seed/offset draw.
        seed, offset: integers in [0, 2**64) fixing the noise exactly (offset defaults to 0).

    Returns:
        (z, kl) or (z, kl, log_q, log_p). kl = KL(N(mu, exp(logvar)) || prior) summed over the last dim,
        shape mu.shape[:-1] (a scalar with free_bits).

    Noise: element i of z (flat, samples dim first) is normal number i % 4 of Philox4x32-10 block i // 4 for
    (seed, offset), Box-Muller in float32 (README "How the noise is defined"). Without seed=, (seed, offset)
    are two int64 words drawn with ``torch.randint(0, 2**63 - 1, (2,), dtype=torch.int64, generator=generator)``
    on mu's device (an out-of-place RNG op, so torch.compile traces it without a graph break, and CUDA graphs
    capture it: the CUDA kernel reads the pair on the device, so each replay draws fresh noise):
    torch.manual_seed makes runs reproducible and every call gets fresh noise. The noise is float32 for every
    dtype (widened to float64 for float64 inputs, whose math is then float64);
    fp16/bf16 inputs are computed in float32. Backward regenerates eps from (seed, offset): nothing of z's
    size is stored. Double backward is not supported.
    """
    prior_mu, prior_logvar = _check_gaussian(mu, logvar, prior)
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    if free_bits is not None and (not isinstance(free_bits, numbers.Real) or not free_bits >= 0):
        raise ValueError(f"free_bits must be None or a number >= 0, got {free_bits!r}")
    seed_offset = _seed_offset(mu, generator, seed, offset)
    per_dim = free_bits is not None
    z, kl, log_q, log_p = ops.reparam_fwd(mu, logvar, prior_mu, prior_logvar, seed_offset, int(num_samples),
                                          bool(return_log_prob), per_dim)
    if per_dim:
        kl = _free_bits_objective(kl, mu, float(free_bits))
    return (z, kl, log_q, log_p) if return_log_prob else (z, kl)


def _free_bits_objective(kl_per_dim, mu, lam):
    # The kernel summed the KL over every batch dim per latent dim, in the compute dtype (float32, float64 for
    # float64); the mean over the batch is floored at lam per latent dim, summed and rounded once to mu's dtype
    # (csrc/free_bits.cpp). Autograd takes the floor's gradient (0 where the mean is below lam) back into the
    # kernel's backward.
    return ops.free_bits_kl(kl_per_dim, math.prod(mu.shape[:-1]), lam, mu.dtype)


def gaussian_kl(mu, logvar, prior=None):
    """KL(N(mu, exp(logvar)) || prior) summed over the last dim (shape mu.shape[:-1]), fused, with autograd.

    prior: None for N(0, I) or (prior_mu, prior_logvar) broadcastable to mu's shape. Same dtypes as reparameterize.
    """
    prior_mu, prior_logvar = _check_gaussian(mu, logvar, prior)
    seed_offset = torch.zeros(2, dtype=torch.int64, device=mu.device)
    return ops.reparam_fwd(mu, logvar, prior_mu, prior_logvar, seed_offset, 0, False)[1]
