import importlib
import subprocess
import sys

import torch

import fused_kingma


def test_isa_selection_round_trips():
    best = fused_kingma._C.best_isa()
    assert best in ("avx512", "avx2", "baseline")
    try:
        assert fused_kingma.set_cpu_isa("baseline") == "baseline"
        assert fused_kingma.cpu_isa() == "baseline"
    finally:
        fused_kingma.set_cpu_isa(best)
    assert fused_kingma.cpu_isa() == best


def test_unknown_isa_is_a_clear_error():
    try:
        fused_kingma.set_cpu_isa("sse9")
    except ValueError as e:
        assert "avx512" in str(e) and "sse9" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_built_for_this_torch():
    assert fused_kingma._C.built_with_torch.split("+")[0] == torch.__version__.split("+")[0]


# The ops and the dispatch keys they have kernels for; the CUDA ones only in a CUDA build. The load check
# (.ci/load_check.sh), tools/torch_compat_check.sh and `make gpu-check` all run this file. Autograd: the reparam
# ops' C++ autograd, and adam_step_'s fallthrough (csrc/ops.cpp: torch's autograd fallback visits every tensor).
_KERNELS = {
    "adam_step_": ("CPU", "CUDA", "Autograd"),
    "adam_step_lr_tensor_": ("CUDA",),
    "reparam_fwd": ("CPU", "CUDA", "Autograd"),
    "reparam_bwd": ("CPU", "CUDA", "Autograd"),
    "philox_debug_cuda": ("CUDA",),
}


def test_kernels_registered_for_the_build():
    with_cuda = fused_kingma._C.built_with_cuda
    for op, keys in _KERNELS.items():
        name = f"fused_kingma::{op}"
        for key in keys:
            expected = key != "CUDA" or with_cuda
            try:
                has = torch._C._dispatch_has_kernel_for_dispatch_key(name, key)
            except RuntimeError:  # no schema: the CUDA-only ops are defined by the CUDA glue
                has = False
            assert has == expected, f"{name}: {key} kernel {'missing' if expected else 'registered'}"


def test_missing_extension_gives_rebuild_message(tmp_path):
    # A copy of the Python package without _C must fail with the rebuild hint.
    import shutil

    pkg = tmp_path / "fused_kingma"
    shutil.copytree(
        importlib.util.find_spec("fused_kingma").submodule_search_locations[0],
        pkg,
        ignore=shutil.ignore_patterns("_C*", "__pycache__"),
    )
    r = subprocess.run(
        [sys.executable, "-c", "import fused_kingma"], cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode != 0
    assert "make build" in r.stderr and "no-build-isolation" in r.stderr
