"""fused_kingma: fused Adam-family optimizers and Gaussian reparameterization + KL for PyTorch."""
from ._ops import _C
from .functional import gaussian_kl, reparameterize
from .optim import FusedAdam, FusedAdamW, FusedAdamax

__all__ = ["cpu_isa", "set_cpu_isa", "FusedAdam", "FusedAdamW", "FusedAdamax", "reparameterize", "gaussian_kl"]
__version__ = "0.1.0"


def cpu_isa() -> str:
    """The CPU instruction set ('avx512', 'avx2' or 'baseline') the kernels use now."""
    return _C.active_isa()


def set_cpu_isa(name: str) -> str:
    """Force a CPU instruction set for the kernels (clamped to what the CPU supports); returns the active one."""
    return _C.set_isa(name)
