"""Heavy-tailed self-regularization: the power-law exponent α of each layer's weight spectrum (no data needed).

For a weight matrix W (N×M, N ≥ M after transposing) the empirical spectral density is that of the
eigenvalues of X = WᵀW / N, i.e. the squared singular values of W over N (Martin & Mahoney 2021, §"Methods").
Its tail is fitted with a continuous power law p(λ) ∝ λ^(−α) for λ ≥ λ_min by maximum likelihood — the Hill
estimator α = 1 + n / Σ ln(λ_i / λ_min) (Clauset, Shalizi & Newman 2009, eq. 3.1) — with λ_min chosen
among the eigenvalues to minimise the Kolmogorov–Smirnov distance between the tail and the fit (ibid. §3.3);
the standard error is (α − 1) / √n (ibid. eq. 3.2).

Reading α (Martin & Mahoney 2021, and the WeightWatcher conventions built on it; heuristics, not laws):
2 ≤ α ≤ 6 is typical of well-trained layers; α > 6 means little correlation was learned (the layer is close
to its random initialisation, whose Marchenko–Pastur spectrum has no heavy tail); α < 2 is very heavy
tailed, which WeightWatcher flags as possibly over-trained. Across a sweep, smaller α tracks better test
accuracy in their study.

Layout choices: a convolution's kernel (out, in, k…) is reshaped to out × (in·k…), one matrix per layer
(WeightWatcher instead slices it into one out×in matrix per kernel position; one matrix keeps every weight
of the layer in one spectrum and is well defined for 1-D and 2-D kernels alike). A recurrent layer's
stacked gate matrices (weight_ih, weight_hh) are taken as they are stored. Biases and norms are skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._errors import XauditError

#: A layer needs this many non-zero eigenvalues for a tail fit to mean anything.
MIN_EIGENVALUES = 10
#: The fitted tail keeps at least this many eigenvalues (λ_min is never above the 5th largest).
MIN_TAIL = 5


@dataclass(frozen=True)
class PowerLawFit:
    """A continuous power-law fit to a sample's tail: exponent, its standard error, λ_min, tail size, KS distance."""

    alpha: float
    alpha_se: float
    xmin: float
    n_tail: int
    ks_distance: float


def fit_power_law(values: np.ndarray | torch.Tensor, *, min_tail: int = MIN_TAIL) -> PowerLawFit:
    """Hill/MLE power-law fit with λ_min chosen by Kolmogorov–Smirnov distance (Clauset et al. 2009, §3)."""
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    x = x[np.isfinite(x) & (x > 0)]
    if len(x) < max(2, min_tail):
        raise XauditError(f"a power-law fit needs at least {max(2, min_tail)} positive values, got {len(x)}")
    logs = np.log(x)
    # suffix sums give Σ ln x over each candidate tail in O(n)
    suffix = np.cumsum(logs[::-1])[::-1]
    best: PowerLawFit | None = None
    for start in range(0, len(x) - min_tail + 1):
        if start and x[start] == x[start - 1]:
            continue  # the same λ_min as the previous candidate
        tail = x[start:]
        n = len(tail)
        denominator = suffix[start] - n * logs[start]
        if denominator <= 0:
            continue  # every tail value equals λ_min: no slope to fit
        alpha = 1.0 + n / denominator
        fitted = 1.0 - (tail / tail[0]) ** (1.0 - alpha)  # the fitted CDF at each tail value
        empirical_hi = np.arange(1, n + 1) / n
        ks = float(max(np.abs(empirical_hi - fitted).max(), np.abs(empirical_hi - 1.0 / n - fitted).max()))
        if best is None or ks < best.ks_distance:
            best = PowerLawFit(alpha=float(alpha), alpha_se=float((alpha - 1.0) / math.sqrt(n)),
                               xmin=float(tail[0]), n_tail=n, ks_distance=ks)
    if best is None:
        raise XauditError("the values have no spread to fit a power law to (all tails are constant)")
    return best


