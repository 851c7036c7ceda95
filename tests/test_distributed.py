"""FusedAdamW under torch.distributed (2 ranks, gloo on CPU): DDP, ZeroRedundancyOptimizer, FSDP2 + DCP checkpoints.

Every scenario trains the same tiny fp64 MLP on the same global batches and must end where a single-process
torch.optim.AdamW on the full batch ends. Each scenario is one spawn of 2 ranks that runs every optimizer class
(torch's AdamW too, as a control: if it fails, the harness is wrong, not fused_kingma); the tests read its results.
Ranks rendezvous through a file (no network), collectives time out after DIST_TIMEOUT_S and the parent kills the
ranks after JOIN_TIMEOUT_S, so nothing hangs.

A piece of work that fails on one rank ends that rank's work (its remaining pieces are reported as skipped):
carrying on would issue collectives the other rank does not match, and gloo answers a size mismatch by throwing
in its I/O thread, i.e. std::terminate -> SIGABRT of the whole rank, which hid the real traceback (the flaky
"FSDP2 ... SIGABRT"). The other rank's pending collective then fails cleanly (peer closed or timeout).
test_one_sided_failure_is_reported_not_aborted checks this.
"""
import datetime
import faulthandler
import os
import sys
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import fused_kingma

pytestmark = pytest.mark.distributed

WORLD = 2
DIST_TIMEOUT_S = 60  # a healthy scenario takes ~5 s; generous for a loaded 2-core machine
JOIN_TIMEOUT_S = 240
STEPS, CHECKPOINT_AT = 6, 3
GLOBAL_BATCH = 8
OPTIM_KW = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05)
OPTIMIZERS = {"torch.AdamW": torch.optim.AdamW, "FusedAdamW": fused_kingma.FusedAdamW}
# fp64 throughout: the distributed runs differ from the single-process one only in how the two half-batch
# gradients are summed (all-reduce / reduce-scatter), a ~1e-16 relative effect; an optimizer that mishandles a
# shard or skips a step is off by ~lr = 1e-2.
RTOL, ATOL = 1e-9, 1e-11
STATE_KEYS = {"step", "exp_avg", "exp_avg_sq"}


# ------------------------------------------------------------------------------------------ shared by all runs
def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 10), nn.Tanh(), nn.Linear(10, 3)).double()


def global_batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return (torch.randn(GLOBAL_BATCH, 6, generator=g, dtype=torch.float64),
            torch.randn(GLOBAL_BATCH, 3, generator=g, dtype=torch.float64))


def local_batch(step, rank):
    x, y = global_batch(step)
    return x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]


def train_steps(model, opt, steps, rank):
    for step in steps:
        x, y = local_batch(step, rank) if rank is not None else global_batch(step)
        opt.zero_grad(set_to_none=True)
        (model(x) - y).square().mean().backward()  # mean: DDP/FSDP average the halves back to the full-batch mean
        opt.step()


def full_params(model):
    """{name: full tensor}: gathers DTensor shards (a collective under FSDP: call on every rank)."""
    out = {}
    for name, p in model.named_parameters():
        p = p.detach()
        out[name] = (p.full_tensor() if hasattr(p, "full_tensor") else p).clone()
    return out


@pytest.fixture(scope="module")
def single_process_reference():
    model = make_model()
    train_steps(model, torch.optim.AdamW(model.parameters(), **OPTIM_KW), range(STEPS), rank=None)
    return full_params(model)


def assert_params_close(got, want, rtol=RTOL, atol=ATOL):
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------------------------------- scenarios (per rank)
def scenario_ddp(rank, opt_cls, workdir):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_model()
    ddp = DDP(model)
    train_steps(ddp, opt_cls(ddp.parameters(), **OPTIM_KW), range(STEPS), rank)
    return {"params": full_params(model)}


def scenario_zero(rank, opt_cls, workdir):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = make_model()
    ddp = DDP(model)
    opt = ZeroRedundancyOptimizer(ddp.parameters(), optimizer_class=opt_cls, **OPTIM_KW)
    train_steps(ddp, opt, range(STEPS), rank)
    local_state_keys = [set(s) for s in opt.optim.state.values()]  # this rank's shard of the state
    opt.consolidate_state_dict(to=0)
    consolidated = opt.state_dict() if rank == 0 else None
    return {"params": full_params(model), "local_state_keys": local_state_keys,
            "consolidated_state_keys": None if consolidated is None else
            [set(s) for s in consolidated["state"].values()]}


