"""Up-front checks that a model and data fit together, so failures read as one line instead of a traceback."""

from __future__ import annotations

import torch
from torch import nn

from ._errors import XauditError
from ._nets import ModelSpec


def check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, what: str = "data") -> int:
    """Check ``x`` (and labels ``y``) against ``model`` and return the number of classes the model outputs.

    Runs one sample forward in eval mode without autograd (``.training`` is restored). ``what`` names the
    data in messages, e.g. ``"x_test"``.
    """
    if not isinstance(x, torch.Tensor):
        raise XauditError(
            f"{what} is a {type(x).__name__}, not a torch.Tensor: "
            "convert it with torch.as_tensor(x, dtype=torch.float32)"
        )
    if x.ndim < 2 or len(x) == 0:
        raise XauditError(f"{what} has shape {tuple(x.shape)}: pass a batch of at least one sample, shaped N×…")
    if x.is_floating_point():
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise XauditError(f"data {what!r} has {bad} NaN/Inf values: clean or impute them before auditing")
    n_classes = _probe(model, x[:1], what)
    if y is not None:
        _check_labels(y, len(x), n_classes, what)
    return n_classes


def _probe(model: nn.Module, sample: torch.Tensor, what: str) -> int:
    """Forward one sample and return the width of the model's 2-D output."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    spec = getattr(model, "spec", None)
    expects = f", expects {tuple(spec.input_shape)}" if isinstance(spec, ModelSpec) else ""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(sample.to(device))
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise XauditError(
            f"input shape {tuple(sample.shape[1:])} doesn't fit the model ({message}{expects}): "
            "pass data shaped like the model's training data"
        ) from exc
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise XauditError(
            f"the model returned a {type(out).__name__} for {what}, not a tensor of logits: "
            "wrap it so forward returns an N×n_classes tensor"
        )
    if out.ndim != 2 or out.shape[0] != 1:
        raise XauditError(
            f"the model's output for one sample has shape {tuple(out.shape)}, not (1, n_classes): "
            "make forward return one row of class scores per sample"
        )
    if out.shape[1] < 2:
        raise XauditError(
            f"the model outputs {out.shape[1]} score per sample: xaudit explains classifiers with one logit per class "
            "(for a binary model, return two logits, e.g. torch.cat([-z, z], 1))"
        )
    return int(out.shape[1])


def _check_labels(y: torch.Tensor, n: int, n_classes: int, what: str) -> None:
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or len(y) != n:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise XauditError(
            f"labels for {what} have shape {shape} but there are {n} samples: pass one class index per sample"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise XauditError(f"labels for {what} have dtype {y.dtype}: pass integer class indices (y.long())")
    if n == 0:
        return
    outside = (y < 0) | (y >= n_classes)
    if bool(outside.any()):
        bad = int(y[outside][0])
        raise XauditError(
            f"label {bad} in {what} is outside the model's {n_classes} classes [0, {n_classes}): "
            f"pass labels 0..{n_classes - 1} matching the model's outputs"
        )
