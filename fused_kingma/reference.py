"""Pure-PyTorch/NumPy definitions of every fused_kingma op: the tests' oracle, a readable spec, and the
fallback on devices without a native kernel."""
import numpy as np
import torch

# ---- Adam family (fused_kingma.optim; native op torch.ops.fused_kingma.adam_step_) ----

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _lerp(start, end, w):
    # aten's lerp with a scalar weight: exact at both ends.
    return start + w * (end - start) if abs(w) < 0.5 else end - (end - start) * (1.0 - w)


def adam_element_update(param, grad, exp_avg, second, max_second, step, *, rule="adam", lr, beta1, beta2, eps,
                        weight_decay, decoupled_weight_decay=False, amsgrad=False, maximize=False, grad_scale=1.0):
    """One Adam / AdamW / Adamax update on compute-dtype tensors (fp32 or fp64), in torch's order of
    operations (torch/optim/adam.py `_single_tensor_adam`, adamax.py `_single_tensor_adamax`).
    `step` is the step number after incrementing. Returns (param, exp_avg, second, max_second)."""
    g = grad / grad_scale
    if maximize:
        g = -g
    decoupled = decoupled_weight_decay and rule == "adam"
    if weight_decay != 0:
        if decoupled:
            param = param * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * param
    exp_avg = _lerp(exp_avg, g, 1 - beta1)
    bias_correction1 = 1 - beta1**step
    if rule == "adamax":
        second = torch.maximum(second * beta2, g.abs() + eps)
        param = param + (-(lr / bias_correction1)) * exp_avg / second
        return param, exp_avg, second, max_second
    second = second * beta2
    second = second + (1 - beta2) * g * g
    used = second
    if amsgrad:
        max_second = torch.maximum(max_second, second)
        used = max_second
    denom = used.sqrt() / (1 - beta2**step) ** 0.5 + eps
    param = param + (-(lr / bias_correction1)) * exp_avg / denom
    return param, exp_avg, second, max_second


@torch.no_grad()
def adam_step_(params, grads, exp_avgs, second_moments, max_second_moments, steps, master_params, emas, *,
               rule="adam", lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay=False, amsgrad=False,
               maximize=False, ema_decay=0.0, stochastic_rounding=False, seed=0, lr_is_fp32_tensor=False,
               grad_scale=None, found_inf=None,
               check_only=False):
    """Reference of torch.ops.fused_kingma.adam_step_ (same arguments): fp16/bf16 computed in fp32 and
    stored rounded to nearest; stochastic rounding is not modelled (rounds to nearest)."""
    if check_only or (found_inf is not None and float(found_inf) != 0.0):
        return
    scale = 1.0 if grad_scale is None else float(grad_scale)
    for i, p in enumerate(params):
        steps[i] += 1
        step = float(steps[i])
        low = p.dtype in _LOW_PRECISION
        master = bool(master_params) and low
        compute = torch.float32 if low else p.dtype
        theta = master_params[i].clone() if master else p.to(compute)
        raw = grads[i].to(compute)
        if grad_scale is not None:
            grads[i].copy_(raw / scale)
        theta, m, v, vmax = adam_element_update(
            theta, raw, exp_avgs[i].to(compute), second_moments[i].to(compute),
            max_second_moments[i].to(compute) if amsgrad else None, step, rule=rule, lr=lr, beta1=beta1,
            beta2=beta2, eps=eps, weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
            amsgrad=amsgrad, maximize=maximize, grad_scale=scale)
        exp_avgs[i].copy_(m)
        second_moments[i].copy_(v)
        if amsgrad:
            max_second_moments[i].copy_(vmax)
        if master:
            master_params[i].copy_(theta)
        p.copy_(theta)
        if emas:
            unrounded = master or (stochastic_rounding and p.dtype == torch.bfloat16)
            stored = theta if unrounded else p.to(compute)
            emas[i].copy_(_lerp(emas[i].to(compute), stored, 1 - ema_decay))


def bf16_stochastic_round_candidates(x):
    """The two bf16 neighbours (round down / up in magnitude) of fp32 `x`: a stochastic rounding of x
    must give one of them."""
    bits = x.float().view(torch.int32)
    down = (bits & ~0xFFFF).view(torch.float32).to(torch.bfloat16)
    up = ((bits & ~0xFFFF) + 0x10000).view(torch.float32).to(torch.bfloat16)
    exact = (bits & 0xFFFF) == 0
    return down, torch.where(exact, down, up)


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
