"""Calibration of a classifier's confidence: expected calibration error and the reliability diagram.

Confidence is the top-class probability and a prediction is "correct" when its top class is the label
(Guo, Pleiss, Sun & Weinberger 2017, §2). The reliability curve comes from
``sklearn.calibration.calibration_curve`` on (correct, confidence); the bin counts it does not return are
computed with the same bin edges, so ECE = Σ_b (n_b / N)·|acc_b − conf_b| (Guo et al. 2017, eq. 3) uses
exactly the plotted bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._errors import XauditError
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


def calibration_from_proba(proba: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, *,
                           n_bins: int = 15, strategy: str = "uniform") -> Calibration:
    """Calibration of N×K class probabilities against integer ``labels`` (15 equal-width bins, as Guo et al.)."""
    from sklearn.calibration import calibration_curve  # deferred: importing sklearn costs ~0.5 s

    p = np.asarray(proba.detach().cpu() if isinstance(proba, torch.Tensor) else proba, dtype=np.float64)
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    if p.ndim != 2 or len(p) != len(y) or not len(p):
        raise XauditError(f"calibration needs N×K probabilities and N labels, got {p.shape} and {y.shape}")
    if int(n_bins) < 1:
        raise XauditError(f"n_bins must be at least 1, got {n_bins}: pass e.g. n_bins=15")
    if strategy not in STRATEGIES:
        from ._errors import did_you_mean

        raise did_you_mean("binning strategy", strategy, STRATEGIES)
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise XauditError(f"labels must be class indices 0..{p.shape[1] - 1}, got values up to {int(y.max())}")
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
    return calibration_from_proba(predict_proba(model, x), y, n_bins=n_bins, strategy=strategy)