def sharded_model(seed):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (WORLD,))
    model = make_model(seed)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def save_checkpoint(model, opt, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)},
             checkpoint_id=path)


def load_checkpoint(model, opt, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    dcp.load(state, checkpoint_id=path)  # in place, into this rank's shards
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, opt, state["optim"])


def scenario_fsdp2(rank, opt_cls, workdir):
    """fully_shard (DTensor params); DCP checkpoint at CHECKPOINT_AT; then resume from it in a fresh model."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    from torch.distributed.tensor import DTensor

    model = sharded_model(seed=0)
    assert all(isinstance(p, DTensor) for p in model.parameters())
    opt = opt_cls(model.parameters(), **OPTIM_KW)
    train_steps(model, opt, range(CHECKPOINT_AT), rank)
    checkpoint = os.path.join(workdir, "step3")
    save_checkpoint(model, opt, checkpoint)
    train_steps(model, opt, range(CHECKPOINT_AT, STEPS), rank)
    osd = get_optimizer_state_dict(model, opt)
    state_types = {fqn: {k: type(v).__name__ for k, v in s.items()} for fqn, s in osd["state"].items()}
    local_shapes = {fqn: tuple(s["exp_avg"].to_local().shape) for fqn, s in osd["state"].items()
                    if isinstance(s.get("exp_avg"), DTensor)}
    return {"params": full_params(model), "state_types": state_types, "local_shapes": local_shapes}


def resume_fsdp2(rank, opt_cls, checkpoint):
    model = sharded_model(seed=1)  # other initial weights: only the checkpoint can bring it back on track
    opt = opt_cls(model.parameters(), **OPTIM_KW)
    load_checkpoint(model, opt, checkpoint)
    train_steps(model, opt, range(CHECKPOINT_AT, STEPS), rank)
    return full_params(model)


def _attempt(fn, *args):
    """Runs one piece of work; an exception becomes its result (a string), so the other pieces still report."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        return fn(*args)
    except (Exception, CheckpointException):  # the test that reads this result fails with the traceback
        return f"rank {dist.get_rank()}: " + traceback.format_exc()


class _Pieces:
    """Runs this rank's pieces of work in order; after the first failure, the rest are skipped (see module doc)."""

    def __init__(self):
        self.failed = False

    def run(self, fn, *args):
        if self.failed:
            return (f"rank {dist.get_rank()}: skipped: an earlier piece failed on this rank (see its traceback; "
                    "going on would mismatch the other rank's collectives)")
        result = _attempt(fn, *args)
        self.failed = isinstance(result, str)
        return result


def _worker(rank, init_file, scenario, workdir):
    faulthandler.enable(all_threads=True)  # a rank killed by a signal prints where (the test shows its stderr)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=DIST_TIMEOUT_S))
    try:
        torch.set_num_threads(1)
        pieces = _Pieces()
        results = {}
        for name, cls in OPTIMIZERS.items():
            sub = os.path.join(workdir, name)
            os.makedirs(sub, exist_ok=True)
            results[name] = pieces.run(SCENARIOS[scenario], rank, cls, sub)
        if scenario == "fsdp2":  # resume every checkpoint with every optimizer class: state_dicts load both ways
            checkpoints = {name: os.path.join(workdir, name, "step3") for name in OPTIMIZERS}
            results["resumed"] = {(saved_by, loaded_into): pieces.run(resume_fsdp2, rank, OPTIMIZERS[loaded_into],
                                                                       checkpoints[saved_by])
                                  for saved_by in OPTIMIZERS for loaded_into in OPTIMIZERS}
        torch.save(results, os.path.join(workdir, f"rank{rank}.pt"))
        if not pieces.failed:  # a failed rank leaves at once: its peer's pending collective then fails cleanly
            dist.barrier()
    finally:
        dist.destroy_process_group()
    # Results are saved: leave without interpreter teardown. After a failed collective, gloo can leave a
    # joinable std::thread that static destruction then destroys -> std::terminate -> SIGABRT at exit
    # ("terminate called without an active exception", seen on rank 0 of test_one_sided_failure_...).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def ok(result):
    """A piece of work's result, or the test fails with the traceback the rank recorded."""
    if isinstance(result, str):
        pytest.fail(result, pytrace=False)
    return result


def scenario_one_sided_failure(rank, opt_cls, workdir):
    """Harness check: rank 1 fails before a collective that rank 0 enters (what a one-rank bug or timeout does)."""
    if rank == 1:
        raise RuntimeError("deliberate failure on rank 1")
    dist.all_reduce(torch.ones(1000))
    return {"params": {}}


