"""Checks of the explanation methods' constructor arguments: a one-line XauditError naming the parameter, what it
takes and an example, raised at construction (int("3") or float(tensor) there gave raw tracebacks, and int(2.5)
silently made 2.5 steps into 2)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from xaudit.models._errors import XauditError


def is_integer(value: Any) -> bool:
    """A Python or numpy integer (not a bool, not a float however whole)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    """A real Python or numpy number (not a bool)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def shown(value: Any) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"a {type(value).__name__} of shape {tuple(value.shape)}"
    text = repr(value)
    return f"{text[:40]}…" if len(text) > 41 else text


def integer_param(name: str, value: Any, *, minimum: int, example: int) -> int:
    """``value`` as an int, or a one-line error: not an integer (2.5, "3", a tuple), or below ``minimum``."""
    if not is_integer(value):
        raise XauditError(f"{name} must be an integer of at least {minimum}, got {shown(value)}: "
                          f"pass e.g. {name.split()[-1]}={example}")
    if value < minimum:
        raise XauditError(f"{name} must be at least {minimum}, got {value}: pass e.g. {name.split()[-1]}={example}")
    return int(value)


def number_param(name: str, value: Any, *, minimum: float | None = None, example: float) -> float:
    """``value`` as a finite float (at least ``minimum`` if given), or a one-line error."""
    if not is_number(value) or not math.isfinite(float(value)) or (minimum is not None and not value >= minimum):
        bound = "" if minimum is None else f" of at least {minimum:g}"
        raise XauditError(f"{name} must be a finite number{bound}, got {shown(value)}: "
                          f"pass e.g. {name.split()[-1]}={example}")
    return float(value)


def constant_baseline(method: str, value: Any) -> float:
    """The baseline of a method that sets every input element to one number (IG's path start, DeepLift's reference,
    occlusion's fill): a number, or a tensor/array holding one; anything else is a one-line error.

    A per-element baseline (captum's ``baselines`` tensor) is refused rather than half-supported: the baseline is
    also a cache key, a report setting and a constructor argument rebuilt from ``get_params``, all of which take
    one number.
    """
    if isinstance(value, (torch.Tensor, np.ndarray)):
        flat = value.detach().flatten() if isinstance(value, torch.Tensor) else value.reshape(-1)
        if flat.shape[0] == 1:
            value = flat[0].item()
        else:
            first = flat[0].item() if flat.shape[0] else None
            if flat.shape[0] > 1 and is_number(first) and bool((flat == flat[0]).all()):
                fix = f"it holds only {first!r}: pass baseline={first!r}"
            else:
                fix = "per-element baselines (captum's baselines tensor) are not supported: pass one number, e.g. 0.0"
            raise XauditError(f"{method} baseline must be one number, the value every input element is set to, got "
                              f"{shown(value)}; {fix}")
    if not is_number(value) or not math.isfinite(float(value)):
        raise XauditError(f"{method} baseline must be one finite number, the value every input element is set to, "
                          f"got {shown(value)}: pass e.g. baseline=0.0")
    return float(value)
