"""What an explanation call knows about the user's model: one walk of its module tree per call, and a
generation number that changes whenever anything its ``forward`` may read changes.

An ``explain`` call asks the same questions of the model about fifteen times (is it recurrent, are its
activations ones the rule covers, is the cached hook-safe copy still current, which modules are in training
mode). Inside :func:`one_walk_per_call` the tree is walked once and the answers reused; outside it every
call walks again, so a model changed between two calls is always seen as it is.

The per-model caches (the hook-safe copy, the class count, the FLOP and memory probes) key on
:func:`model_generation`. It compares a fingerprint of every module's attributes with the one seen last:
the module objects, the parameter and buffer objects, hooks, flags and plain attributes (a calibrated
``temperature``, a normalisation tensor kept as an attribute). New *values* in the same tensors (an optimizer
step, ``load_state_dict``) keep the generation: the hook-safe copy shares the model's tensors and every other
plain attribute (lists, arrays, config objects), so what changes inside them in place reaches it too.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import torch
from torch import nn


class _Seen:
    """One model's walk and generation, for the length of a :func:`one_walk_per_call` block."""

    __slots__ = ("model", "modules", "generation")

    def __init__(self, model: nn.Module) -> None:
        self.model = model  # kept so that its id cannot be reused while the block is open
        self.modules: tuple[nn.Module, ...] | None = None
        self.generation: int | None = None


_SCOPE: ContextVar[dict[int, _Seen] | None] = ContextVar("xaudit_model_scope", default=None)
# model -> (fingerprint, generation). The stored fingerprint holds objects by weak reference only, so a model
# nobody else references is collected and its entry dropped.
_GENERATIONS: weakref.WeakKeyDictionary[nn.Module, tuple[_Stored, int]] = weakref.WeakKeyDictionary()
_NEXT_GENERATION = itertools.count(1)
#: Leaves compared by value; everything else by identity (a new tensor or function is a change).
_VALUE_TYPES = (bool, int, float, complex, str, bytes, type(None), frozenset)


def _seen(model: nn.Module) -> _Seen | None:
    scope = _SCOPE.get()
    return None if scope is None else scope.get(id(model))


def modules_of(model: nn.Module) -> tuple[nn.Module, ...]:
    """``tuple(model.modules())``, walked once inside :func:`one_walk_per_call` for the model it names."""
    seen = _seen(model)
    if seen is None:
        return tuple(model.modules())
    if seen.modules is None:
        seen.modules = tuple(model.modules())
    return seen.modules


@contextlib.contextmanager
def one_walk_per_call(model: nn.Module) -> Iterator[None]:
    """A block in which ``model`` does not change (one explanation call): its walk and generation are reused.
    Only ``model``'s: the private copies a call makes are changed while it runs (reused modules split), so
    they are walked afresh every time. Nested blocks add to the outermost one's."""
    scope = _SCOPE.get()
    if scope is not None:
        if id(model) in scope:
            yield
            return
        scope[id(model)] = _Seen(model)
        try:
            yield
        finally:
            scope.pop(id(model), None)
        return
    token = _SCOPE.set({id(model): _Seen(model)})
    try:
        yield
    finally:
        _SCOPE.reset(token)


#: Containers (lists, tuples, dicts, sets) are looked into this deep, and only up to this many items; a deeper
#: or larger one counts by identity and length (a 1M-entry vocabulary dict made every call ~800× slower).
_MAX_DEPTH, _MAX_ITEMS = 3, 256
_CONTAINERS = (dict, list, tuple, set, frozenset)


# Stands in the values for each object leaf: the objects themselves are compared by identity, apart.
_OBJECT = object()
_DICT_KINDS = (dict, OrderedDict)
_SEQUENCE_KINDS = (tuple, list)


def _leaves(value: Any, values: list[Any], objects: list[Any], depth: int) -> None:
    """Flatten ``value`` into ``values`` (each value leaf after its type, so 1, 1.0 and True differ; container
    types and lengths; ``_OBJECT`` for each object leaf) and ``objects`` (the object leaves, in order)."""
    kind = type(value)
    if kind not in _CONTAINERS and not isinstance(value, dict):
        if kind is type or isinstance(value, _VALUE_TYPES):
            values += (kind, value)
        else:
            values.append(_OBJECT)
            objects.append(value)
        return
    values += (kind, len(value))
    if depth >= _MAX_DEPTH or len(value) > _MAX_ITEMS:
        values.append(_OBJECT)  # by identity: a list holding itself ends here too
        objects.append(value)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _leaves(key, values, objects, _MAX_DEPTH)  # a key is a leaf (a tuple key: by identity)
            _leaves(item, values, objects, depth + 1)
    elif isinstance(value, (set, frozenset)):
        if all(isinstance(v, _VALUE_TYPES) for v in value):
            values.append(frozenset(value))
        else:
            values.append(_OBJECT)
            objects.append(value)
    else:
        for item in value:
            _leaves(item, values, objects, depth + 1)


