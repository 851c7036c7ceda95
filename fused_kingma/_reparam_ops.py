"""Fake (meta) kernels and autograd for the reparameterization ops (schemas in csrc/ops.cpp).

The backward op regenerates the noise from the saved int64 ``seed_offset`` tensor: nothing of the
size of z is saved for backward (only mu, logvar, the prior and seed_offset).
"""
import torch

from ._ops import ops


def _with_samples(shape, num_samples):
    return (num_samples, *shape) if num_samples > 1 else tuple(shape)


@torch.library.register_fake("fused_kingma::reparam_fwd")
def _reparam_fwd_fake(mu, logvar, prior_mu, prior_logvar, seed_offset, num_samples, with_log_prob):
    batch = mu.shape[:-1]
    z = mu.new_empty(_with_samples(mu.shape, num_samples)) if num_samples > 0 else mu.new_empty((0,))
    kl = mu.new_empty(batch)
    sampled = with_log_prob and num_samples > 0
    lq = mu.new_empty(_with_samples(batch, num_samples)) if sampled else mu.new_empty((0,))
    lp = mu.new_empty(_with_samples(batch, num_samples)) if sampled else mu.new_empty((0,))
    return z, kl, lq, lp


@torch.library.register_fake("fused_kingma::reparam_bwd")
def _reparam_bwd_fake(grad_z, grad_kl, grad_log_q, grad_log_p, mu, logvar, prior_mu, prior_logvar, seed_offset,
                      num_samples):
    full = (mu.new_empty(mu.shape), mu.new_empty(mu.shape))
    if prior_mu is None:
        return (*full, mu.new_empty((0,)), mu.new_empty((0,)))
    return (*full, mu.new_empty(mu.shape), mu.new_empty(mu.shape))


@torch.library.register_fake("fused_kingma::fastmath_debug")
def _fastmath_debug_fake(x, fn):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    mu, logvar, prior_mu, prior_logvar, seed_offset, num_samples, with_log_prob = inputs
    ctx.save_for_backward(mu, logvar, prior_mu, prior_logvar, seed_offset)
    ctx.num_samples = num_samples
    ctx.with_log_prob = with_log_prob and num_samples > 0


def _backward(ctx, grad_z, grad_kl, grad_log_q, grad_log_p):
    mu, logvar, prior_mu, prior_logvar, seed_offset = ctx.saved_tensors
    k = ctx.num_samples
    if grad_kl is None:
        grad_kl = mu.new_zeros(mu.shape[:-1])
    if k > 0 and grad_z is None:
        grad_z = mu.new_zeros(_with_samples(mu.shape, k))
    if k == 0:
        grad_z = None
    if not ctx.with_log_prob:
        grad_log_q = grad_log_p = None
    g_mu, g_logvar, g_pmu, g_plogvar = ops.reparam_bwd(
        grad_z, grad_kl, grad_log_q, grad_log_p, mu, logvar, prior_mu, prior_logvar, seed_offset, k
    )
    if prior_mu is None:
        g_pmu = g_plogvar = None
    else:  # the kernel returns the prior's gradients expanded to mu's shape
        g_pmu = g_pmu.sum_to_size(prior_mu.shape) if ctx.needs_input_grad[2] else None
        g_plogvar = g_plogvar.sum_to_size(prior_logvar.shape) if ctx.needs_input_grad[3] else None
    return g_mu, g_logvar, g_pmu, g_plogvar, None, None, None


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "fused_kingma.reparameterize / gaussian_kl do not support double backward (create_graph=True through "
        "their backward); use fused_kingma.reference.reparameterize_reference for higher-order gradients."
    )


def _bwd_setup(ctx, inputs, output):
    pass


torch.library.register_autograd("fused_kingma::reparam_fwd", _backward, setup_context=_setup_context)
torch.library.register_autograd("fused_kingma::reparam_bwd", _no_double_backward, setup_context=_bwd_setup)
