"""Pure-PyTorch definitions of every fused_kingma op: the tests' oracle and the fallback on devices
without a native kernel."""
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
