"""One walk of a model's module tree per explanation call.

An ``explain`` call asks the same questions of the user's model about fifteen times (is it recurrent, are
its activations ones the rule covers, is the cached hook-safe copy still current, which modules are in
training mode), and each ``model.modules()`` walk is a Python generator over the tree. Inside
:func:`one_walk_per_call` the tree is walked once per model and the tuple reused; outside it every call walks
again, so a model changed between two calls is always seen as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from torch import nn

# id(model) -> (model, its modules or None until walked); the model is kept so its id cannot be reused
_WALKS: ContextVar[dict[int, tuple[nn.Module, tuple[nn.Module, ...] | None]] | None] = ContextVar(
    "xaudit_walks", default=None)


def modules_of(model: nn.Module) -> tuple[nn.Module, ...]:
    """``tuple(model.modules())``, walked once inside :func:`one_walk_per_call` for the models it names."""
    memo = _WALKS.get()
    hit = None if memo is None else memo.get(id(model))
    if hit is None:
        return tuple(model.modules())
    if hit[1] is None:
        hit = memo[id(model)] = (model, tuple(model.modules()))  # type: ignore[index]
    return hit[1]  # type: ignore[return-value]


@contextlib.contextmanager
def one_walk_per_call(model: nn.Module) -> Iterator[None]:
    """A block in which ``model``'s module tree does not change (one explanation call): its walk is reused.
    Only ``model``'s: the private copies a call makes are changed while it runs (reused modules split), so
    they are walked afresh every time. Nested blocks add to the outermost one's."""
    memo = _WALKS.get()
    if memo is not None:
        if id(model) in memo:
            yield
            return
        memo[id(model)] = (model, None)
        try:
            yield
        finally:
            memo.pop(id(model), None)
        return
    token = _WALKS.set({id(model): (model, None)})
    try:
        yield
    finally:
        _WALKS.reset(token)