SCENARIOS = {"ddp": scenario_ddp, "zero": scenario_zero, "fsdp2": scenario_fsdp2,
             "one_sided_failure": scenario_one_sided_failure}


def spawn(scenario, workdir):
    """Runs one scenario on WORLD ranks; returns [results of rank 0, rank 1]. Fails (never hangs) on a timeout."""
    init_file = os.path.join(workdir, "rendezvous")
    ctx = mp.start_processes(_worker, args=(init_file, scenario, str(workdir)), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{scenario}: ranks did not finish within {JOIN_TIMEOUT_S} s")
    return [torch.load(os.path.join(workdir, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def scenario_results(tmp_path_factory):
    """Spawns each scenario once per module; a failed spawn is remembered too (not retried by every test)."""
    cache = {}

    def get(scenario):
        if scenario not in cache:
            try:
                cache[scenario] = spawn(scenario, tmp_path_factory.mktemp(scenario))
            except Exception as exc:  # noqa: BLE001  (a rank crashed or timed out)
                cache[scenario] = f"{scenario} ranks failed: {type(exc).__name__}: {exc}"
        return ok(cache[scenario])

    return get


# -------------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("scenario", ["ddp", "zero", "fsdp2"])
def test_matches_single_process_adamw(scenario_results, single_process_reference, scenario, optimizer):
    ranks = scenario_results(scenario)
    params = [ok(rank_results[optimizer])["params"] for rank_results in ranks]
    for rank_params in params:
        assert_params_close(rank_params, single_process_reference)
    # Replicas hold the very same numbers (DDP, ZeRO broadcast; FSDP2 gathers the same shards).
    assert_params_close(params[1], params[0], rtol=0, atol=0)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_zero_shards_optimizer_state(scenario_results, optimizer):
    ranks = [ok(r[optimizer]) for r in scenario_results("zero")]
    local = [r["local_state_keys"] for r in ranks]
    n_params = len(list(make_model().parameters()))
    assert all(len(keys) > 0 for keys in local) and sum(len(keys) for keys in local) == n_params
    assert all(keys == STATE_KEYS for rank_keys in local for keys in rank_keys)
    assert len(ranks[0]["consolidated_state_keys"]) == n_params


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_fsdp2_optimizer_state_is_sharded_dtensor(scenario_results, optimizer):
    """get_optimizer_state_dict sees the same keys and DTensor moments as for torch's AdamW, each rank a shard."""
    ranks = scenario_results("fsdp2")
    types = ok(ranks[0][optimizer])["state_types"]
    assert types == ok(ranks[0]["torch.AdamW"])["state_types"]
    assert all(set(t) == STATE_KEYS and t["exp_avg"] == "DTensor" and t["exp_avg_sq"] == "DTensor"
               for t in types.values())
    model = make_model()
    for fqn, shape0 in ranks[0][optimizer]["local_shapes"].items():
        full = model.get_parameter(fqn).shape
        assert shape0[0] + ok(ranks[1][optimizer])["local_shapes"][fqn][0] == full[0]  # dim-0 shards


@pytest.mark.parametrize("loaded_into", list(OPTIMIZERS))
@pytest.mark.parametrize("saved_by", list(OPTIMIZERS))
def test_fsdp2_checkpoint_resumes_to_the_same_result(scenario_results, saved_by, loaded_into):
    """DCP checkpoint at step 3 -> fresh (differently initialized) sharded model -> steps 3..6 = uninterrupted run."""
    for rank_results in scenario_results("fsdp2"):
        uninterrupted = ok(rank_results[saved_by])["params"]
        resumed = ok(rank_results["resumed"][(saved_by, loaded_into)])
        if saved_by == loaded_into:  # same code, same numbers: bitwise
            assert_params_close(resumed, uninterrupted, rtol=0, atol=0)
        else:  # torch <-> fused checkpoint; steps 4..6 then run on the other implementation
            assert_params_close(resumed, uninterrupted)


def test_one_sided_failure_is_reported_not_aborted(tmp_path):
    """A piece failing on one rank gives both ranks' tracebacks (no SIGABRT from mismatched collectives, no
    hang): rank 1's own error, rank 0's failed collective, and the later pieces skipped."""
    ranks = spawn("one_sided_failure", tmp_path)
    first, second = OPTIMIZERS
    assert "deliberate failure on rank 1" in ranks[1][first]
    assert isinstance(ranks[0][first], str) and ranks[0][first].startswith("rank 0: ")  # peer gone / timed out
    assert all("skipped: an earlier piece failed" in r[second] for r in ranks)
