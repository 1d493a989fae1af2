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
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

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
_GENERATIONS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, int]] = weakref.WeakKeyDictionary()
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


def _leaves(value: Any, out: list[Any], depth: int) -> None:
    kind = type(value)
    if kind not in _CONTAINERS and not isinstance(value, dict):
        out.append(value)
        return
    out.append(kind)
    out.append(len(value))
    if depth >= _MAX_DEPTH or len(value) > _MAX_ITEMS:
        out.append(value)  # by identity: a list holding itself ends here too
        return
    if isinstance(value, dict):
        for key, item in value.items():
            out.append(key)
            _leaves(item, out, depth + 1)
    elif isinstance(value, (set, frozenset)):
        out.append(frozenset(value) if all(isinstance(v, _VALUE_TYPES) for v in value) else value)
    else:
        for item in value:
            _leaves(item, out, depth + 1)


def _fingerprint(model: nn.Module) -> tuple:
    """Every module's attributes as one flat tuple of leaves (types and lengths included, so two different
    layouts never flatten alike). ``training`` is left out: explanation calls switch it and restore it."""
    out: list[Any] = []
    for module in modules_of(model):
        attrs = {k: v for k, v in vars(module).items() if k != "training"}
        out.append(type(module))
        _leaves(attrs, out, 0)
    return tuple(out)


def _stored(leaf: Any) -> Any:
    """A leaf as the stored fingerprint keeps it: values as they are, objects by weak reference, so the stored
    fingerprint never keeps the model alive (a bound-method hook or a child pointing back at the model would)."""
    if isinstance(leaf, _VALUE_TYPES) or type(leaf) is type:
        return leaf
    try:
        return weakref.ref(leaf)
    except TypeError:  # lists, dicts, tuples: by identity, with their length next to them
        return _ById(id(leaf))


class _ById:
    __slots__ = ("ident",)

    def __init__(self, ident: int) -> None:
        self.ident = ident


def _same(stored: tuple, now: tuple) -> bool:
    if len(stored) != len(now):
        return False
    for s, v in zip(stored, now):
        if isinstance(s, weakref.ref):
            if s() is not v:
                return False
        elif isinstance(s, _ById):
            if s.ident != id(v):
                return False
        elif not (s is v or (type(s) is type(v) and s == v)):
            return False
    return True


def model_generation(model: nn.Module) -> int:
    """A number that stays the same while nothing ``model.forward`` may read changes but tensor values, and
    changes otherwise (a module, parameter or buffer replaced, a hook added, a flag or plain attribute set).
    Computed once per :func:`one_walk_per_call` block."""
    seen = _seen(model)
    if seen is not None and seen.generation is not None:
        return seen.generation
    fingerprint = _fingerprint(model)
    stored = _GENERATIONS.get(model)
    if stored is not None and _same(stored[0], fingerprint):
        generation = stored[1]
    else:
        generation = next(_NEXT_GENERATION)
        _GENERATIONS[model] = (tuple(_stored(leaf) for leaf in fingerprint), generation)
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
