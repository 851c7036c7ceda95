"""FusedAdam, FusedAdamW, FusedAdamax: drop-in replacements for torch.optim.Adam / AdamW / Adamax.

Each step makes one native call per param group (``torch.ops.fused_kingma.adam_step_``) that updates
every tensor of the group in one pass over memory. The classes subclass the torch optimizers, so
constructor checks, defaults, param groups, ``state_dict`` layout, schedulers and ``GradScaler``
behave as torch's; only ``step`` is replaced.

Extras (keyword-only, all off by default):
  ema_decay=d            keep an EMA of every parameter, updated in the same pass (Adam paper
                         section 7.2): raw average in state["ema"] (fp32 for fp16/bf16 params),
                         bias-corrected by ``ema_parameters()`` / ``swap_ema()``.
  master_weights=True    fp16/bf16 params get an fp32 master copy (state["master_param"]) and fp32
                         moments; the update runs on the master copy and is written back rounded.
  stochastic_rounding=True  bf16 params (without master weights) are rounded stochastically.
                         Noise: Philox4x32-10 with key = group["sr_seed"] (drawn once from torch's
                         default generator at construction, saved in the state_dict) and counter
                         offset = step * 2**24 + position of the tensor among the group's params
                         that have a grad; element i adds the 16-bit half (i % 2: 0 low, 1 high) of
                         word (i % 8) // 2 of block i // 8 to its fp32 bits before truncating, so
                         the result does not depend on the thread count.
"""
import contextlib
import math
import re

import torch

from . import _capturable, _tracked, reference
from ._ops import _C, ops

