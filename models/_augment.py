"""Label-preserving data augmentations for image (N×C×H×W) and sequence (N×T×F) batches.

Each augmentation is vectorized over the batch and draws all randomness from the ``torch.Generator`` it is
given, so a training run is reproducible under a seed. ``strength`` scales the default magnitude; 0 returns
the batch unchanged. The sequence set follows Um et al. 2017 (jitter, scaling, time warping).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F

from ._errors import XauditError

_NDIM = {"image": 4, "sequence": 3}
_LAYOUT = {"image": "N×C×H×W", "sequence": "N×T×F"}


@dataclass(frozen=True)
class Augmentation:
    """A random, label-preserving transform of a batch.

    ``magnitude`` is the default size of the effect in ``unit``; ``kind`` is ``"image"``, ``"sequence"``
    or ``"any"``.
    """

    name: str
    kind: str
    magnitude: float
    unit: str

    def __call__(
        self, x: torch.Tensor, strength: float = 1.0, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Augment batch ``x`` with the effect scaled by ``strength`` (may return ``x`` itself when it is 0)."""
        if strength < 0 or not math.isfinite(strength):
            raise XauditError(f"augmentation strength must be ≥ 0, got {strength}: pass e.g. strength=1.0")
        if self.kind != "any" and x.ndim != _NDIM[self.kind]:
            raise XauditError(
                f"augmentation {self.name!r} is for {self.kind} batches ({_LAYOUT[self.kind]}) but got shape "
                f"{tuple(x.shape)}: pick a {_other(self.kind)} augmentation or none"
            )
        if strength == 0 or len(x) == 0:
            return x
        return self._apply(x, self.magnitude * strength, generator)

    def _apply(self, x: torch.Tensor, magnitude: float, generator: torch.Generator | None) -> torch.Tensor:
        return x


def _other(kind: str) -> str:
    return "sequence" if kind == "image" else "image"


