"""Bitwise snapshots of an optimizer (params, grads, per-param state, group settings), for the tests that
assert a failed call changed nothing."""
import torch


def _bits(t):
    """A tensor's exact content (NaN payloads included), dtype and shape (a meta tensor has no content)."""
    if t.device.type == "meta":
        return (t.dtype, tuple(t.shape), "meta")
    t = t.detach().cpu()
    t = t.to_dense() if t.layout != torch.strided else t
    return (t.dtype, tuple(t.shape), t.contiguous().reshape(-1).view(torch.uint8).clone())


def _freeze(value):
    if torch.is_tensor(value):
        return _bits(value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_freeze(v) for v in value]
    return repr(value)  # repr: nan == nan


def snapshot(opt):
    """Everything a failed call must leave alone: params, grads, per-param state and the group settings."""
    out = []
    for group in opt.param_groups:
        params = group["params"]
        out.append({
            "params": [_bits(p) for p in params],
            "grads": [None if p.grad is None else _bits(p.grad) for p in params],
            "state": [_freeze(opt.state[p]) if p in opt.state else None for p in params],
            "settings": _freeze({k: v for k, v in group.items() if k != "params"}),
        })
    return out


def assert_same(before, after):
    assert len(before) == len(after)
    for b, a in zip(before, after):
        for key in ("settings", "params", "grads", "state"):
            assert len(b[key]) == len(a[key])
            for x, y in zip(b[key], a[key]):
                _assert_frozen_equal(x, y)


def _assert_frozen_equal(x, y):
    if isinstance(x, tuple):
        assert x[:2] == y[:2] and type(x[2]) is type(y[2])
        assert x[2] == y[2] if isinstance(x[2], str) else torch.equal(x[2], y[2])
    elif isinstance(x, dict):
        assert x.keys() == y.keys()
        for k in x:
            _assert_frozen_equal(x[k], y[k])
    elif isinstance(x, list):
        assert len(x) == len(y)
        for u, v in zip(x, y):
            _assert_frozen_equal(u, v)
    else:
        assert x == y
