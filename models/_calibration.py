"""Calibration of a classifier's confidence: expected calibration error and the reliability diagram.

Confidence is the top-class probability and a prediction is "correct" when its top class is the label
(Guo, Pleiss, Sun & Weinberger 2017, §2). The reliability curve comes from
``sklearn.calibration.calibration_curve`` on (correct, confidence); the bin counts it does not return are
computed with the same bin edges, so ECE = Σ_b (n_b / N)·|acc_b − conf_b| (Guo et al. 2017, eq. 3) uses
exactly the plotted bins.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._errors import XauditError
from ._outputs import SUM_TOLERANCE
from ._train import predict_proba

STRATEGIES: tuple[str, ...] = ("uniform", "quantile")


@dataclass(frozen=True)
class ReliabilityBin:
    """One non-empty confidence bin: its edges, how many predictions fell in it, their accuracy and mean confidence."""

    lower: float
    upper: float
    count: int
    accuracy: float
    confidence: float


@dataclass(frozen=True)
class Calibration:
    """ECE, MCE (the worst bin's gap), overall accuracy vs mean confidence, Brier score and NLL, with the bins.

    ``overconfidence`` is mean confidence − accuracy: positive when the model claims more than it delivers.
    """

    ece: float
    mce: float
    accuracy: float
    mean_confidence: float
    brier: float
    nll: float
    n_samples: int
    n_bins: int
    strategy: str
    bins: tuple[ReliabilityBin, ...]

    @property
    def overconfidence(self) -> float:
        return self.mean_confidence - self.accuracy

    @property
    def interpretation(self) -> str:
        direction = "over" if self.overconfidence > 0 else "under"
        if self.ece < 0.02:
            return f"well calibrated: confidence matches accuracy within {self.ece:.1%} on average (ECE)"
        return (f"{direction}confident: mean confidence {self.mean_confidence:.1%} against accuracy "
                f"{self.accuracy:.1%}; ECE {self.ece:.1%}, worst bin off by {self.mce:.1%}")

    def to_json(self) -> dict[str, Any]:
        return {"ece": self.ece, "mce": self.mce, "accuracy": self.accuracy, "mean_confidence": self.mean_confidence,
                "overconfidence": self.overconfidence, "brier": self.brier, "nll": self.nll,
                "n_samples": self.n_samples, "n_bins": self.n_bins, "strategy": self.strategy,
                "bins": [vars(b) for b in self.bins], "interpretation": self.interpretation,
                "paper": "Guo, Pleiss, Sun & Weinberger 2017, eq. 3"}


def check_binning(n_bins: int, strategy: str = "uniform") -> int:
    """``n_bins`` as an int if it is a whole number ≥ 1 and ``strategy`` one of :data:`STRATEGIES`; else a one-line
    error."""
    try:
        bins = operator.index(n_bins)
    except TypeError:
        bins = None
    if bins is None or isinstance(n_bins, bool) or bins < 1:
        raise XauditError(f"n_bins must be a whole number ≥ 1, got {n_bins!r}: pass e.g. n_bins=15")
    if strategy not in STRATEGIES:
        from ._errors import did_you_mean

        raise did_you_mean("binning strategy", strategy, STRATEGIES)
    return bins


def _probabilities(proba: np.ndarray | torch.Tensor) -> np.ndarray:
    """``proba`` as float64 N×K softmax probabilities, or a one-line error naming what it looks like instead."""
    try:
        p = np.asarray(proba.detach().cpu() if isinstance(proba, torch.Tensor) else proba, dtype=np.float64)
    except (TypeError, ValueError):
        raise XauditError(f"calibration needs N×K class probabilities as numbers, got {type(proba).__name__} values "
                          "that are not: pass softmax probabilities, e.g. predict_proba(model, x)") from None
    if p.ndim != 2 or not len(p):
        raise XauditError(f"calibration needs N×K class probabilities (N ≥ 1), got shape {p.shape}: pass one row of "
                          "class probabilities per sample")
    if p.shape[1] < 2:
        raise XauditError(f"calibration needs a probability per class (K ≥ 2), got shape {p.shape}: for a binary "
                          "model's one probability p, pass np.stack([1 - p, p], 1)")
    bad = int((~np.isfinite(p)).sum())
    if bad:
        raise XauditError(f"{bad} of the {p.size} probabilities {'is' if bad == 1 else 'are'} NaN/Inf: pass finite "
                          "softmax probabilities (a model that returns NaN has diverged or divides by zero)")
    fix = "pass softmax probabilities, e.g. softmax(logits, 1), or use model_calibration(model, x, y), which applies it"
    low, high = float(p.min()), float(p.max())
    if low < -SUM_TOLERANCE or high > 1 + SUM_TOLERANCE:
        looks = "log-probabilities" if high <= SUM_TOLERANCE else "logits"
        raise XauditError(f"calibration needs probabilities in [0, 1], got values from {low:.4g} to {high:.4g} (these "
                          f"look like {looks}): {fix}")
    sums = p.sum(1)
    off = np.abs(sums - 1) > SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise XauditError(f"calibration needs rows that sum to 1, got {int(off.sum())} of {len(p)} that do not (row "
                          f"{row} sums to {sums[row]:.4g}): {fix}")
    return p


def _class_indices(labels: np.ndarray | torch.Tensor, n: int, n_classes: int) -> np.ndarray:
    """``labels`` as N integer class indices in [0, K), or a one-line error with the fix."""
    y = np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels)
    if y.ndim != 1:
        if y.ndim == 2 and y.shape[1] == 1:
            fix = "pass labels.ravel()"
        elif y.ndim == 2 and y.shape[1] == n_classes:
            fix = "they look one-hot: pass labels.argmax(1)"
        else:
            fix = "pass one class index per sample"
        raise XauditError(f"labels must be one class index per sample, shape ({n},), got shape {y.shape}: {fix}")
    if len(y) != n:
        raise XauditError(f"calibration got {n} rows of probabilities but {len(y)} labels: pass one label per row")
    if y.dtype.kind not in "iuf":
        raise XauditError(f"labels must be integer class indices, got dtype {y.dtype}: map them to 0..{n_classes - 1}")
    if y.dtype.kind == "f":
        whole = np.isfinite(y) & (y == np.round(y))
        if not whole.all():
            i = int(np.flatnonzero(~whole)[0])
            raise XauditError(f"labels must be whole class indices, got {y[i]} (sample {i}): pass integer labels, "
                              "not scores or probabilities")
    outside = (y < 0) | (y >= n_classes)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise XauditError(f"labels must be class indices 0..{n_classes - 1}, got {y[i]:g} (sample {i}): pass labels "
                          "matching the probabilities' columns")
    return y.astype(np.int64)


def calibration_from_proba(proba: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                           n_bins: int = 15, strategy: str = "uniform") -> Calibration:
    """Calibration of N×K class probabilities (softmax outputs: rows in [0, 1] that sum to 1) against integer
    ``labels`` (15 equal-width bins, as Guo et al.). Logits, log-probabilities and NaN are refused."""
    from sklearn.calibration import calibration_curve  # deferred: importing sklearn costs ~0.5 s

    n_bins = check_binning(n_bins, strategy)
    p = _probabilities(proba)
    y = _class_indices(labels, len(p), p.shape[1])
    confidence = np.clip(p.max(1), 0.0, 1.0)
    correct = (p.argmax(1) == y).astype(np.int64)
    # pos_label given explicitly so a model that is always right (or always wrong) still gets its curve
    acc_curve, conf_curve = calibration_curve(correct, confidence, n_bins=int(n_bins), strategy=strategy,
                                              pos_label=1)
    if strategy == "quantile":
        edges = np.percentile(confidence, np.linspace(0, 100, int(n_bins) + 1))
    else:
        edges = np.linspace(0.0, 1.0, int(n_bins) + 1)
    ids = np.searchsorted(edges[1:-1], confidence)  # calibration_curve's own bin assignment
    counts = np.bincount(ids, minlength=int(n_bins))
    filled = np.flatnonzero(counts)  # calibration_curve returns the non-empty bins, in this order
    bins = tuple(ReliabilityBin(float(edges[b]), float(edges[b + 1]), int(counts[b]), float(a), float(c))
                 for b, a, c in zip(filled, acc_curve, conf_curve))
    gaps = np.array([abs(b.accuracy - b.confidence) for b in bins])
    weights = np.array([b.count for b in bins]) / len(y)
    onehot = np.eye(p.shape[1])[y]
    return Calibration(
        ece=float((weights * gaps).sum()), mce=float(gaps.max()), accuracy=float(correct.mean()),
        mean_confidence=float(confidence.mean()), brier=float(((p - onehot) ** 2).sum(1).mean()),
        nll=float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean()), n_samples=len(y),
        n_bins=int(n_bins), strategy=strategy, bins=tuple(bins))


def model_calibration(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, n_bins: int = 15,
                      strategy: str = "uniform") -> Calibration:
    """Calibration of ``model`` on ``(x, y)`` (eval mode, no autograd)."""
    from ._validate import check_inputs  # deferred: _validate imports the built-in nets

    check_binning(n_bins, strategy)
    n_outputs = check_inputs(model, x, what="the calibration data")
    _class_indices(y, len(x), n_outputs)
    return calibration_from_proba(predict_proba(model, x), y, n_bins=n_bins, strategy=strategy)
