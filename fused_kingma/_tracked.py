"""Containers that record their changes. FusedAdam keeps each param group's tensor lists between steps (building
them costs ~1 us per parameter); torch's optimizers read ``param_groups`` and ``state`` anew every step, so that
a param swapped into a group's list, a state tensor replaced by assignment (``opt.state[p]["exp_avg"] = t``) or a
param's state reset (``opt.state[p] = {}``) is used by the next step. These containers bump one version on every
change; the cache key holds it. Changes inside tensors (in place) need nothing: the lists hold the same tensors.
"""
import collections

_version = 0


def version():
    """Bumped by every change to any ParamState, State or ParamList (all optimizers: changes are rare)."""
    return _version


def _recording(names):
    def decorate(cls):
        def wrap(name):
            base = getattr(super(cls, cls), name)

            def method(self, *args, **kwargs):
                global _version
                _version += 1
                return base(self, *args, **kwargs)
            method.__name__ = name
            return method

        for name in names:
            setattr(cls, name, wrap(name))
        return cls
    return decorate


_DICT_CHANGES = ("__setitem__", "__delitem__", "__ior__", "pop", "popitem", "clear", "update", "setdefault")
_LIST_CHANGES = ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop", "remove",
                 "clear", "sort", "reverse")


@_recording(_DICT_CHANGES)
class ParamState(dict):
    """One parameter's optimizer state."""

    __slots__ = ()


@_recording(_DICT_CHANGES)
class State(collections.defaultdict):
    """``optimizer.state`` (torch's defaultdict(dict)); its plain per-param dicts become ParamStates."""

    __slots__ = ()

    def __init__(self, items=()):
        super().__init__(ParamState)
        for p, st in dict(items).items():
            self[p] = ParamState(st) if type(st) is dict else st

    def __reduce__(self):  # copy / pickle (defaultdict's would pass the factory to __init__)
        return State, (), None, None, iter(self.items())


@_recording(_LIST_CHANGES)
class ParamList(list):
    """A param group's ``"params"`` list."""

    __slots__ = ()
