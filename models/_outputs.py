"""What a classifier's outputs are, logits or probabilities, and the one map from outputs to probabilities.

A model whose forward ends in ``nn.Softmax`` already returns probabilities; a second softmax flattens them
toward uniform (a mean confidence of 0.79 reads as 0.2) and silently skews everything computed from them:
ECE, NLL, Brier, LIME's target probability, the deletion/insertion curves. Which kind a model returns is
decided once, from the first batch of its outputs xaudit sees (the input check's probe when there is one),
and cached per model. Log-probabilities (``nn.LogSoftmax``) are not probabilities by that test, and softmax
of them is exactly the probabilities, so they take the logits path.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from ._modes import eval_mode

#: How far a row's sum may be from 1 (float32 softmax rows are within ~1e-6; float16 within ~1e-3).
SUM_TOLERANCE = 1e-3

PROBABILITIES = "probabilities"
LOGITS = "logits"

_KIND: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def looks_like_probabilities(outputs: torch.Tensor) -> bool:
    """Whether every row of N×K ``outputs`` is non-negative and sums to 1 within :data:`SUM_TOLERANCE`."""
    if outputs.ndim != 2 or not len(outputs) or outputs.shape[1] < 2 or not outputs.is_floating_point():
        return False
    out = outputs.detach().double()
    if not bool(torch.isfinite(out).all()) or bool((out < 0).any()):
        return False
    return bool(((out.sum(1) - 1).abs() <= SUM_TOLERANCE).all())


def note_outputs(model: nn.Module, outputs: torch.Tensor) -> str:
    """The kind of ``model``'s outputs (:data:`PROBABILITIES` or :data:`LOGITS`), decided from ``outputs`` the
    first time this model is seen and cached for the model's lifetime after that (rows with NaN/Inf are left
    out of the decision; outputs with no finite row read as logits and decide nothing)."""
    kind = _KIND.get(model)
    if kind is not None:
        return kind
    if outputs.ndim == 2 and outputs.is_floating_point():
        # rows with NaN/Inf say nothing about the kind; a batch of nothing else decides nothing
        outputs = outputs[torch.isfinite(outputs.detach()).all(1)]
        if not len(outputs):
            return LOGITS
    kind = PROBABILITIES if looks_like_probabilities(outputs) else LOGITS
    _KIND[model] = kind
    return kind


def output_kind(model: nn.Module, sample: torch.Tensor) -> str:
    """The kind of ``model``'s outputs; when not seen yet, decided from one eval-mode forward of ``sample``
    (a small batch of inputs; every module's ``.training`` is restored)."""
    kind = _KIND.get(model)
    if kind is not None:
        return kind
    param = next(model.parameters(), None)
    with eval_mode(model), torch.no_grad():
        out = model(sample.to(param.device) if param is not None else sample)
    return note_outputs(model, out)


def to_probabilities(model: nn.Module, outputs: torch.Tensor) -> torch.Tensor:
    """Class probabilities from ``model``'s N×K ``outputs``: the outputs themselves when the model returns
    probabilities, else their softmax over the last dimension (in float32 at least)."""
    if note_outputs(model, outputs) == PROBABILITIES:
        return outputs if outputs.dtype == torch.float64 else outputs.float()
    return torch.softmax(outputs if outputs.dtype == torch.float64 else outputs.float(), dim=-1)