__all__ = ["FusedAdam", "FusedAdamW", "FusedAdamax"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_TENSOR_INDEX = re.compile(r"^tensor (\d+): (.*)$", re.S)

try:  # DTensor params (FSDP2): the kernel runs on the local shards.
    from torch.distributed.tensor import DTensor as _DTensor
except Exception:  # torch built without distributed
    _DTensor = None


def _local(t):
    return t._local_tensor if _DTensor is not None and isinstance(t, _DTensor) else t


def _has_native_kernel(device):
    if device.type == "cpu":
        return True
    key = {"cuda": "CUDA"}.get(device.type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key("fused_kingma::adam_step_", key)


def _plan_for(lists):
    """The cached lists' AdamPlan (made on first use), or None where the op must be called from Python: lists a
    plan cannot hold (DTensor shards, tensor subclasses, a device without a native kernel), and while
    torch.compile traces or a torch function / dispatch mode is active (they see torch.ops calls only)."""
    if lists.plan is False or torch.compiler.is_compiling():
        return None
    if torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack() > 0:
        return None
    if lists.plan is None:
        if not (lists.native and not lists.dtensor and lists.all_plain()):
            lists.plan = False
            return None
        lists.plan = _C.AdamPlan(lists.params, lists.exp_avgs, lists.seconds, lists.max_seconds, lists.steps,
                                 lists.masters, lists.emas)
    return lists.plan


class _GroupLists:
    """The tensors one native call gets for a param group (param order, local shards)."""

    __slots__ = ("params", "exp_avgs", "seconds", "max_seconds", "steps", "masters", "emas", "index", "dtensor",
                 "native", "tracked", "plan")

    def __init__(self):
        self.params, self.exp_avgs, self.seconds, self.max_seconds = [], [], [], []
        self.steps, self.masters, self.emas, self.index = [], [], [], []
        self.dtensor = False
        self.native = True
        self.tracked = True  # every state dict read records its changes (_tracked): the lists may be cached
        self.plan = None  # the cached lists' _C.AdamPlan, made on their first step that may use one; False: none

    def all_plain(self):
        """Whether every tensor is a torch.Tensor or nn.Parameter itself: no subclass whose __torch_function__
        or grad attribute a plan would bypass."""
        plain = (torch.Tensor, torch.nn.Parameter)
        return all(type(t) in plain for lst in (self.params, self.exp_avgs, self.seconds, self.max_seconds,
                                                 self.steps, self.masters, self.emas) for t in lst)


class _FusedAdamBase:
    """The fused step shared by FusedAdam / FusedAdamW / FusedAdamax (mixed into the torch class)."""

    _rule = "adam"
    _second_key = "exp_avg_sq"
    _step_supports_amp_scaling = True  # GradScaler passes grad_scale / found_inf instead of unscaling

    def _init_extras(self, ema_decay, master_weights, stochastic_rounding):
        name = type(self).__name__
        if ema_decay is not None and not (isinstance(ema_decay, (int, float)) and 0.0 <= ema_decay < 1.0):
            raise ValueError(f"{name}: Invalid ema_decay value: {ema_decay} (expected None or a float in [0, 1))")
        if master_weights and stochastic_rounding:
            raise ValueError(f"{name}: master_weights=True and stochastic_rounding=True exclude each other "
                             "(the master copy already keeps the full-precision value)")
        seed = int(torch.empty((), dtype=torch.int64).random_().item()) if stochastic_rounding else 0
        extras = {"ema_decay": None if ema_decay is None else float(ema_decay),
                  "master_weights": bool(master_weights), "stochastic_rounding": bool(stochastic_rounding),
                  "sr_seed": seed}
        self.defaults.update(extras)
        for group in self.param_groups:
            for k, v in extras.items():
                group.setdefault(k, v)
        self.state = _tracked.State(self.state)
        self._lists_cache = {}

    def __setstate__(self, state):
        super().__setstate__(state)
        # A torch checkpoint's param groups lack our options: keep the configured ones.
        for group in self.param_groups:
            for k in ("ema_decay", "master_weights", "stochastic_rounding", "sr_seed"):
                group.setdefault(k, getattr(self, "defaults", {}).get(k, None if k == "ema_decay" else 0))
        if type(self.state) is not _tracked.State:  # torch's load_state_dict passes a plain defaultdict(dict)
            self.state = _tracked.State(self.state)
        self._lists_cache = {}

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group["params"] = _tracked.ParamList(group["params"])
        self._lists_cache = {}

    # ---- hyper-parameters ----

    def _hyper(self, gi, group):
        name = type(self).__name__
        device = group["params"][0].device if group["params"] else torch.device("cpu")

        def scalar(key, value):
            if torch.is_tensor(value) and (value.numel() != 1 or value.is_complex() or
                                           value.device.type not in ("cpu", device.type)):
                # Checked here: .item() on a meta tensor, say, fails without naming the hyper-parameter.
                raise ValueError(f"{name}: param group {gi}: {key} must be a number or a 1-element real tensor on "
                                 f"the CPU or the parameters' device ({device}), got a tensor of shape "
                                 f"{tuple(value.shape)} and dtype {value.dtype} on {value.device}")
            v = float(value.item() if torch.is_tensor(value) else value)
            if not math.isfinite(v):
                raise ValueError(f"{name}: param group {gi}: {key} must be finite, got {v}")
            return v

        lr_tensor = _capturable.device_lr(group)  # capturable: lr stays on the GPU (no host read, no check)
        lr = scalar("lr", group["lr"]) if lr_tensor is None else 0.0
        beta1, beta2 = (scalar(f"betas[{i}]", b) for i, b in enumerate(group["betas"]))
        eps = scalar("eps", group["eps"])
        wd = scalar("weight_decay", group["weight_decay"])
        for key, v in (("lr", lr), ("eps", eps), ("weight_decay", wd)):
            if v < 0:
                raise ValueError(f"{name}: param group {gi}: {key} must be >= 0, got {v}")
        for i, b in enumerate((beta1, beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{name}: param group {gi}: betas[{i}] must be in [0, 1), got {b}")
        ema = group.get("ema_decay")
        if ema is not None:
            ema = scalar("ema_decay", ema)
            if not 0.0 <= ema < 1.0:
                raise ValueError(f"{name}: param group {gi}: ema_decay must be in [0, 1), got {ema}")
        if group.get("differentiable", False):
            raise NotImplementedError(f"{name}: differentiable=True is not supported")
        return dict(rule=self._rule, lr=lr if lr_tensor is None else lr_tensor, beta1=beta1, beta2=beta2, eps=eps,
                    weight_decay=wd,
                    decoupled_weight_decay=bool(group.get("decoupled_weight_decay", False)),
                    amsgrad=bool(group.get("amsgrad", False)), maximize=bool(group.get("maximize", False)),
                    ema_decay=0.0 if ema is None else ema,
                    stochastic_rounding=bool(group.get("stochastic_rounding", False)),
                    seed=int(group.get("sr_seed", 0)) & ((1 << 63) - 1),
                    lr_is_fp32_tensor=torch.is_tensor(group["lr"]) and group["lr"].dtype == torch.float32)

    # ---- per-group tensor lists (cached while the group and the state are unchanged) ----

    def _options_key(self, group):
        return (bool(group.get("amsgrad", False)), group.get("ema_decay") is not None,
                bool(group.get("master_weights", False)))

    def _new_state(self, p, group):
        """State for a param's first step, as torch creates it (plus our extras)."""
        step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        state = _tracked.ParamState(step=torch.tensor(0.0, dtype=step_dtype, device=_capturable.step_device(p, group)))
        self._complete_state(p, group, state)
        return state

    def _complete_state(self, p, group, state):
        """Adds what the group's options need and the state lacks (new state, or a torch checkpoint)."""
        master = group.get("master_weights", False) and p.dtype in _LOW_PRECISION
        moment_dtype = torch.float32 if master else p.dtype
        for key in ("exp_avg", self._second_key) + (("max_exp_avg_sq",) if group.get("amsgrad", False) else ()):
            if key not in state:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if moment_dtype != p.dtype:
                    state[key] = state[key].to(moment_dtype)
            elif state[key].dtype != moment_dtype:
                state[key] = state[key].to(moment_dtype)
        if master and "master_param" not in state:
            state["master_param"] = p.detach().clone(memory_format=torch.preserve_format).to(torch.float32)
        if group.get("ema_decay") is not None and "ema" not in state:
            ema_dtype = torch.float32 if p.dtype in _LOW_PRECISION else p.dtype
            state["ema"] = torch.zeros_like(p, memory_format=torch.preserve_format).to(ema_dtype)
            state["ema_start"] = state["step"].detach().clone().to(torch.float32)  # EMA age = step - ema_start

    def _build_lists(self, group, params, grads):
        """Returns (lists, pending) where pending maps params to state created for this step."""
        lists = _GroupLists()
        pending = {}
        amsgrad = group.get("amsgrad", False)
        master, ema = group.get("master_weights", False), group.get("ema_decay") is not None
        for j, (p, g) in enumerate(zip(params, grads)):
            if g is None:
                continue
            state = self.state.get(p)
            if not state:
                state = self._new_state(p, group)
                pending[p] = state
            else:
                missing = (amsgrad and "max_exp_avg_sq" not in state) or (ema and "ema" not in state) or (
                    master and p.dtype in _LOW_PRECISION and (
                        "master_param" not in state or state["exp_avg"].dtype != torch.float32))
                if missing:
                    state = _tracked.ParamState(state)
                    self._complete_state(p, group, state)
                    pending[p] = state
            lists.tracked &= type(state) is _tracked.ParamState
            lists.dtensor |= _DTensor is not None and isinstance(p, _DTensor)
            lp = _local(p)
            lists.params.append(lp)
            lists.exp_avgs.append(_local(state["exp_avg"]))
            lists.seconds.append(_local(state[self._second_key]))
            if amsgrad:
                lists.max_seconds.append(_local(state["max_exp_avg_sq"]))
            lists.steps.append(state["step"])
            if master:
                lists.masters.append(_local(state["master_param"]) if "master_param" in state else lp)
            if ema:
                lists.emas.append(_local(state["ema"]))
            lists.index.append(j)
        if lists.params:
            lists.native = _has_native_kernel(lists.params[0].device)
        return lists, pending

    def _group_lists(self, gi, group, plan_ok):
        """Returns (lists, grads, pending); grads is None when lists.plan reads them (plan_ok: the step calls
        adam_step_, not the capturable lr-tensor op; every param has a grad)."""
        params = group["params"]
        # The cache entry holds the params list and state mapping themselves (compared by identity: no id reuse)
        # and the version of the containers that record their changes (_tracked), a resize of the list included.
        key = (_tracked.version(), self._options_key(group))
        cached = self._lists_cache.get(gi)
        hit = cached is not None and cached[0] is params and cached[1] is self.state and cached[2] == key
        if hit and plan_ok:
            plan = _plan_for(cached[3])
            if plan is not None and plan.has_all_grads():
                return cached[3], None, {}
        grads = [p.grad for p in params]
        complete = type(None) not in set(map(type, grads))
        if complete and hit:
            lists = cached[3]
            return lists, (list(map(_local, grads)) if lists.dtensor else grads), {}
        lists, pending = self._build_lists(group, params, grads)
        # New state is committed only after a successful step; containers that do not record their changes (a
        # params list or state a user put in place of ours) are read every step.
        if (complete and not pending and lists.tracked and type(self.state) is _tracked.State
                and type(params) is _tracked.ParamList):
            self._lists_cache[gi] = (params, self.state, key, lists)
        local_grads = [_local(g) for g in grads if g is not None]
        return lists, local_grads, pending

    # ---- the step ----

    def _call(self, gi, lists, grads, hyper, grad_scale, found_inf, check_only):
        if not lists.native:
            if not check_only:
                reference.adam_step_(lists.params, grads, lists.exp_avgs, lists.seconds, lists.max_seconds,
                                     lists.steps, lists.masters, lists.emas, grad_scale=grad_scale,
                                     found_inf=found_inf, **hyper)
            return
        op = ops.adam_step_
        if torch.is_tensor(hyper["lr"]):  # capturable with a GPU lr tensor (_capturable.device_lr)
            op = ops.adam_step_lr_tensor_
            hyper = {k: v for k, v in hyper.items() if k != "lr_is_fp32_tensor"}
        try:
            if grads is None:  # the same op, called by the plan with the grads it read (csrc/adam_plan.cpp)
                lists.plan.step(grad_scale=grad_scale, found_inf=found_inf, check_only=check_only, **hyper)
            else:
                op(lists.params, grads, lists.exp_avgs, lists.seconds, lists.max_seconds, lists.steps,
                   lists.masters, lists.emas, grad_scale=grad_scale, found_inf=found_inf,
                   check_only=check_only, **hyper)
        except (RuntimeError, ValueError, TypeError) as exc:
            if grads is None:
                grads = [p.grad for p in lists.params]
            for k, (p, g) in enumerate(zip(lists.params, grads)):  # the dispatcher refuses sparse grads itself
                if g.layout != torch.strided or p.layout != torch.strided:
                    what = "grad" if g.layout != torch.strided else "parameter"
                    raise RuntimeError(
                        f"{type(self).__name__}: param group {gi}, parameter {lists.index[k]}: {what} is sparse "
                        f"({g.layout}); fused_kingma's Adam needs dense tensors (torch.optim.SparseAdam handles "
                        "sparse gradients)") from None
            msg = str(exc).split("\nException raised from")[0]
            m = _TENSOR_INDEX.match(msg)
            where = f"param group {gi}, parameter {lists.index[int(m.group(1))]}" if m else f"param group {gi}"
            raise type(exc)(f"{type(self).__name__}: {where}: {m.group(2) if m else msg}") from None

    @torch.no_grad()
    def step(self, closure=None):
        """Performs one optimization step (skipped entirely when a GradScaler found inf/NaN grads)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        work = []
        for gi, group in enumerate(self.param_groups):  # everything is checked before anything changes
            hyper = self._hyper(gi, group)
            lists, grads, pending = self._group_lists(gi, group, plan_ok=not torch.is_tensor(hyper["lr"]))
            if lists.params:
                work.append((gi, lists, grads, hyper, pending))
        if not work:
            return loss
        if len(work) > 1 or any(not w[1].native for w in work):
            for gi, lists, grads, hyper, _ in work:
                self._call(gi, lists, grads, hyper, grad_scale, found_inf, check_only=True)
        on_device = found_inf is not None and _capturable.found_inf_read_on_device(
            found_inf, [self.param_groups[w[0]] for w in work])  # capturable: the kernels skip, no host read
        if found_inf is not None and not on_device and float(found_inf.item()) != 0.0:
            return loss  # GradScaler found inf/NaN: nothing changes, not even the step counts
        for gi, lists, grads, hyper, pending in work:
            self._call(gi, lists, grads, hyper, grad_scale, found_inf, check_only=False)
            for p, state in pending.items():
                self.state[p] = state
        return loss

    # ---- checkpoints ----

    _EXTRAS_OFF = {"ema_decay": None, "master_weights": False, "stochastic_rounding": False, "sr_seed": 0}

    def state_dict(self):
        # Extras left off are not written, so a checkpoint has exactly torch's param-group keys: strict
        # loaders (torch.distributed.checkpoint) then load it into torch.optim and back. __setstate__
        # restores the missing keys on load.
        sd = super().state_dict()
        # Plain dicts, like torch's (torch.load(weights_only=True) loads no other class).
        sd["state"] = {k: dict(v) if isinstance(v, _tracked.ParamState) else v for k, v in sd["state"].items()}
        for group in sd["param_groups"]:
            for key, off in self._EXTRAS_OFF.items():
                if key in group and group[key] == off:
                    del group[key]
        return sd

    # State entries of one element per parameter element, and the per-param scalars.
    _PER_ELEMENT_KEYS = ("exp_avg", "exp_avg_sq", "exp_inf", "max_exp_avg_sq", "master_param", "ema")
    _SCALAR_KEYS = ("step", "ema_start")
    _GROUP_KEYS = ("params", "lr", "betas", "eps", "weight_decay")

    def _check_state_dict(self, state_dict):
        """Raises a clear error for a state_dict this optimizer cannot step with (another optimizer's, missing or
        mis-shaped entries, non-float tensors), before load_state_dict changes anything. Missing amsgrad / EMA /
        master-weight entries are not errors: the next step creates them, as for a torch checkpoint."""
        where = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= state_dict.keys():
            raise ValueError(f"{where}: expected a dict with 'state' and 'param_groups' (from state_dict()), got "
                             f"{type(state_dict).__name__}" + (f" with keys {sorted(map(str, state_dict))}"
                                                               if isinstance(state_dict, dict) else ""))
        required = ("step", "exp_avg", self._second_key)
        states = state_dict["state"]
        for gi, (group, saved) in enumerate(zip(self.param_groups, state_dict["param_groups"])):
            lacking = [k for k in self._GROUP_KEYS if k not in saved]
            if lacking:
                raise ValueError(f"{where}: param group {gi} lacks {lacking} (it has {sorted(saved)}): not a "
                                 f"state_dict of {type(self).__name__} or its torch counterpart")
            for j, (p, pid) in enumerate(zip(group["params"], saved["params"])):
                st = states.get(pid)
                if not st:
                    continue
                at = f"{where}: state of param group {gi}, parameter {j}"
                lacking = [k for k in required if k not in st]
                if lacking:
                    raise ValueError(f"{at} lacks {lacking} (it has {sorted(st)}): not a state_dict of "
                                     f"{type(self).__name__} or its torch counterpart")
                for key, value in st.items():
                    if key in self._SCALAR_KEYS:
                        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
                            torch.is_tensor(value) and value.numel() == 1 and value.is_floating_point())
                        if not ok:
                            raise TypeError(f"{at}: '{key}' must be a number or a 1-element floating-point tensor, "
                                            f"got {_describe(value)}")
                    elif key in self._PER_ELEMENT_KEYS:
                        if not torch.is_tensor(value):
                            raise TypeError(f"{at}: '{key}' must be a tensor, got {_describe(value)}")
                        if value.shape != p.shape:
                            raise ValueError(f"{at}: '{key}' has shape {tuple(value.shape)} but the parameter has "
                                             f"shape {tuple(p.shape)}")
                        if not (value.is_floating_point() if p.is_floating_point() else value.dtype == p.dtype):
                            want = "a floating-point dtype" if p.is_floating_point() else p.dtype
                            raise TypeError(f"{at}: '{key}' has dtype {value.dtype} but {want} was expected "
                                            f"(parameter dtype {p.dtype})")

    def load_state_dict(self, state_dict):
        self._check_state_dict(state_dict)
        # torch casts every state tensor to its param's dtype; our fp32 extras (master copy, its
        # fp32 moments, the EMA of fp16/bf16 params) keep their own dtype.
        keep = {}
        saved_groups = state_dict["param_groups"]
        for group, saved in zip(self.param_groups, saved_groups):
            master = saved.get("master_weights", group.get("master_weights", False))
            fp32_keys = ("master_param", "ema", "ema_start") + (
                ("exp_avg", self._second_key, "max_exp_avg_sq") if master else ())
            for p, pid in zip(group["params"], saved["params"]):
                st = state_dict["state"].get(pid)
                if not st:
                    continue
                for key, value in st.items():
                    if key in fp32_keys and torch.is_tensor(value) and value.dtype == torch.float32 and (
                            p.dtype in _LOW_PRECISION or key == "ema_start"):
                        keep[(p, key)] = value
        super().load_state_dict(state_dict)
        for (p, key), value in keep.items():
            self.state[p][key] = value.to(device=p.device, copy=True)
        for p, st in self.state.items():
            if "ema_start" in st:
                st["ema_start"] = st["ema_start"].to(torch.float32)
        self._lists_cache = {}

    # ---- EMA ----

    def ema_parameters(self):
        """Bias-corrected EMA of every parameter (param-group order), as new tensors of the param's dtype.
        Params without an EMA yet (no step taken since ema_decay was set) give a copy of themselves."""
        out = []
        for group in self.param_groups:
            decay = group.get("ema_decay")
            for p in group["params"]:
                st = self.state.get(p) or {}
                if decay is None or "ema" not in st:
                    out.append(p.detach().clone())
                    continue
                age = float(st["step"]) - float(st["ema_start"])
                if age <= 0:
                    out.append(p.detach().clone())
                    continue
                ema = st["ema"]
                out.append((ema / (1.0 - decay**age)).to(p.dtype))
        return out

    @contextlib.contextmanager
    def swap_ema(self):
        """Context manager: the params hold their bias-corrected EMA inside, their own values after."""
        params = [p for group in self.param_groups for p in group["params"]]
        with torch.no_grad():
            averaged = self.ema_parameters()
            saved = [p.detach().clone() for p in params]
            for p, a in zip(params, averaged):
                p.copy_(a)
        try:
            yield self
        finally:
            with torch.no_grad():
                for p, s in zip(params, saved):
                    p.copy_(s)


def _describe(value):
    if torch.is_tensor(value):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"


def _reject_differentiable(name, differentiable, lr):
    if differentiable:
        raise NotImplementedError(f"{name}: differentiable=True is not supported (the step is a fused kernel)")
    if torch.is_tensor(lr) and lr.device.type == "meta":  # torch's own check would fail on .item() unnamed
        raise ValueError(f"{name}: lr must be a number or a 1-element real tensor with a value, got a tensor on meta")


class FusedAdam(_FusedAdamBase, torch.optim.Adam):
    """torch.optim.Adam with a fused multi-tensor step. Same arguments, plus the extras in the module doc."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
                 foreach=None, maximize=False, capturable=False, differentiable=False, fused=None,
                 decoupled_weight_decay=False, ema_decay=None, master_weights=False, stochastic_rounding=False):
        _reject_differentiable(type(self).__name__, differentiable, lr)
        torch.optim.Adam.__init__(self, params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                                  maximize=maximize, capturable=capturable, differentiable=differentiable,
                                  fused=fused, decoupled_weight_decay=decoupled_weight_decay)
        self._init_extras(ema_decay, master_weights, stochastic_rounding)


class FusedAdamW(_FusedAdamBase, torch.optim.AdamW):
    """torch.optim.AdamW (decoupled weight decay, default 1e-2) with a fused multi-tensor step."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
                 ema_decay=None, master_weights=False, stochastic_rounding=False):
        _reject_differentiable(type(self).__name__, differentiable, lr)
        torch.optim.AdamW.__init__(self, params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                                   foreach=foreach, capturable=capturable, differentiable=differentiable,
                                   fused=fused)
        self._init_extras(ema_decay, master_weights, stochastic_rounding)


class FusedAdamax(_FusedAdamBase, torch.optim.Adamax):
    """torch.optim.Adamax (Adam paper section 7.1) with a fused multi-tensor step."""

    _rule = "adamax"
    _second_key = "exp_inf"

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, foreach=None, *,
                 maximize=False, differentiable=False, capturable=False, ema_decay=None, master_weights=False,
                 stochastic_rounding=False):
        _reject_differentiable(type(self).__name__, differentiable, lr)
        torch.optim.Adamax.__init__(self, params, lr, betas, eps, weight_decay, foreach, maximize=maximize,
                                    differentiable=differentiable, capturable=capturable)
        self._init_extras(ema_decay, master_weights, stochastic_rounding)
