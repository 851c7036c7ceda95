"""Loads the native library fused_kingma._C (which registers torch.ops.fused_kingma.*)."""
import torch

_REBUILD_HINT = (
    "Rebuild it against the torch you are running: `make build` in the repository, or "
    "`pip install --no-build-isolation -e .`"
)

try:
    from . import _C  # noqa: F401  (importing registers the ops)
except ImportError as exc:  # missing, or built for another torch (undefined symbols)
    raise ImportError(
        f"fused_kingma's native extension fused_kingma._C could not be loaded ({exc}). "
        f"It is missing or was built for a different torch (now {torch.__version__}). {_REBUILD_HINT}"
    ) from exc

if _C.built_with_torch.split("+")[0] != torch.__version__.split("+")[0]:
    raise ImportError(
        f"fused_kingma._C was built with torch {_C.built_with_torch} but torch {torch.__version__} is imported. "
        f"{_REBUILD_HINT}"
    )

ops = torch.ops.fused_kingma


# ---- Adam family [adam] ----
@torch.library.register_fake("fused_kingma::adam_step_")
def _adam_step_fake(*args, **kwargs):
    """In-place update of its list arguments: nothing to return or allocate."""
    return None