def _uniform(n: int, low: float, high: float, g: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    # drawn on the CPU generator, then moved: the stream is then the same whatever device x lives on
    return (torch.rand(n, generator=g) * (high - low) + low).to(like.device, like.dtype)


def _randint(n: int, low: int, high: int, g: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Integers in [low, high] inclusive."""
    return torch.randint(low, high + 1, (n,), generator=g).to(like.device)


def _randn(shape: tuple[int, ...], g: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=g).to(like.device, like.dtype)


@dataclass(frozen=True)
class _Shift(Augmentation):
    """Translate each image by a random whole number of pixels in each axis, filling with zeros."""

    def _apply(self, x: torch.Tensor, magnitude: float, generator: torch.Generator | None) -> torch.Tensor:
        n, c, h, w = x.shape
        m = max(1, round(magnitude * min(h, w)))
        dy, dx = _randint(n, -m, m, generator, x), _randint(n, -m, m, generator, x)
        padded = F.pad(x, (m, m, m, m))
        rows = torch.arange(h, device=x.device)[None, :] + m - dy[:, None]  # N×H
        cols = torch.arange(w, device=x.device)[None, :] + m - dx[:, None]  # N×W
        batch = torch.arange(n, device=x.device)[:, None, None]
        # advanced indexing gathers every sample's own window at once → N×H×W×C
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()


@dataclass(frozen=True)
class _Rotation(Augmentation):
    """Rotate each image about its centre by a random angle in ±magnitude degrees (bilinear, zero fill)."""

    def _apply(self, x: torch.Tensor, magnitude: float, generator: torch.Generator | None) -> torch.Tensor:
        angle = _uniform(len(x), -magnitude, magnitude, generator, x) * (math.pi / 180)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass(frozen=True)
class _Noise(Augmentation):
    """Add i.i.d. Gaussian noise with standard deviation ``magnitude`` (in the data's units)."""

    def _apply(self, x: torch.Tensor, magnitude: float, generator: torch.Generator | None) -> torch.Tensor:
        return x + magnitude * _randn(tuple(x.shape), generator, x)


@dataclass(frozen=True)
class _Cutout(Augmentation):
    """Zero one random square per image, ``magnitude`` of the shorter side wide (DeVries & Taylor 2017)."""

    def _apply(self, x: torch.Tensor, magnitude: float, generator: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = x.shape
        size = max(1, round(magnitude * min(h, w)))
        # the square's centre may sit anywhere in the image, so it is sometimes clipped by the border
        cy, cx = _randint(n, 0, h - 1, generator, x), _randint(n, 0, w - 1, generator, x)
        top, left = cy - size // 2, cx - size // 2
        ys = torch.arange(h, device=x.device)[None, :]
        xs = torch.arange(w, device=x.device)[None, :]
        in_rows = (ys >= top[:, None]) & (ys < top[:, None] + size)  # N×H
        in_cols = (xs >= left[:, None]) & (xs < left[:, None] + size)  # N×W
        keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
        return x * keep[:, None].to(x.dtype)


@dataclass(frozen=True)
class _Scaling(Augmentation):
    """Multiply each sample's features by random factors drawn from N(1, magnitude²), constant over time."""

    def _apply(self, x: torch.Tensor, magnitude: float, generator: torch.Generator | None) -> torch.Tensor:
        n, _, f = x.shape
        return x * (1 + magnitude * _randn((n, 1, f), generator, x))


@dataclass(frozen=True)
class _TimeShift(Augmentation):
    """Roll each sequence circularly by a random number of steps, up to ``magnitude`` of its length.

    Circular rather than zero-padded: MNIST-1D's own generator translates signals with a roll, and zero is
    not "no signal" for data that isn't centred.
    """

    def _apply(self, x: torch.Tensor, magnitude: float, generator: torch.Generator | None) -> torch.Tensor:
        n, t, _ = x.shape
        m = max(1, round(magnitude * t))
        shift = _randint(n, -m, m, generator, x)
        index = (torch.arange(t, device=x.device)[None, :] - shift[:, None]) % t  # N×T
        return x.gather(1, index[:, :, None].expand_as(x))


@dataclass(frozen=True)
class _TimeWarp(Augmentation):
    """Resample each sequence along a smooth random time warp (Um et al. 2017).

    The local playback speed is a piecewise-linear curve through 4 knots drawn from N(1, magnitude²); its
    running sum, rescaled to the sequence's span, says which (fractional) step each output step reads.
    """

    knots: int = 4

    def _apply(self, x: torch.Tensor, magnitude: float, generator: torch.Generator | None) -> torch.Tensor:
        n, t, _ = x.shape
        if t < 2:
            return x
        speed = (1 + magnitude * _randn((n, 1, self.knots + 2), generator, x)).clamp_min(0.1)
        speed = F.interpolate(speed, size=t, mode="linear", align_corners=True)[:, 0]  # N×T
        pos = speed.cumsum(1)
        pos = (pos - pos[:, :1]) / (pos[:, -1:] - pos[:, :1]) * (t - 1)  # first step → 0, last → t-1
        lo = pos.floor().long().clamp(0, t - 2)
        frac = (pos - lo).unsqueeze(-1)
        idx = lo.unsqueeze(-1).expand_as(x)
        return x.gather(1, idx) * (1 - frac) + x.gather(1, idx + 1) * frac


def _registry(*augmentations: Augmentation) -> Mapping[str, Augmentation]:
    return MappingProxyType({a.name: a for a in augmentations})


AUGMENTATIONS: Mapping[str, Augmentation] = _registry(
    Augmentation("none", "any", 0.0, "-"),
    _Shift("shift", "image", 1 / 8, "fraction of the shorter side (at least 1 px)"),
    _Rotation("rotation", "image", 15.0, "degrees"),
    _Noise("noise", "image", 0.05, "standard deviation"),
    _Cutout("cutout", "image", 1 / 4, "fraction of the shorter side"),
    _Noise("jitter", "sequence", 0.05, "standard deviation"),
    _Scaling("scaling", "sequence", 0.1, "standard deviation of the factor"),
    _TimeShift("time_shift", "sequence", 1 / 10, "fraction of the length (at least 1 step)"),
    _TimeWarp("time_warp", "sequence", 0.2, "standard deviation of the speed"),
)
"""Every augmentation by name: the single source of truth for training configs, the CLI and the tests."""
