"""fused_kingma: fused Adam-family optimizers and Gaussian reparameterization + KL for PyTorch."""
from ._ops import _C
from .functional import gaussian_kl, reparameterize
from .optim import FusedAdam, FusedAdamW, FusedAdamax

__all__ = [
    "cpu_isa",
    "set_cpu_isa",
    "empty_cpu_cache",
    "cpu_cache_info",
    "set_cpu_cache_limit",
    "FusedAdam",
    "FusedAdamW",
    "FusedAdamax",
    "reparameterize",
    "gaussian_kl",
]
__version__ = "0.1.0"


def cpu_isa() -> str:
    """The CPU instruction set ('avx512', 'avx2' or 'baseline') the kernels use now."""
    return _C.active_isa()


def set_cpu_isa(name: str) -> str:
    """Force a CPU instruction set for the kernels (clamped to what the CPU supports); returns the active one."""
    return _C.set_isa(name)


def empty_cpu_cache() -> None:
    """Free the CPU output blocks fused_kingma keeps for reuse (like torch.cuda.empty_cache for its ops).

    reparameterize / gaussian_kl keep freed CPU outputs of 1 MiB and more (z, gradients) to hand them out
    again at the same size: fresh pages would cost one page fault per 4 KB each step. The cache holds at
    most FUSED_KINGMA_CPU_CACHE_MB MiB (default 256; 0 turns it off) or what set_cpu_cache_limit sets.
    """
    _C.empty_cpu_cache()


def cpu_cache_info() -> dict:
    """{'cached_bytes', 'cached_blocks', 'hits', 'misses', 'limit_bytes'} of the CPU output cache."""
    return dict(_C.cpu_cache_info())


def set_cpu_cache_limit(limit_bytes: int) -> int:
    """Set the CPU output cache's limit in bytes (0 turns it off, freeing what it holds); returns the old one."""
    if isinstance(limit_bytes, bool) or not isinstance(limit_bytes, int) or limit_bytes < 0:
        raise ValueError(f"set_cpu_cache_limit: limit_bytes must be an int >= 0, got {limit_bytes!r}")
    return _C.set_cpu_cache_limit(limit_bytes)