def _fingerprint(model: nn.Module) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Every module's attributes flattened into (values, objects): see :func:`_leaves`. ``training`` is left
    out: explanation calls switch it and restore it.

    Most of a module's attributes are names, numbers and empty hook dicts; those are appended here directly,
    without a call per leaf (the fingerprint is taken on every explanation call)."""
    values: list[Any] = []
    objects: list[Any] = []
    for module in modules_of(model):
        attrs = vars(module)
        values += (type(module), len(attrs))
        for key, item in attrs.items():
            if key == "training":
                continue
            kind = type(item)
            if kind in _FAST_VALUE_TYPES:
                values += (key, kind, item)
            elif kind in _DICT_KINDS and len(item) <= _MAX_ITEMS:
                # _leaves(item, ..., 1) unrolled one level: the parameter, buffer, child-module and hook dicts
                values += (key, kind, len(item))
                for name, child in item.items():
                    if type(name) is str:
                        values += (str, name)
                    else:
                        _leaves(name, values, objects, _MAX_DEPTH)
                    if type(child) in _FAST_VALUE_TYPES:
                        values += (type(child), child)
                    elif isinstance(child, _OBJECT_KINDS):  # parameters, buffers, child modules
                        values.append(_OBJECT)
                        objects.append(child)
                    else:
                        _leaves(child, values, objects, 2)
            elif kind in _SEQUENCE_KINDS and len(item) <= _MAX_ITEMS and all(
                    type(v) in _FAST_VALUE_TYPES for v in item):  # kernel_size, stride, padding: numbers
                values += (key, kind, len(item))
                for v in item:
                    values += (type(v), v)
            else:
                values.append(key)
                _leaves(item, values, objects, 1)
    return tuple(values), tuple(objects)


#: Leaves that are objects whatever their subclass (never containers or value types).
_OBJECT_KINDS = (nn.Module, torch.Tensor)
#: Exact types whose leaves are appended without a call (subclasses take the general path, same result).
_FAST_VALUE_TYPES = frozenset({bool, int, float, str, type(None)})


class _Stored:
    """A fingerprint as kept between calls: the values as they are, the objects by ``id`` with a weak
    reference next to each, so the stored fingerprint never keeps the model alive (a bound-method hook or a
    child pointing back at the model would) and an object freed and replaced by a new one at the same address
    is still seen as a change."""

    __slots__ = ("values", "ids", "refs")

    def __init__(self, values: tuple[Any, ...], objects: tuple[Any, ...]) -> None:
        self.values = values
        self.ids = tuple(map(id, objects))
        self.refs = tuple(_weak(o) for o in objects)

    def matches(self, values: tuple[Any, ...], objects: tuple[Any, ...]) -> bool:
        # the tuples compare in C, each element by identity first (a NaN attribute that is the same float
        # object is unchanged); only the weak references take a Python loop, one per object leaf
        if self.values != values or self.ids != tuple(map(id, objects)):
            return False
        return all(ref is None or ref() is obj for ref, obj in zip(self.refs, objects))


def _weak(leaf: Any) -> weakref.ref | None:
    try:
        return weakref.ref(leaf)
    except TypeError:  # lists, dicts, tuples: by identity only, their lengths are in the values
        return None


def model_generation(model: nn.Module) -> int:
    """A number that stays the same while nothing ``model.forward`` may read changes but tensor values, and
    changes otherwise (a module, parameter or buffer replaced, a hook added, a flag or plain attribute set).
    Computed once per :func:`one_walk_per_call` block."""
    seen = _seen(model)
    if seen is not None and seen.generation is not None:
        return seen.generation
    values, objects = _fingerprint(model)
    stored = _GENERATIONS.get(model)
    if stored is not None and stored[0].matches(values, objects):
        generation = stored[1]
    else:
        generation = next(_NEXT_GENERATION)
        _GENERATIONS[model] = (_Stored(values, objects), generation)
    if seen is not None:
        seen.generation = generation
    return generation


T = TypeVar("T")


def per_generation(cache: weakref.WeakKeyDictionary[nn.Module, dict[Any, tuple[int, Any]]], model: nn.Module,
                   key: Any, compute: Callable[[], T]) -> T:
    """``compute()`` for ``model`` and ``key``, kept in ``cache`` and computed again when the model's
    :func:`model_generation` has changed (the per-model probes: hook-safe copy, class count, FLOPs, memory)."""
    generation = model_generation(model)
    per_model = cache.setdefault(model, {})
    hit = per_model.get(key)
    if hit is None or hit[0] != generation:
        hit = per_model[key] = (generation, compute())
    return hit[1]  # type: ignore[no-any-return]
