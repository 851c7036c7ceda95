"""Fake (meta) kernels of the reparameterization ops (schemas in csrc/ops.cpp), for torch.compile.

Their autograd is C++ (csrc/reparam_autograd.cpp): the backward op regenerates the noise from the saved
int64 ``seed_offset`` tensor, so nothing of the size of z is saved for backward.
"""
import torch

from . import _ops  # noqa: F401  (loads _C, which defines the ops whose fake kernels are registered here)


def compute_dtype(dtype):
    """The dtype the kernels compute in (and the per-dim kl's dtype): float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _with_samples(shape, num_samples):
    return (num_samples, *shape) if num_samples > 1 else tuple(shape)


@torch.library.register_fake("fused_kingma::reparam_fwd")
def _reparam_fwd_fake(mu, logvar, prior_mu, prior_logvar, seed_offset, num_samples, with_log_prob, kl_per_dim=False):
    batch = mu.shape[:-1]
    z = mu.new_empty(_with_samples(mu.shape, num_samples)) if num_samples > 0 else mu.new_empty((0,))
    kl = mu.new_empty(mu.shape[-1:], dtype=compute_dtype(mu.dtype)) if kl_per_dim else mu.new_empty(batch)
    sampled = with_log_prob and num_samples > 0
    lq = mu.new_empty(_with_samples(batch, num_samples)) if sampled else mu.new_empty((0,))
    lp = mu.new_empty(_with_samples(batch, num_samples)) if sampled else mu.new_empty((0,))
    return z, kl, lq, lp


@torch.library.register_fake("fused_kingma::reparam_bwd")
def _reparam_bwd_fake(grad_z, grad_kl, grad_log_q, grad_log_p, mu, logvar, prior_mu, prior_logvar, seed_offset,
                      num_samples, kl_per_dim=False):
    full = (mu.new_empty(mu.shape), mu.new_empty(mu.shape))
    if prior_mu is None:
        return (*full, mu.new_empty((0,)), mu.new_empty((0,)))
    return (*full, mu.new_empty(mu.shape), mu.new_empty(mu.shape))


@torch.library.register_fake("fused_kingma::fastmath_debug")
def _fastmath_debug_fake(x, fn):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("fused_kingma::free_bits_kl")
def _free_bits_kl_fake(kl_per_dim, batch, free_bits, out_dtype):
    return kl_per_dim.new_empty((), dtype=out_dtype)


@torch.library.register_fake("fused_kingma::free_bits_kl_backward")
def _free_bits_kl_backward_fake(grad, kl_per_dim, batch, free_bits):
    return torch.empty_like(kl_per_dim, memory_format=torch.contiguous_format)
