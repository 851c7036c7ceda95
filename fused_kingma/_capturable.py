"""What the optimizers need for ``capturable=True`` on CUDA: a step with no host sync, so that
``torch.cuda.graph`` can capture it and each replay computes a real step.

- step counters live on the parameter's device (the kernel increments them and reads them for the
  bias corrections), as torch's capturable Adam keeps them;
- a tensor lr on the GPU is read by the kernel (``fused_kingma::adam_step_lr_tensor_``, CUDA builds
  only), so a scheduler that changes it in place between replays is seen; a float lr is baked into
  the captured launch, as in torch;
- GradScaler's found_inf on the GPU is read by the kernel (a skipped step changes nothing), not on
  the host.
"""
import torch

from ._ops import ops

HAS_LR_TENSOR_OP = hasattr(ops, "adam_step_lr_tensor_")

if HAS_LR_TENSOR_OP:
    @torch.library.register_fake("fused_kingma::adam_step_lr_tensor_")
    def _adam_step_lr_tensor_fake(*args, **kwargs):
        """In-place update of its list arguments: nothing to return or allocate."""
        return None


def device_lr(group):
    """The group's lr tensor when the kernel reads it on the GPU (capturable, lr and params on CUDA), else None."""
    lr, params = group["lr"], group["params"]
    on_gpu = torch.is_tensor(lr) and lr.device.type == "cuda" and bool(params) and params[0].device.type == "cuda"
    return lr if HAS_LR_TENSOR_OP and group.get("capturable", False) and on_gpu else None


def step_device(p, group):
    """Where a new state's step counter lives: the param's device when capturable, else None (torch's default
    device, the CPU unless torch.set_default_device says otherwise; as torch.optim.Adam)."""
    return p.device if group.get("capturable", False) else None


def found_inf_read_on_device(found_inf, groups):
    """True when the kernels themselves skip the step for found_inf != 0 (no host read of found_inf)."""
    return found_inf.device.type == "cuda" and all(group.get("capturable", False) for group in groups)
