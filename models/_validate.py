"""Up-front checks that a model and data fit together, so failures read as one line instead of a traceback."""

from __future__ import annotations

import re

import torch
from torch import nn

from ._errors import XauditError
from ._modes import eval_mode
from ._nets import ModelSpec
from ._outputs import note_outputs


def check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, what: str = "data") -> int:
    """Check ``x`` (and labels ``y``) against ``model`` and return the number of classes the model outputs.

    Runs the first two samples (one if there is one) forward in eval mode without autograd (every module's
    ``.training`` is restored): the model must return one finite row of class scores per sample. ``what`` names
    the data in messages, e.g. ``"x_test"``.
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
    n_classes = _probe(model, x[:2], what)
    if y is not None:
        _check_labels(y, len(x), n_classes, what)
    return n_classes


def model_dtype(model: nn.Module) -> torch.dtype:
    """The floating dtype of the model's first floating parameter or buffer (``torch.float32`` if none): the
    dtype its inputs should have."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def _probe(model: nn.Module, sample: torch.Tensor, what: str) -> int:
    """Forward a batch of one or two samples and return the width of the model's 2-D output.

    Two samples, so a model that only works on a batch of one (``x.view(1, -1)``) is caught here rather than
    with a traceback later; the outputs must be one finite row per sample, and they decide whether the model
    returns logits or probabilities (:func:`~._outputs.note_outputs`).
    """
    out = _forward(model, sample, what)
    n = len(sample)
    if not isinstance(out, torch.Tensor):
        raise XauditError(
            f"the model returned a {type(out).__name__} for {what}, not a tensor of logits: "
            "wrap it so forward returns an N×n_classes tensor"
            + (f", e.g. a module whose forward is model(x){'[0]' if isinstance(out, (tuple, list)) else '[key]'}"
               if isinstance(out, (tuple, list, dict)) else "")
        )
    if out.ndim == 2 and out.shape[0] != n and n > 1:
        raise XauditError(
            f"the model returned {out.shape[0]} output row(s) for a batch of {n} samples (shape {tuple(out.shape)}): "
            "make forward keep the batch dimension, e.g. x.flatten(1) instead of x.view(1, -1)"
        )
    if out.ndim != 2 or out.shape[0] != n:
        samples = "one sample" if n == 1 else f"{n} samples"
        raise XauditError(
            f"the model's output for {samples} has shape {tuple(out.shape)}, not ({n}, n_classes): "
            "make forward return one row of class scores per sample"
        )
    if out.shape[1] < 2:
        raise XauditError(
            f"the model outputs {out.shape[1]} score per sample: xaudit explains classifiers with one logit per class "
            "(for a binary model, return two logits, e.g. torch.cat([-z, z], 1))"
        )
    if out.is_floating_point() and not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        raise XauditError(
            f"the model returned NaN/Inf outputs for {what} ({bad} of {out.numel()} values on its first {n} "
            "sample(s)): fix its forward (e.g. a log or division of values that can be 0 or negative) so it "
            "returns finite logits or probabilities"
        )
    note_outputs(model, out)
    return int(out.shape[1])


def _forward(model: nn.Module, sample: torch.Tensor, what: str) -> object:
    """``model(sample)`` in eval mode without autograd; what the model raised becomes one line saying whether the
    data's shape, its dtype or something else in the model is the problem."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with eval_mode(model), torch.no_grad():
        try:
            return model(sample.to(device))
        except Exception as exc:
            error = exc
        batch_only = len(sample) > 1 and _runs(model, sample[:1].to(device))
    if batch_only:
        raise XauditError(
            f"the model takes one sample of {what} but fails on a batch of {len(sample)} ({_raised(error)}): "
            "make forward keep the batch dimension, e.g. x.flatten(1) instead of x.view(1, -1)"
        ) from error
    raise _forward_error(model, sample, what, error) from error


def _runs(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model(x)`` returns at all (what it raises is not the error to report)."""
    try:
        model(x)
    except Exception:
        return False
    return True


def _raised(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


_SHAPE_WORDS = re.compile(r"shape|size|dimension|channels|mat1 and mat2|must match|\bdim\b|expected .*input",
                          re.IGNORECASE)


def _forward_error(model: nn.Module, sample: torch.Tensor, what: str, exc: BaseException) -> XauditError:
    dtype = model_dtype(model)
    if sample.is_floating_point() and sample.dtype != dtype:
        return XauditError(
            f"the model's weights are {dtype} but {what} is {sample.dtype} (the model raised {_raised(exc)}): "
            f"pass data of the model's dtype, e.g. x.to({dtype}), or convert the model, e.g. model.to({sample.dtype})"
        )
    if _SHAPE_WORDS.search(str(exc)):
        spec = getattr(model, "spec", None)
        expects = f", expects {tuple(spec.input_shape)}" if isinstance(spec, ModelSpec) else ""
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return XauditError(
            f"input shape {tuple(sample.shape[1:])} doesn't fit the model ({message}{expects}): "
            "pass data shaped like the model's training data"
        )
    return XauditError(
        f"the model raised {_raised(exc)} on {what}, shaped {tuple(sample.shape[1:])} per sample: fix its forward, "
        "or pass data it accepts"
    )


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
