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

A layer that cannot be fitted gets no α and says why, and never stops the other layers: non-finite weights
(a diverged run; no spectrum at all), fewer than ``min_eigenvalues`` non-zero eigenvalues, or a flat
spectrum (all eigenvalues equal, as for an identity-initialised recurrent layer: no tail to fit).
"""

from __future__ import annotations

import math
import operator
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
#: Eigenvalues within this relative distance of each other are one value: an SVD computes singular values to
#: about 1e-15 of the largest, so an identity matrix's 32 "equal" eigenvalues differ by rounding, and a tail
#: fitted to that rounding gets α ≈ 5.6e14. A tail whose mean ln(λ/λ_min) is below it has no slope to fit.
FLAT_TOLERANCE = 1e-9
#: Elementwise shuffles of a layer's own weights fitted for the null: a layer without learned structure fits
#: an α below all of them 1 time in SHUFFLES + 1 (exchangeability), so "heavier-tailed than shuffled" is p ≤ 0.05.
SHUFFLES = 19
#: Layers with more eigenvalues skip the shuffles (one SVD each). Measured on freshly initialised nn.Linear
#: layers, 5 seeds each: α 2.5-6.3 at 16×72, 4.0-9.5 at 32×256, 4.4-12.7 at 64×576 and 128×1152 (the heavy-tail
#: band, so small layers need the null), 7.9-13 at 256×2304 and 13-39 at 512×4608 (read as random anyway).
SHUFFLE_MAX_EIGENVALUES = 256

#: Why a layer has no α (``LayerSpectrum.reason``), in the words the notes and the interpretation use.
NON_FINITE = "non-finite weights (the model diverged)"
TOO_FEW = "too few eigenvalues for a tail fit"
FLAT = "a flat spectrum (all eigenvalues equal), which has no tail"
NO_TAIL = "no tail with a slope to fit"


@dataclass(frozen=True)
class PowerLawFit:
    """A continuous power-law fit to a sample's tail: exponent, its standard error, λ_min, tail size, KS distance."""

    alpha: float
    alpha_se: float
    xmin: float
    n_tail: int
    ks_distance: float


