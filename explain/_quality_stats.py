"""The numbers quality metrics compare maps with: relevance maps, row-wise Spearman correlation, and SSIM.

A *relevance map* is what a metric ranks. For images (N×C×H×W) it is one value per pixel: the channel sum
of the attributions (``signed``) or of their absolute values; a pixel is removed or compared as a whole.
For sequences (N×T×F) it is every time step × feature element on its own. Maps come back flattened to
N×D together with their 2-D shape (H×W or T×F), which SSIM needs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from xaudit.models._errors import XauditError

#: SSIM constants of Wang et al. 2004 (K1 = 0.01, K2 = 0.03) for maps scaled to [0, 1].
_SSIM_C1 = 0.01**2
_SSIM_C2 = 0.03**2


def relevance_map(attributions: torch.Tensor, *, absolute: bool) -> tuple[torch.Tensor, tuple[int, int]]:
    """Per-feature relevance, flattened to N×D, and the 2-D shape of one map (H×W or T×F)."""
    a = attributions.detach().to("cpu", torch.float64)
    if absolute:
        a = a.abs()
    if a.dim() == 4:
        a = a.sum(1)  # one value per pixel: channels of a pixel are removed together
    elif a.dim() != 3:
        raise XauditError(f"attributions of shape {tuple(attributions.shape)} are neither images (N×C×H×W) "
                          "nor sequences (N×T×F): reshape them to one of those layouts")
    return a.reshape(len(a), -1), (int(a.shape[1]), int(a.shape[2]))


def spearman_rows(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Spearman rank correlation of each row of ``a`` with the same row of ``b`` (ties get average ranks).

    A constant row has no ranking, so it shares none with anything: its correlation is defined as 0
    rather than NaN, which keeps the mean over samples finite (a dead, all-zero map scores 0).
    """
    from scipy.stats import rankdata  # on first use: scipy.stats is slow to import

    ra = rankdata(np.asarray(a, dtype=np.float64), axis=1)
    rb = rankdata(np.asarray(b, dtype=np.float64), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    denom = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    num = (ra * rb).sum(1)
    return np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _odd_at_most(limit: int, size: int) -> int:
    n = min(limit, size)
    return n if n % 2 else max(n - 1, 1)


def ssim_maps(a: torch.Tensor, b: torch.Tensor, shape: tuple[int, int], *, window: int = 11,
              sigma: float = 1.5) -> np.ndarray:
    """Mean SSIM (Wang et al. 2004, eq. 13) of each pair of non-negative maps, after scaling each to [0, 1].

    ``a`` and ``b`` are N×D flattened maps of 2-D ``shape``. The Gaussian window (σ = 1.5, as in the paper)
    is cut to the map where the map is smaller than 11 along an axis, so a T×1 sequence map gets the 1-D
    SSIM over time. Valid convolution only (no padding), like scikit-image. Dividing by each map's own
    maximum compares where the relevance is, not its scale (Adebayo et al. 2018 normalise the same way).
    """
    h, w = shape
    x = torch.as_tensor(a, dtype=torch.float64).reshape(-1, 1, h, w)
    y = torch.as_tensor(b, dtype=torch.float64).reshape(-1, 1, h, w)
    x = x / x.amax((2, 3), keepdim=True).clamp_min(1e-12)
    y = y / y.amax((2, 3), keepdim=True).clamp_min(1e-12)
    kh, kw = _odd_at_most(window, h), _odd_at_most(window, w)
    kernel = torch.outer(_gaussian_window(kh, sigma), _gaussian_window(kw, sigma))[None, None]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx**2
    syy = blur(y * y) - my**2
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + _SSIM_C1) * (2 * sxy + _SSIM_C2)) / ((mx**2 + my**2 + _SSIM_C1) * (sxx + syy + _SSIM_C2))
    return s.mean((1, 2, 3)).numpy()


def mean_finite(values: np.ndarray | list[float]) -> float:
    """Mean of the finite entries (NaN when there are none)."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan
