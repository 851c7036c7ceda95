"""Train a VAE on scikit-learn's 8x8 digits with both fused_kingma pieces, or the plain-PyTorch baseline, or both.

    python examples/train_vae.py                  # fused_kingma.FusedAdamW + fused_kingma.reparameterize
    python examples/train_vae.py --baseline       # torch.optim.AdamW + the hand-written sampling lines
    python examples/train_vae.py --compare        # both, same seed; one PNG with both ELBO curves
    python examples/train_vae.py --compare --noise-seed 7   # both use the same Philox noise: equal curves
    torchrun --nproc_per_node=2 examples/train_vae.py       # DistributedDataParallel (gloo on CPU, nccl on CUDA)

The two variants differ only in the optimizer class and in how z and the KL term are computed (see
`fused_reparameterize` and `hand_written_reparameterize`); model, data order and initial weights are the same.
Loss: the negative ELBO per example, log p(x|z) - KL(q(z|x) || N(0, I)) (Bernoulli likelihood on pixels scaled
to [0, 1], or a Gaussian one with a learned per-pixel scale); with --num-samples K > 1 the importance-weighted
bound (IWAE) log mean_k p(x, z_k) / q(z_k | x); with --free-bits the KL term of Kingma et al. 2016.

main(argv) can be called from Python (the tests do) and returns the metrics of each run.
"""
import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# Run from a checkout (`make demo`): find the in-place built fused_kingma when it is not installed.
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGE_SIDE = 8
PIXELS = IMAGE_SIDE * IMAGE_SIDE
PIXEL_MAX = 16.0  # load_digits pixels are integers 0..16
GAUSSIAN_MIN_LOG_SCALE = math.log(0.02)  # ~ the std of the 1/16 quantization; stops the density collapsing on 0 pixels
EVAL_NOISE_OFFSET = 1 << 40  # explicit-noise offsets for evaluation, far from the training steps' offsets


# ----------------------------------------------------------------------------------------------------------- data
def load_digits_split(device):
    """The 1797 digits of sklearn (shipped with it, no download), pixels in [0, 1]; fixed 80/20 split."""
    from sklearn.datasets import load_digits

    images = load_digits().data.astype(np.float32) / PIXEL_MAX
    order = np.random.RandomState(0).permutation(len(images))  # fixed: independent of --seed
    n_test = len(images) // 5
    test, train = images[order[:n_test]], images[order[n_test:]]
    return torch.from_numpy(train).to(device), torch.from_numpy(test).to(device)