def _whole_number(value: object, name: str, *, at_least: int, example: str) -> int:
    """``value`` as an int if it is a whole number ≥ ``at_least`` (numpy integers too), else a one-line error."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < at_least:
        raise XauditError(f"{name} must be a whole number ≥ {at_least}, got {value!r}: pass e.g. {name}={example}")
    return number


def fit_power_law(values: np.ndarray | torch.Tensor, *, min_tail: int = MIN_TAIL) -> PowerLawFit:
    """Hill/MLE power-law fit with λ_min chosen by Kolmogorov–Smirnov distance (Clauset et al. 2009, §3).

    Non-positive values are left out (a power law lives on λ > 0); NaN or Inf is an error.
    """
    min_tail = _whole_number(min_tail, "min_tail", at_least=2, example=MIN_TAIL)
    try:
        x = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise XauditError(f"a power-law fit needs numbers, got {type(values).__name__} values that are not: pass a "
                          "1-D array of eigenvalues") from None
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise XauditError(f"{bad} of the {x.size} values {'is' if bad == 1 else 'are'} NaN/Inf: a power-law fit "
                          "needs finite values (drop them first)")
    x = np.sort(x[x > 0])
    if len(x) < min_tail:
        raise XauditError(f"a power-law fit needs at least {min_tail} positive values, got {len(x)}")
    best = _best_fit(x, min_tail)
    if best is None:
        raise XauditError(f"the values have no tail with a slope to fit a power law to: every tail of {min_tail} or "
                          f"more values is flat (equal within {FLAT_TOLERANCE:g} relative)")
    return best


def _best_fit(x: np.ndarray, min_tail: int) -> PowerLawFit | None:
    """The KS-best Hill fit over the candidate λ_min of sorted positive ``x``; None when every tail is flat."""
    if len(x) < min_tail:
        return None
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
        if denominator <= n * FLAT_TOLERANCE:
            continue  # every tail value equals λ_min up to rounding: no slope to fit
        alpha = 1.0 + n / denominator
        fitted = 1.0 - (tail / tail[0]) ** (1.0 - alpha)  # the fitted CDF at each tail value
        empirical_hi = np.arange(1, n + 1) / n
        ks = float(max(np.abs(empirical_hi - fitted).max(), np.abs(empirical_hi - 1.0 / n - fitted).max()))
        if best is None or ks < best.ks_distance:
            best = PowerLawFit(alpha=float(alpha), alpha_se=float((alpha - 1.0) / math.sqrt(n)),
                               xmin=float(tail[0]), n_tail=n, ks_distance=ks)
    return best


def esd(weight: torch.Tensor) -> np.ndarray:
    """Eigenvalues of WᵀW / N for a weight of any rank ≥ 2 (reshaped to out × rest), zeros dropped."""
    if not isinstance(weight, torch.Tensor) or weight.ndim < 2:
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise XauditError(f"a weight spectrum needs a matrix or kernel tensor, got {shape}: pass e.g. layer.weight")
    bad = int((~torch.isfinite(weight.detach())).sum()) if weight.is_floating_point() else 0
    if bad:
        raise XauditError(f"{bad} of the weight's {weight.numel()} values {'is' if bad == 1 else 'are'} NaN/Inf: a "
                          "spectrum needs finite weights (the training run that produced them diverged)")
    w = weight.detach().to("cpu", torch.float64).reshape(weight.shape[0], -1)
    n = max(w.shape)
    threads = torch.get_num_threads()
    try:
        # one thread: a 64×576 SVD takes 3 ms on one, and on two busy cores (a test run next to it) OpenMP's
        # waiting made it 1.5 s; the shuffled-weights null runs 20 of them per layer
        torch.set_num_threads(1)
        eig = torch.linalg.svdvals(w).numpy() ** 2 / n
    finally:
        torch.set_num_threads(threads)
    return np.sort(eig[eig > eig.max() * 1e-12]) if eig.max() > 0 else np.zeros(0)


def shuffled_alphas(weight: torch.Tensor, *, shuffles: int = SHUFFLES, seed: int = 0) -> np.ndarray:
    """α fitted to ``shuffles`` elementwise permutations of ``weight``: the same values without their structure,
    so the exponents a layer of this shape and weight distribution gets when it has learned no correlation."""
    flat = weight.detach().to("cpu", torch.float64).reshape(-1)
    generator = torch.Generator().manual_seed(seed)
    alphas = []
    for _ in range(shuffles):
        eig = esd(flat[torch.randperm(flat.numel(), generator=generator)].reshape(weight.shape))
        fit = _best_fit(eig, MIN_TAIL)
        if fit is not None:
            alphas.append(fit.alpha)
    return np.asarray(alphas)


def _verdict(alpha: float) -> str:
    if alpha < 2:
        return "very heavy-tailed (α < 2): possibly over-trained"
    if alpha <= 6:
        return "heavy-tailed (2 ≤ α ≤ 6): typical of a well-trained layer"
    return "light-tailed (α > 6): little correlation learned, close to random"


@dataclass(frozen=True)
class LayerSpectrum:
    """One layer's weight spectrum: shapes, eigenvalue count, largest eigenvalue, and the tail fit (if possible).

    A layer without a fit says why in ``reason`` (one of the module's NON_FINITE, TOO_FEW, FLAT, NO_TAIL) and
    in its ``note``; a layer with non-finite weights has no spectrum at all (``n_eigenvalues`` and
    ``lambda_max`` are None).
    """

    layer: str
    shape: tuple[int, ...]
    matrix_shape: tuple[int, int]
    n_eigenvalues: int | None
    lambda_max: float | None
    fit: PowerLawFit | None
    note: str
    #: (lowest, highest) α of the layer's shuffled weights; None where no null was fitted (large layers).
    shuffled_alpha: tuple[float, float] | None = None
    #: Why there is no fit (None when there is one).
    reason: str | None = None

    @property
    def alpha(self) -> float | None:
        return None if self.fit is None else self.fit.alpha

    @property
    def readable(self) -> bool:
        """Whether α says something about training: fitted, and (where the null was run) below every α of the
        layer's shuffled weights. A small layer's tail fit lands in the 2-6 band by chance (see SHUFFLES)."""
        if self.fit is None:
            return False
        return self.shuffled_alpha is None or self.fit.alpha < self.shuffled_alpha[0]

    def to_json(self) -> dict[str, Any]:
        return {"layer": self.layer, "shape": list(self.shape), "matrix_shape": list(self.matrix_shape),
                "n_eigenvalues": self.n_eigenvalues, "lambda_max": self.lambda_max, "alpha": self.alpha,
                "alpha_se": None if self.fit is None else self.fit.alpha_se,
                "xmin": None if self.fit is None else self.fit.xmin,
                "n_tail": None if self.fit is None else self.fit.n_tail,
                "ks_distance": None if self.fit is None else self.fit.ks_distance, "note": self.note,
                "shuffled_alpha": None if self.shuffled_alpha is None else list(self.shuffled_alpha),
                "readable": self.readable, "reason": self.reason}


@dataclass(frozen=True)
class WeightSpectra:
    """Every weight matrix's spectrum and tail exponent, and the mean α over the layers that could be fitted."""

    layers: tuple[LayerSpectrum, ...]
    #: The eigenvalue count below which a layer was not fitted (``weight_spectra``'s ``min_eigenvalues``).
    min_eigenvalues: int = MIN_EIGENVALUES

    @property
    def mean_alpha(self) -> float | None:
        """Mean α over the layers whose α can be read (:attr:`LayerSpectrum.readable`)."""
        alphas = [layer.alpha for layer in self.layers if layer.readable]
        return float(np.mean(alphas)) if alphas else None

    def _unfitted(self) -> str:
        """"2 layers: too few eigenvalues …; 1 layer: non-finite weights …" over the layers without a fit."""
        counts: dict[str, int] = {}
        for layer in self.layers:
            if layer.fit is None:
                reason = layer.reason or TOO_FEW
                if reason == TOO_FEW:
                    reason = f"fewer than the {self.min_eigenvalues} eigenvalues a tail fit needs"
                counts[reason] = counts.get(reason, 0) + 1
        return "; ".join(f"{n} layer{'s' if n != 1 else ''}: {reason}" for reason, n in counts.items())

    @property
    def interpretation(self) -> str:
        if not self.layers:
            return "the model has no weight matrix or kernel to take a spectrum of"
        fitted = [layer for layer in self.layers if layer.alpha is not None]
        if not fitted:
            return f"no layer could be fitted ({self._unfitted()})"
        diverged = sum(layer.reason == NON_FINITE for layer in self.layers)
        warning = (f"; {diverged} layer{'s have' if diverged != 1 else ' has'} non-finite weights (the model "
                   "diverged)" if diverged else "")
        readable = [layer for layer in fitted if layer.readable]
        if not readable:
            return (f"no layer's spectrum is heavier-tailed than its own weights shuffled ({len(fitted)} fitted): "
                    f"the exponents say nothing about training here{warning}")
        mean = self.mean_alpha
        assert mean is not None
        return f"mean α {mean:.2f} over {len(readable)} of {len(fitted)} fitted layer(s): {_verdict(mean)}{warning}"

    def to_json(self) -> dict[str, Any]:
        return {"layers": [layer.to_json() for layer in self.layers], "mean_alpha": self.mean_alpha,
                "interpretation": self.interpretation, "min_eigenvalues": self.min_eigenvalues,
                "paper": "Martin & Mahoney 2021; fit: Clauset, Shalizi & Newman 2009, eq. 3.1 and §3.3"}


def weight_spectra(model: nn.Module, *, min_eigenvalues: int = MIN_EIGENVALUES) -> WeightSpectra:
    """The tail exponent α of every weight matrix/kernel of ``model`` (parameters named ``weight*``, rank ≥ 2).

    A layer that cannot be fitted (non-finite weights, too few eigenvalues, a flat spectrum) gets no α and a
    reason; the other layers are fitted all the same.
    """
    if not isinstance(model, nn.Module):
        fix = ("wrap it, e.g. weight_spectra(nn.Linear(...)), or fit one matrix with fit_power_law(esd(w))"
               if isinstance(model, torch.Tensor) else "pass the model")
        raise XauditError(f"weight_spectra needs a torch.nn.Module, got {type(model).__name__}: {fix}")
    min_eigenvalues = _whole_number(min_eigenvalues, "min_eigenvalues", at_least=MIN_TAIL,
                                    example=MIN_EIGENVALUES)
    layers = []
    for name, param in model.named_parameters():
        if param.ndim < 2 or not name.rsplit(".", 1)[-1].startswith("weight"):
            continue
        layers.append(_layer_spectrum(name, param, min_eigenvalues))
    return WeightSpectra(tuple(layers), min_eigenvalues)


def _layer_spectrum(name: str, param: torch.Tensor, min_eigenvalues: int) -> LayerSpectrum:
    shape, matrix = tuple(param.shape), (int(param.shape[0]), int(param[0].numel()))
    bad = int((~torch.isfinite(param.detach())).sum()) if param.is_floating_point() else 0
    if bad:
        return LayerSpectrum(name, shape, matrix, None, None, None,
                             f"{bad} of its {param.numel()} weights {'is' if bad == 1 else 'are'} NaN/Inf: the model "
                             "diverged, so this layer has no spectrum", reason=NON_FINITE)
    eig = esd(param)
    lambda_max = float(eig.max()) if len(eig) else 0.0
    if len(eig) < min_eigenvalues:
        return LayerSpectrum(name, shape, matrix, len(eig), lambda_max, None,
                             f"only {len(eig)} eigenvalues: too few for a tail fit (needs {min_eigenvalues})",
                             reason=TOO_FEW)
    if eig[-1] - eig[0] <= FLAT_TOLERANCE * eig[-1]:
        return LayerSpectrum(name, shape, matrix, len(eig), lambda_max, None,
                             f"all {len(eig)} eigenvalues are equal, as for a multiple of an orthogonal matrix (e.g. "
                             "an identity-initialised recurrent layer): a flat spectrum has no tail to fit",
                             reason=FLAT)
    fit = _best_fit(eig, MIN_TAIL)
    if fit is None:
        return LayerSpectrum(name, shape, matrix, len(eig), lambda_max, None,
                             f"every tail of {MIN_TAIL} or more of its {len(eig)} eigenvalues is flat: no slope to "
                             "fit a power law to", reason=NO_TAIL)
    note, shuffled = _verdict(fit.alpha), None
    null = shuffled_alphas(param) if len(eig) <= SHUFFLE_MAX_EIGENVALUES else np.zeros(0)
    if len(null):
        shuffled = (float(null.min()), float(null.max()))
        if fit.alpha >= shuffled[0]:
            note = (f"no heavier tail than its own weights shuffled (α {fit.alpha:.2f}; shuffled "
                    f"{shuffled[0]:.2f}-{shuffled[1]:.2f}): no learned correlation shows in a spectrum this small")
    return LayerSpectrum(name, shape, matrix, len(eig), lambda_max, fit, note, shuffled)