def esd(weight: torch.Tensor) -> np.ndarray:
    """Eigenvalues of WᵀW / N for a weight of any rank ≥ 2 (reshaped to out × rest), zeros dropped."""
    if weight.ndim < 2:
        raise XauditError(f"a weight spectrum needs a matrix or kernel, got shape {tuple(weight.shape)}")
    w = weight.detach().to("cpu", torch.float64).reshape(weight.shape[0], -1)
    n = max(w.shape)
    eig = torch.linalg.svdvals(w).numpy() ** 2 / n
    return np.sort(eig[eig > eig.max() * 1e-12]) if eig.max() > 0 else np.zeros(0)


def _verdict(alpha: float) -> str:
    if alpha < 2:
        return "very heavy-tailed (α < 2): possibly over-trained"
    if alpha <= 6:
        return "heavy-tailed (2 ≤ α ≤ 6): typical of a well-trained layer"
    return "light-tailed (α > 6): little correlation learned, close to random"


@dataclass(frozen=True)
class LayerSpectrum:
    """One layer's weight spectrum: shapes, eigenvalue count, largest eigenvalue, and the tail fit (if possible)."""

    layer: str
    shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    n_eigenvalues: int
    lambda_max: float
    fit: PowerLawFit | None
    note: str

    @property
    def alpha(self) -> float | None:
        return None if self.fit is None else self.fit.alpha

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "shape": list(self.shape), "matrix_shape": list(self.matrix_shape),
                "n_eigenvalues": self.n_eigenvalues, "lambda_max": self.lambda_max, "alpha": self.alpha,
                "alpha_se": None if self.fit is None else self.fit.alpha_se,
                "xmin": None if self.fit is None else self.fit.xmin,
                "n_tail": None if self.fit is None else self.fit.n_tail,
                "ks_distance": None if self.fit is None else self.fit.ks_distance, "note": self.note}


@dataclass(frozen=True)
class WeightSpectra:
    """Every weight matrix's spectrum and tail exponent, and the mean α over the layers that could be fitted."""

    layers: tuple[LayerSpectrum, ...]

    @property
    def mean_alpha(self) -> float | None:
        alphas = [layer.alpha for layer in self.layers if layer.alpha is not None]
        return float(np.mean(alphas)) if alphas else None

    @property
    def interpretation(self) -> str:
        fitted = [layer for layer in self.layers if layer.alpha is not None]
        if not fitted:
            return f"no layer has the {MIN_EIGENVALUES}+ eigenvalues a tail fit needs"
        mean = self.mean_alpha
        assert mean is not None
        return f"mean α {mean:.2f} over {len(fitted)} layer(s): {_verdict(mean)}"

    def to_json(self) -> dict[str, Any]:
        return {"layers": [layer.to_json() for layer in self.layers], "mean_alpha": self.mean_alpha,
                "interpretation": self.interpretation, "min_eigenvalues": MIN_EIGENVALUES,
                "paper": "Martin & Mahoney 2021; fit: Clauset, Shalizi & Newman 2009, eq. 3.1 and §3.3"}


def weight_spectra(model: nn.Module, *, min_eigenvalues: int = MIN_EIGENVALUES) -> WeightSpectra:
    """The tail exponent α of every weight matrix/kernel of ``model`` (parameters named ``weight*``, rank ≥ 2)."""
    layers = []
    for name, param in model.named_parameters():
        if param.ndim < 2 or not name.rsplit(".", 1)[-1].startswith("weight"):
            continue
        eig = esd(param)
        matrix = (int(param.shape[0]), int(param[0].numel()))
        if len(eig) < min_eigenvalues:
            fit, note = None, f"only {len(eig)} eigenvalues: too few for a tail fit (needs {min_eigenvalues})"
        else:
            fit = fit_power_law(eig)
            note = _verdict(fit.alpha)
        layers.append(LayerSpectrum(name, tuple(param.shape), matrix, len(eig),
                                    float(eig.max()) if len(eig) else 0.0, fit, note))
    return WeightSpectra(tuple(layers))
