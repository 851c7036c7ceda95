import pytest
import torch

import fused_kingma

CPU_ISAS = [isa for isa in ("baseline", "avx2", "avx512")]


@pytest.fixture(params=CPU_ISAS)
def cpu_isa(request):
    """Runs a test once per CPU code path this machine supports (skips the others), restoring the default after."""
    before = fused_kingma.cpu_isa()
    got = fused_kingma.set_cpu_isa(request.param)
    if got != request.param:
        fused_kingma.set_cpu_isa(before)
        pytest.skip(f"CPU does not support {request.param}")
    yield got
    fused_kingma.set_cpu_isa(before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda") is not None:  # the marker, not a directory named cuda
            item.add_marker(skip)
