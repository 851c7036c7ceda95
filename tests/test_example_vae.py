"""examples/train_vae.py end to end: it learns, the fused and baseline runs agree given the same noise, it draws.

The example is imported as a module and its main(argv) returns the metrics; runs are a few epochs on a subset of
the training digits, so the whole file takes seconds.
"""
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import fused_kingma

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "train_vae.py")

# Same eps, same initial weights, same data order: the runs differ only by float rounding (the fused op's
# exp/log/sin/cos vs torch's, FusedAdamW vs AdamW's op order), which grows slowly over the steps of a short run.
CURVE_RTOL, CURVE_ATOL = 1e-4, 1e-4  # per-step batch loss, nats/image (~25)


@pytest.fixture(scope="module")
def vae():
    spec = importlib.util.spec_from_file_location("train_vae", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(vae, tmp_path, *flags):
    return vae.main(["--quiet", "--out", str(tmp_path / "vae.png"), *flags])


def assert_png(path):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600, image.shape
    assert image[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.parametrize("method", ["fused", "baseline"])
def test_short_run_learns_and_draws(vae, tmp_path, method):
    flags = ["--epochs", "3", "--train-size", "768"] + (["--baseline"] if method == "baseline" else [])
    metrics = run(vae, tmp_path, *flags)
    assert list(metrics) == [method]
    m = metrics[method]
    # Untrained: ~ -44.5 nats (64 pixels * ln 2); a few epochs reach ~ -28. Demand a clear margin, not noise.
    assert m["initial_test_elbo"] < -40
    assert m["test_elbo"] > m["initial_test_elbo"] + 10, m
    assert m["steps"] == 3 * math.ceil(768 / 64) and len(m["train_loss"]) == m["steps"]
    assert m["steps_per_s"] > 0 and all(math.isfinite(v) for v in m["train_loss"])
    assert_png(tmp_path / "vae.png")


def test_explicit_noise_is_the_fused_ops_noise(vae):
    """The baseline's eps source (explicit_noise) returns exactly what reparameterize adds for the same key."""
    for shape, num_samples in [((5, 3), 1), ((4, 7), 3)]:
        key = vae.NoiseKey(seed=11, offset=5)
        zeros = torch.zeros(shape)
        z, _ = fused_kingma.reparameterize(zeros, zeros, num_samples=num_samples, seed=key.seed, offset=key.offset)
        eps = vae.explicit_noise(shape, key, num_samples=num_samples, dtype=torch.float32, device="cpu")
        assert eps.shape == z.shape == ((num_samples, *shape) if num_samples > 1 else shape)
        # Normals agree to float rounding (DESIGN.md): the op's float32 Box-Muller vs the reference's float64.
        torch.testing.assert_close(z, eps, rtol=1e-5, atol=1e-5)
        other = vae.explicit_noise(shape, vae.NoiseKey(seed=11, offset=6), num_samples=num_samples,
                                   dtype=torch.float32, device="cpu")
        assert not torch.allclose(eps, other)


@pytest.mark.parametrize("extra", [
    [],
    ["--num-samples", "3"],                               # IWAE: fused log_q/log_p vs torch.distributions
    ["--free-bits", "0.25"],
    ["--likelihood", "gaussian", "--ema-decay", "0.9"],   # in-step EMA vs a hand-written one, eval via swap_ema
], ids=["elbo", "iwae", "free-bits", "gaussian-ema"])
def test_same_noise_gives_the_same_loss_curve(vae, tmp_path, extra):
    metrics = run(vae, tmp_path, "--compare", "--noise-seed", "5", "--epochs", "2", "--train-size", "512", *extra)
    fused, base = metrics["fused"], metrics["baseline"]
    assert len(fused["train_loss"]) == len(base["train_loss"]) == 16
    np.testing.assert_allclose(fused["train_loss"], base["train_loss"], rtol=CURVE_RTOL, atol=CURVE_ATOL)
    np.testing.assert_allclose([e for _, e in fused["test_curve"]], [e for _, e in base["test_curve"]],
                               rtol=CURVE_RTOL, atol=CURVE_ATOL)
    if "--num-samples" in extra:
        assert fused["test_iwae"] == pytest.approx(base["test_iwae"], rel=CURVE_RTOL, abs=CURVE_ATOL)
    # The curve moved (so equality above is not two flat lines).
    assert base["train_loss"][-1] < base["train_loss"][0] - 5
    assert_png(tmp_path / "vae.png")


def test_different_noise_gives_a_different_curve(vae, tmp_path):
    """Guards the test above: the noise seed really reaches the sampling."""
    a = run(vae, tmp_path, "--baseline", "--noise-seed", "5", "--epochs", "1", "--train-size", "256")
    b = run(vae, tmp_path, "--baseline", "--noise-seed", "6", "--epochs", "1", "--train-size", "256")
    assert not np.allclose(a["baseline"]["train_loss"], b["baseline"]["train_loss"], rtol=CURVE_RTOL, atol=CURVE_ATOL)


@pytest.mark.parametrize("flags, message", [
    (["--num-samples", "0"], "--num-samples"),
    (["--num-samples", "2", "--free-bits", "0.1"], "--free-bits"),
    (["--ema-decay", "1.5"], "--ema-decay"),
    (["--baseline", "--compare"], "not allowed"),
])
def test_bad_flags_are_rejected(vae, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        vae.parse_args(flags)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_torchrun_two_ranks(tmp_path):
    """`torchrun --nproc_per_node=2 examples/train_vae.py`: DDP over gloo, data sharded, only rank 0 reports."""
    png, metrics_path = tmp_path / "ddp.png", tmp_path / "metrics.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", EXAMPLE,
           "--compare", "--epochs", "2", "--quiet", "--device", "cpu", "--dist-timeout", "60",
           "--out", str(png), "--metrics", str(metrics_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1 and proc.stdout.count("nats/image") == 2, proc.stdout  # rank 0 only
    metrics = json.loads(metrics_path.read_text())
    per_rank_steps = 2 * math.ceil(math.ceil(1438 / 2) / 64)  # DistributedSampler: half the 1438 training digits
    for m in metrics.values():
        assert m["world_size"] == 2 and m["steps"] == per_rank_steps
        assert m["test_elbo"] > m["initial_test_elbo"] + 10
    assert_png(png)