# ---------------------------------------------------------------------------------------------------------- model
class VAE(nn.Module):
    """MLP encoder q(z|x) = N(mu, diag exp(logvar)) and MLP decoder p(x|z), prior N(0, I).

    forward() runs the whole bound (encode, sample, decode) so DistributedDataParallel sees every parameter used.
    """

    def __init__(self, latent: int, hidden: int, likelihood: str):
        super().__init__()
        self.latent, self.likelihood = latent, likelihood
        self.encoder = nn.Sequential(nn.Linear(PIXELS, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, PIXELS))
        if likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.full((PIXELS,), math.log(0.2)))

    def encode(self, x):
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def log_likelihood(self, x, z):
        """log p(x|z) summed over pixels; z may carry leading sample dimensions."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
        log_scale = self.log_scale.clamp(min=GAUSSIAN_MIN_LOG_SCALE)
        mean = torch.sigmoid(out)
        return (-0.5 * ((x - mean) * torch.exp(-log_scale)).square() - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)

    def mean_image(self, z):
        out = self.decoder(z)
        return torch.sigmoid(out)

    def forward(self, x, reparameterize, *, num_samples=1, free_bits=None, noise=None):
        """Returns (loss, bound): the batch loss to minimize and the per-example bound (ELBO or IWAE) it came from.

        With free bits the loss uses the free-bits KL term and `bound` is that objective per example.
        """
        mu, logvar = self.encode(x)
        iwae = num_samples > 1
        z, kl, log_q, log_p = reparameterize(mu, logvar, num_samples=num_samples, free_bits=free_bits,
                                             return_log_prob=iwae, noise=noise)
        if iwae:  # log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x), z: (K, B, latent)
            log_w = self.log_likelihood(x, z) + log_p - log_q
            bound = torch.logsumexp(log_w, dim=0) - math.log(num_samples)
            return -bound.mean(), bound
        recon = self.log_likelihood(x, z)
        if free_bits is not None:  # kl is already the scalar sum_j max(lam, mean_batch KL_j)
            loss = -recon.mean() + kl
            return loss, (recon - kl).detach()
        bound = recon - kl
        return -bound.mean(), bound


# --------------------------------------------------------------------------------------- reparameterization + KL
@dataclasses.dataclass(frozen=True)
class NoiseKey:
    """An explicit (seed, offset) for the Philox noise definition (README: 'how the RNG is defined')."""
    seed: int
    offset: int


def explicit_noise(shape, key: NoiseKey, *, num_samples=1, dtype, device):
    """The eps fused_kingma.reparameterize draws for mu of `shape` and (seed, offset): z's shape, from the reference
    implementation of the noise definition (Philox4x32-10 + Box-Muller, computed on the host).

    The single place the baseline's explicit noise comes from: with it, baseline and fused runs see the same eps.
    """
    from fused_kingma import reference

    eps = reference.reparam_eps_reference(key.seed, key.offset, tuple(shape), num_samples=num_samples)
    return eps.to(dtype=dtype, device=device)


def fused_reparameterize(mu, logvar, *, num_samples, free_bits, return_log_prob, noise):
    import fused_kingma

    seeded = {} if noise is None else {"seed": noise.seed, "offset": noise.offset}
    out = fused_kingma.reparameterize(mu, logvar, num_samples=num_samples, free_bits=free_bits,
                                      return_log_prob=return_log_prob, **seeded)
    return out if return_log_prob else (*out, None, None)


def hand_written_reparameterize(mu, logvar, *, num_samples, free_bits, return_log_prob, noise):
    """What people write by hand: z = mu + exp(logvar/2) * eps and the closed-form Gaussian KL."""
    std = torch.exp(0.5 * logvar)
    shape = mu.shape if num_samples == 1 else (num_samples, *mu.shape)
    if noise is not None:
        eps = explicit_noise(mu.shape, noise, num_samples=num_samples, dtype=mu.dtype, device=mu.device)
    elif num_samples == 1:
        eps = torch.randn_like(mu)
    else:
        eps = torch.randn(shape, dtype=mu.dtype, device=mu.device)
    z = mu + std * eps
    kl_per_dim = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)  # KL(N(mu, std^2) || N(0, 1))
    if free_bits is None:
        kl = kl_per_dim.sum(-1)
    else:
        kl = kl_per_dim.reshape(-1, mu.shape[-1]).mean(0).clamp(min=free_bits).sum()
    if not return_log_prob:
        return z, kl, None, None
    q = torch.distributions.Normal(mu, std)
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    return z, kl, q.log_prob(z).sum(-1), p.log_prob(z).sum(-1)


class ParamEMA:
    """The baseline's EMA of the weights, defined as FusedAdamW(ema_decay=) keeps it (Adam paper section 7.2):
    avg_t = decay * avg_{t-1} + (1 - decay) * param_t from avg_0 = 0, read bias-corrected, avg_t / (1 - decay^t)."""

    def __init__(self, params, decay):
        self.params, self.decay, self.updates = list(params), decay, 0
        self.average = [torch.zeros_like(p, requires_grad=False) for p in self.params]

    @torch.no_grad()
    def update(self):
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - self.decay)
        self.updates += 1

    @contextlib.contextmanager
    def swap(self):
        """Parameters hold the (bias-corrected) averages inside the block, their own values again after it."""
        if self.updates == 0:
            yield
            return
        correction = 1.0 - self.decay**self.updates
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            for p, avg in zip(self.params, self.average):
                p.copy_(avg / correction)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, s in zip(self.params, saved):
                    p.copy_(s)


@dataclasses.dataclass
class Method:
    name: str
    reparameterize: object
    fused_optimizer: bool


METHODS = {
    "fused": Method("fused", fused_reparameterize, True),
    "baseline": Method("baseline", hand_written_reparameterize, False),
}


def make_optimizer(method, params, args):
    """The one-line switch: torch.optim.AdamW -> fused_kingma.FusedAdamW (plus its in-step EMA)."""
    if method.fused_optimizer:
        import fused_kingma

        extra = {} if args.ema_decay is None else {"ema_decay": args.ema_decay}
        return fused_kingma.FusedAdamW(params, lr=args.lr, weight_decay=args.weight_decay, **extra)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


# ---------------------------------------------------------------------------------------------- distributed setup
@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self):
        return self.world > 1

    @property
    def main(self):
        return self.rank == 0


def init_distributed(args):
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK: then DDP over gloo (CPU) or nccl (CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    ctx = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = args.device.startswith("cuda")
    if cuda:
        args.device = f"cuda:{ctx.local_rank}"
        torch.cuda.set_device(args.device)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=args.dist_timeout))
    return ctx


# ------------------------------------------------------------------------------------------------------ training
def batches(train, sampler, batch_size):
    index = torch.tensor(list(iter(sampler)), device=train.device)
    for start in range(0, len(index), batch_size):
        yield train[index[start:start + batch_size]]


@torch.no_grad()
def evaluate(model, method, test, args, num_samples, noise_base):
    """Mean test bound per example (ELBO for num_samples=1, IWAE-K otherwise); no free bits."""
    model.eval()
    total = 0.0
    for i, start in enumerate(range(0, len(test), args.eval_batch_size)):
        noise = None if noise_base is None else NoiseKey(noise_base.seed, EVAL_NOISE_OFFSET + i)
        _, bound = model(test[start:start + args.eval_batch_size], method.reparameterize,
                         num_samples=num_samples, noise=noise)
        total += bound.sum().item()
    model.train()
    return total / len(test)


def train_one(method, args, ctx, train, test):
    from torch.utils.data.distributed import DistributedSampler

    torch.manual_seed(args.seed)  # same initial weights for every method (and every rank)
    model = VAE(args.latent, args.hidden, args.likelihood).to(args.device)
    torch.manual_seed(args.seed + 1 + ctx.rank)  # noise stream: differs per rank
    net = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model, device_ids=[ctx.local_rank] if args.device.startswith("cuda") else None)
    opt = make_optimizer(method, model.parameters(), args)
    ema = None
    if args.ema_decay is not None and not method.fused_optimizer:
        ema = ParamEMA(model.parameters(), args.ema_decay)

    def ema_scope():
        if args.ema_decay is None:
            return contextlib.nullcontext()
        return opt.swap_ema() if method.fused_optimizer else ema.swap()

    def test_elbo():
        with ema_scope():
            return evaluate(model, method, test, args, 1, noise_base)

    noise_base = None if args.noise_seed is None else NoiseKey(args.noise_seed, 0)
    sampler = DistributedSampler(range(len(train)), num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                 seed=args.seed)
    steps_per_epoch = math.ceil(len(sampler) / args.batch_size)
    initial_elbo = test_elbo()
    train_loss, test_curve = [], [(0, initial_elbo)]
    step, train_seconds = 0, 0.0
    from tqdm.auto import tqdm

    bar = tqdm(total=args.epochs * steps_per_epoch, desc=f"{method.name:>8}", unit="step",
               disable=args.quiet or not ctx.main, dynamic_ncols=True, leave=True)
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        epoch_losses = []
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for x in batches(train, sampler, args.batch_size):
            # Each (rank, step) gets its own Philox offset, so no two batches reuse noise.
            noise = None if noise_base is None else NoiseKey(noise_base.seed, step * ctx.world + ctx.rank)
            loss, _ = net(x, method.reparameterize, num_samples=args.num_samples, free_bits=args.free_bits,
                          noise=noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update()
            epoch_losses.append(loss.detach())
            step += 1
            bar.update(1)
        losses = torch.stack(epoch_losses).tolist()  # one host sync per epoch
        train_seconds += time.perf_counter() - t0
        train_loss += losses
        test_curve.append((step, test_elbo()))
        bar.set_postfix(train_elbo=f"{-sum(losses) / len(losses):.2f}", test_elbo=f"{test_curve[-1][1]:.2f}")
    bar.close()
    with ema_scope():
        final_iwae = evaluate(model, method, test, args, args.num_samples, noise_base) if args.num_samples > 1 else None
    return {
        "method": method.name,
        "initial_test_elbo": initial_elbo,
        "test_elbo": test_curve[-1][1],
        "test_iwae": final_iwae,
        "train_loss": train_loss,
        "test_curve": test_curve,
        "steps": step,
        "steps_per_s": step / train_seconds if train_seconds > 0 else float("nan"),
        "world_size": ctx.world,
        "_model": model,
    }


# -------------------------------------------------------------------------------------------------------- figure
def montage(images, cols):
    """(N, 64) in [0, 1] -> one (rows*9-1, cols*9-1) image with 1-pixel gaps (NaN, drawn in the 'bad' color)."""
    images = images.detach().float().cpu().clamp(0, 1).reshape(-1, IMAGE_SIDE, IMAGE_SIDE).numpy()
    rows = math.ceil(len(images) / cols)
    cell = IMAGE_SIDE + 1
    canvas = np.full((rows * cell - 1, cols * cell - 1), np.nan, dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        canvas[r * cell:r * cell + IMAGE_SIDE, c * cell:c * cell + IMAGE_SIDE] = img
    return canvas


@torch.no_grad()
def pictures(result, test, args):
    model = result["_model"]
    model.eval()
    shown = test[:10]
    mu, _ = model.encode(shown)
    recon = model.mean_image(mu)  # posterior mean
    g = torch.Generator(device="cpu").manual_seed(1234)
    z = torch.randn(30, args.latent, generator=g).to(test.device)
    samples = model.mean_image(z)
    model.train()
    return montage(torch.cat([shown, recon]), cols=10), montage(samples, cols=10)


def write_figure(results, test, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(10, 3.2 + 2.2 * len(results)), constrained_layout=True)
    grid = fig.add_gridspec(1 + len(results), 2, height_ratios=[1.6] + [1.0] * len(results))
    ax = fig.add_subplot(grid[0, :])
    colors = {"fused": "tab:red", "baseline": "tab:blue"}
    dashes = {"fused": "-", "baseline": "--"}  # dashed on top: equal curves (--noise-seed) stay visible
    for r in results:
        loss = np.asarray(r["train_loss"])
        window = max(1, min(25, len(loss) // 10))
        smooth = np.convolve(-loss, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window, len(loss) + 1), smooth, dashes[r["method"]], color=colors[r["method"]], alpha=0.5,
                label=f"{r['method']} train (batch, smoothed)")
        steps, elbo = zip(*r["test_curve"])
        ax.plot(steps, elbo, dashes[r["method"]], marker="o", ms=3, color=colors[r["method"]],
                label=f"{r['method']} test: {r['test_elbo']:.2f} nats, {r['steps_per_s']:.0f} steps/s")
    bound = "ELBO" if args.num_samples == 1 else f"IWAE-{args.num_samples} bound (train), ELBO (test)"
    untrained = results[0]["initial_test_elbo"]
    ax.set(xlabel="step", ylabel=f"{bound} [nats/image]",
           title=f"VAE on 8x8 digits ({args.likelihood}; untrained test ELBO {untrained:.1f}, off the axis)")
    trained = [e for r in results for _, e in r["test_curve"][1:]]  # zoom past the untrained start
    if trained:
        lo, hi = min(trained), max(max(trained), max(-np.asarray(r["train_loss"]).mean() for r in results))
        ax.set_ylim(lo - 0.3 * (hi - lo + 0.1), hi + 0.2 * (hi - lo + 0.1))
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    for row, r in enumerate(results, start=1):
        recon, samples = pictures(r, test, args)
        for col, (img, title) in enumerate([(recon, "test digits (top) and reconstructions"),
                                            (samples, "samples from the prior")]):
            a = fig.add_subplot(grid[row, col])
            cmap = plt.get_cmap("gray_r").with_extremes(bad="#c8d4e0")
            a.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            a.set_title(f"{r['method']}: {title}", fontsize=9)
            a.axis("off")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------- main
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--baseline", action="store_true", help="torch.optim.AdamW + hand-written reparameterization")
    which.add_argument("--compare", action="store_true", help="run fused and baseline")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--eval-batch-size", type=int, default=512)
    ap.add_argument("--latent", type=int, default=8, help="latent dimensions")
    ap.add_argument("--hidden", type=int, default=256, help="hidden units of the MLPs")
    ap.add_argument("--likelihood", choices=["bernoulli", "gaussian"], default="bernoulli")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    ap.add_argument("--num-samples", type=int, default=1, help="K > 1: train on the IWAE-K bound")
    ap.add_argument("--free-bits", type=float, default=None, help="free-bits KL threshold per latent (nats)")
    ap.add_argument("--ema-decay", type=float, default=None, help="keep an EMA of the weights; evaluate with it")
    ap.add_argument("--seed", type=int, default=0, help="weights and data order")
    ap.add_argument("--noise-seed", type=int, default=None,
                    help="explicit Philox noise (seed, offset=step): fused and baseline then see the same eps")
    ap.add_argument("--train-size", type=int, default=None, help="use only the first N training digits")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="out/train_vae.png", help="where the PNG goes")
    ap.add_argument("--metrics", default=None, help="also write the metrics as JSON here")
    ap.add_argument("--dist-timeout", type=float, default=120.0, help="seconds before a stuck collective fails")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.num_samples < 1:
        ap.error(f"--num-samples must be >= 1, got {args.num_samples}")
    if args.num_samples > 1 and args.free_bits is not None:
        ap.error("--free-bits applies to the ELBO's KL term; it cannot be combined with --num-samples > 1 (IWAE)")
    if args.ema_decay is not None and not 0.0 <= args.ema_decay < 1.0:
        ap.error(f"--ema-decay must be in [0, 1), got {args.ema_decay}")
    if args.epochs < 1 or args.batch_size < 1:
        ap.error("--epochs and --batch-size must be >= 1")
    return args


def main(argv=None):
    """Runs the example; returns {method: metrics} (metrics of rank 0 under torchrun)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    ctx = init_distributed(args)
    try:
        train, test = load_digits_split(args.device)
        if args.train_size is not None:
            train = train[:args.train_size]
        names = ["fused", "baseline"] if args.compare else ["baseline"] if args.baseline else ["fused"]
        results = [train_one(METHODS[name], args, ctx, train, test) for name in names]
        if ctx.main:
            write_figure(results, test, args, args.out)
            print(f"wrote {os.path.abspath(args.out)}")
            for r in results:
                iwae = "" if r["test_iwae"] is None else f", IWAE-{args.num_samples} {r['test_iwae']:.2f}"
                print(f"{r['method']:>8}: test ELBO {r['test_elbo']:.2f} nats/image{iwae} "
                      f"(untrained {r['initial_test_elbo']:.2f}), {r['steps_per_s']:.0f} steps/s "
                      f"({r['steps']} steps, {args.device}, world size {ctx.world})")
            if len(results) == 2:
                fused, base = results
                print(f"fused / baseline: {fused['steps_per_s'] / base['steps_per_s']:.2f}x steps/s, "
                      f"test ELBO {fused['test_elbo'] - base['test_elbo']:+.2f} nats")
        metrics = {r["method"]: {k: v for k, v in r.items() if not k.startswith("_")} for r in results}
        if ctx.main and args.metrics:
            with open(args.metrics, "w") as f:
                json.dump(metrics, f)
        return metrics
    finally:
        if ctx.enabled:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
