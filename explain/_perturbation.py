"""Occlusion through captum: the drop in the target's score when a sliding window is blanked out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from xaudit.models._errors import XauditError

from ._base import CallContext, Explainer, input_kind
from ._compat import library


class Occlusion(Explainer):
    """Attribution of a feature = mean change of the target score over the windows that blank it
    (Zeiler & Fergus 2014, sec. 4.2).

    ``window`` is the side of a square patch for images (all channels at once) or a number of time steps
    for sequences (all features at once); by default a quarter of the image's shorter side (2×2 on 8×8)
    or a tenth of the sequence (at least 2 steps). ``stride`` defaults to half the window (overlapping
    windows give smoother maps); it may not exceed the window. Forward passes only: the number of model
    evaluations per sample is the number of windows plus one for the unoccluded input.
    """

    name = "occlusion"
    paper = "Zeiler & Fergus 2014"
    uses_gradients = False
    # captum evaluates len(chunk) × perturbations_per_eval rows per pass; chunks sized by windows instead meant
    # one captum call per 5 samples on 8×8 digits, 1.9× the time of captum called once (bench_explain.py)
    streams_rows = True

    def __init__(self, model: nn.Module, *, window: int | None = None, stride: int | None = None,
                 baseline: float = 0.0) -> None:
        super().__init__(model)
        for label, value in (("window", window), ("stride", stride)):
            if value is not None and int(value) < 1:
                raise XauditError(f"occlusion {label} must be at least 1, got {value}")
        if window is not None and stride is not None and stride > window:
            raise XauditError(f"occlusion stride {stride} is larger than the window {window}: features "
                              "between windows would never be occluded; use stride <= window")
        self.window = None if window is None else int(window)
        self.stride = None if stride is None else int(stride)
        self.baseline = float(baseline)

    def get_params(self) -> dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "baseline": self.baseline}

    def geometry(self, sample_shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """captum's sliding window shape and strides for one sample of ``sample_shape``."""
        shape = tuple(int(s) for s in sample_shape)
        if input_kind(shape) == "image":
            channels, height, width = shape
            side = self.window or max(1, min(height, width) // 4)
            kh, kw = min(side, height), min(side, width)
            step = self.stride or max(1, side // 2)
            return (channels, kh, kw), (channels, min(step, kh), min(step, kw))
        steps, features = shape
        span = min(self.window or max(2, steps // 10), steps)
        return (span, features), (min(self.stride or max(1, span // 2), span), features)

    def n_windows(self, sample_shape: Sequence[int]) -> int:
        """Window positions per sample, counted as captum counts them (a last partial step included)."""
        window, strides = self.geometry(sample_shape)
        return math.prod(math.ceil((d - w) / s) + 1 for d, w, s in zip(sample_shape, window, strides))

    def rows_per_sample(self, sample_shape: Sequence[int] | None = None) -> int:
        if sample_shape is None:
            raise XauditError("occlusion's evaluation count depends on the input size: "
                              "use counts_for(sample_shape)")
        return self.n_windows(sample_shape) + 1

    def expected_evals(self, sample_shape: Sequence[int] | None = None) -> tuple[float, float]:
        return float(self.rows_per_sample(sample_shape)), 0.0

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   ctx: CallContext) -> torch.Tensor:
        window, strides = self.geometry(inputs.shape[1:])
        # each captum call evaluates len(inputs) rows per window it occludes at once
        per_eval = max(1, ctx.row_batch // len(inputs))
        Occlusion = library("captum.attr").Occlusion  # on first use: captum.attr is slow to import

        return Occlusion(model).attribute(
            inputs, sliding_window_shapes=window, strides=strides, baselines=self.baseline,
            target=targets, perturbations_per_eval=per_eval)
