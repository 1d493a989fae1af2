"""Kernel SHAP and Partition SHAP with batched, vectorized perturbation (no per-sample Python loop).

``shap.KernelExplainer`` builds and evaluates its synthetic rows one sample at a time in Python (shap #66,
#77, #835, #1035, #4194). Here every sample of a chunk shares one set of coalitions, masked rows are built
on the fly in batches of ``row_batch`` rows, and the regression is one batched solve. The estimators
themselves (sampling scheme, kernel weights, Owen recursion) mirror shap's; see ``_shap_estimators``.

Features: images are cut into patches of ``feature_grid = (ph, pw)`` pixels (all channels of a patch are one
feature; default: the smallest square patch giving at most 64 features, so one pixel per feature on 8×8
digits); sequences into windows of ``time_window`` steps (all features of a step together; default: at most
40 windows). An absent feature takes the background's values: ``baseline="mean"`` uses the background mean
(one row per coalition, like shap's Image masker with a constant), ``baseline="samples"`` averages the model
over every background row (shap's KernelExplainer value function; cost × background size). A feature's
value is divided evenly among its elements, so the input-shaped map sums to f(x) − v(∅) like the values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xaudit.models._errors import XauditError

from ._base import CallContext, input_kind
from ._params import is_integer, shown
from ._shap import ShapExplainer
from ._shap_estimators import (constrained_wls, grid_tree, kernel_budget, kernel_design, owen_expansions,
                               owen_known_coalitions, owen_values)

#: Default most features for images and for sequences.
MAX_IMAGE_FEATURES = 64
MAX_SEQUENCE_FEATURES = 40
_BASELINES = ("mean", "samples")


@dataclass(frozen=True)
class FeatureLayout:
    """Which feature each input element belongs to, and the feature grid (rows, cols) for the hierarchy."""

    feature_of: torch.Tensor  # per-sample shape, int64 feature ids
    grid: tuple[int, int]

    @property
    def n_features(self) -> int:
        return self.grid[0] * self.grid[1]


def feature_size(sample_shape: Sequence[int], feature_grid: tuple[int, int] | None,
                 time_window: int | None) -> tuple[int, ...]:
    """One feature's extent as used: (patch height, width) of an image, (time steps,) of a sequence; the
    automatic size where ``feature_grid`` / ``time_window`` is None."""
    if input_kind(sample_shape) == "image":
        _, h, w = sample_shape
        if feature_grid is None:
            p = next(p for p in range(1, max(h, w) + 1)
                     if math.ceil(h / p) * math.ceil(w / p) <= MAX_IMAGE_FEATURES)
            return p, p
        return tuple(feature_grid)
    return (time_window or math.ceil(sample_shape[0] / MAX_SEQUENCE_FEATURES),)


def feature_layout(sample_shape: Sequence[int], feature_grid: tuple[int, int] | None,
                   time_window: int | None) -> FeatureLayout:
    """Patches of an image (C×H×W) or time windows of a sequence (T×F) as features."""
    if input_kind(sample_shape) == "image":
        _, h, w = sample_shape
        ph, pw = feature_size(sample_shape, feature_grid, time_window)
        gh, gw = math.ceil(h / ph), math.ceil(w / pw)
        ids = (torch.arange(h)[:, None] // ph) * gw + torch.arange(w)[None, :] // pw
        return FeatureLayout(ids.expand(*sample_shape).contiguous(), (gh, gw))
    t, f = sample_shape
    (window,) = feature_size(sample_shape, feature_grid, time_window)
    ids = (torch.arange(t) // window)[:, None].expand(t, f).contiguous()
    return FeatureLayout(ids, (math.ceil(t / window), 1))


def _target_outputs(model: nn.Module, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return model(rows).gather(1, targets[:, None])[:, 0].double()


class _Coalitions:
    """Evaluates v(S) = E_b f(x_S, b_~S)[target] for coalitions of features, all samples at once."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, baseline: torch.Tensor,
                 layout: FeatureLayout, row_batch: int) -> None:
        self.model, self.x, self.targets, self.baseline = model, inputs, targets, baseline
        self.feature_of = layout.feature_of.to(inputs.device).reshape(-1)
        self.row_batch = max(1, row_batch)

    def with_ends(self, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(v(∅), f(x), v(masks)) for K×M shared coalitions, N each and N×K.

        With one reference the full coalition is x itself, so it rides in the same batches as the others
        (one model call fewer per chunk); with several, f(x) is one row, not one per reference.
        """
        m = masks.shape[1]
        ends = torch.zeros(2, m, dtype=torch.bool, device=masks.device)
        ends[1] = True
        if len(self.baseline) == 1:
            v = self(torch.cat([ends, masks]))
            return v[:, 0], v[:, 1], v[:, 2:]
        fx = torch.cat([_target_outputs(self.model, self.x[i:i + self.row_batch], self.targets[i:i + self.row_batch])
                        for i in range(0, len(self.x), self.row_batch)])
        v = self(torch.cat([ends[:1], masks]))
        return v[:, 0], fx, v[:, 1:]

    def __call__(self, masks: torch.Tensor) -> torch.Tensor:
        """v for K×M coalitions shared by all samples; returns N×K (float64)."""
        n, k = len(self.x), len(masks)
        return self._run(n * k, lambda p: p // k, lambda p: masks[p % k]).reshape(n, k)

    def pairs(self, sample: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """v for P (sample index, M-long coalition) pairs; returns P (float64)."""
        return self._run(len(sample), lambda p: sample[p], lambda p: masks[p])

    def _run(self, n_pairs: int, sample_of: Callable[[torch.Tensor], torch.Tensor],
             mask_of: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Masked rows built ``row_batch`` at a time (pair p, reference r), averaged over the references."""
        b = len(self.baseline)
        values = torch.zeros(n_pairs, dtype=torch.float64, device=self.x.device)
        flat_x, flat_b = self.x.reshape(len(self.x), -1), self.baseline.reshape(b, -1)
        for start in range(0, n_pairs * b, self.row_batch):
            row = torch.arange(start, min(start + self.row_batch, n_pairs * b), device=self.x.device)
            pair, ref = row // b, row % b
            i = sample_of(pair)
            # x·p + reference·(1 − p) with p of 0.0/1.0 is exact (x·1 + r·0 = x), and in place it took a fifth of
            # the time of torch.where on a bool mask (bool gathers and selects are slow on the CPU)
            present = mask_of(pair).to(flat_x.dtype).index_select(1, self.feature_of)
            absent = flat_b[0] if b == 1 else flat_b[ref]  # one reference broadcasts, no copy per row
            rows = flat_x.index_select(0, i).mul_(present).addcmul_(present.neg_().add_(1), absent)
            rows = rows.reshape(-1, *self.x.shape[1:])
            values.index_add_(0, pair, _target_outputs(self.model, rows, self.targets[i]) / b)
        return values

    def varying(self, n_features: int) -> torch.Tensor:
        """N×M: features where x differs from some background row (shap's ``varying_groups``, allclose)."""
        n = len(self.x)
        flat_x = self.x.reshape(n, -1)
        differs = torch.zeros_like(flat_x, dtype=torch.bool)
        for ref in self.baseline.reshape(len(self.baseline), -1):
            differs |= ~torch.isclose(flat_x, ref.expand_as(flat_x))
        per_feature = torch.zeros(n, n_features, device=self.x.device)
        per_feature.index_add_(1, self.feature_of, differs.float())
        return per_feature > 0


class _FastShap(ShapExplainer):
    """Shared configuration, feature layout and result assembly of the batched SHAP estimators."""

    uses_gradients = False
    needs_input_gradient = False
    # masked rows are built and evaluated row_batch at a time across the chunk (_Coalitions._run); chunks sized
    # by coalitions held one sample each, so Partition SHAP's rounds made model calls of a few rows: 3-12× the
    # time of its evaluations in batches (bench_explain.py)
    streams_rows = True
    groups_regions = True  # windows/segments/features of neighbouring elements: along L on N×C×L data

    def __init__(self, model: nn.Module, *, feature_grid: tuple[int, int] | None = None,
                 time_window: int | None = None, baseline: str = "mean") -> None:
        super().__init__(model)
        if feature_grid is not None:
            grid = tuple(feature_grid) if isinstance(feature_grid, (tuple, list)) else ()
            if len(grid) != 2 or not all(is_integer(g) and g >= 1 for g in grid):
                raise XauditError("feature_grid must be two positive integers (patch height, width), "
                                  f"got {shown(feature_grid)}: pass e.g. feature_grid=(2, 2)")
            feature_grid = (int(grid[0]), int(grid[1]))
        if time_window is not None and (not is_integer(time_window) or time_window < 1):
            raise XauditError(f"time_window must be a positive integer (time steps per feature), got "
                              f"{shown(time_window)}: pass e.g. time_window=4")
        if baseline not in _BASELINES:
            raise XauditError(f"baseline must be one of {', '.join(_BASELINES)}, got {shown(baseline)}")
        self.feature_grid = feature_grid
        self.time_window = None if time_window is None else int(time_window)
        self.baseline = baseline

    def get_params(self) -> dict[str, Any]:
        return {"feature_grid": self.feature_grid, "time_window": self.time_window, "baseline": self.baseline}

    def _layout(self, sample_shape: Sequence[int]) -> FeatureLayout:
        return feature_layout(sample_shape, self.feature_grid, self.time_window)

    def settings(self, sample_shape: Sequence[int]) -> dict[str, Any]:
        # the feature size as used (patch of an image, time window of a sequence) and the feature count
        shape = tuple(int(d) for d in sample_shape)
        params = self.get_params()
        size = feature_size(shape, self.feature_grid, self.time_window)
        if input_kind(shape) == "image":
            del params["time_window"]
            params["feature_grid"] = "×".join(map(str, size))
        else:
            del params["feature_grid"]
            params["time_window"] = size[0]
        params["features"] = self._layout(shape).n_features
        return params

    def _layout_for(self, sample_shape: Sequence[int] | None) -> FeatureLayout:
        """The layout for ``sample_shape``, else for the fitted background, else for an 8×8 image."""
        if sample_shape is None:
            background = getattr(self, "background_", None)
            sample_shape = (1, 8, 8) if background is None else tuple(background.shape[1:])
        return self._layout(tuple(sample_shape))

    def _references(self) -> int:
        return 1 if self.baseline == "mean" else self._n_background()

    def _coalitions(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    ctx: CallContext) -> tuple[_Coalitions, FeatureLayout]:
        background = self._background_for(inputs)
        if self.baseline == "mean":
            background = background.mean(0, keepdim=True)
        layout = self._layout(tuple(inputs.shape[1:]))
        return _Coalitions(model, inputs, targets, background, layout, ctx.row_batch), layout

    @staticmethod
    def _spread(phi: torch.Tensor, layout: FeatureLayout, inputs: torch.Tensor) -> torch.Tensor:
        ids = layout.feature_of.to(inputs.device).reshape(-1)
        size = torch.bincount(ids, minlength=layout.n_features).double()
        return (phi[:, ids] / size[ids]).reshape(inputs.shape).to(inputs.dtype)


class ShapKernel(_FastShap):
    """Kernel SHAP: Shapley values as the weighted linear regression of v(S) on coalitions under the Shapley
    kernel (Lundberg & Lee 2017, Theorem 2 / eqs. 8–9), batched over samples.

    ``nsamples`` coalitions per sample (default None: shap's "auto", 2·M + 2048; capped at 2^M − 2, where the
    result is exact). Coalitions come from ``seed`` and are shared by every sample, so results do not depend
    on batching. No L1 feature selection (shap's default since 0.47 keeps only 10 features; compare with
    ``l1_reg=False``). ``extras["base_value"]`` is v(∅).
    """

    name = "shap_kernel"
    paper = "Lundberg & Lee 2017 (Kernel SHAP, eqs. 8-9)"
    is_stochastic = True

    def __init__(self, model: nn.Module, *, nsamples: int | None = None, feature_grid: tuple[int, int] | None = None,
                 time_window: int | None = None, baseline: str = "mean") -> None:
        super().__init__(model, feature_grid=feature_grid, time_window=time_window, baseline=baseline)
        if nsamples is not None and (not is_integer(nsamples) or nsamples < 2):
            raise XauditError(f"nsamples must be an integer >= 2 (or None for 2·features + 2048), got "
                              f"{shown(nsamples)}")
        self.nsamples = None if nsamples is None else int(nsamples)

    def get_params(self) -> dict[str, Any]:
        return {"nsamples": self.nsamples, **super().get_params()}

    def settings(self, sample_shape: Sequence[int]) -> dict[str, Any]:
        params = super().settings(sample_shape)
        params["nsamples"] = kernel_budget(params["features"], self.nsamples)  # "auto" and the 2^M − 2 cap resolved
        return params

    def rows_per_sample(self, sample_shape: Sequence[int] | None = None) -> int:
        # f(x), then v(∅) and every coalition, each over the references
        budget = kernel_budget(self._layout_for(sample_shape).n_features, self.nsamples)
        return 1 + self._references() * (budget + 1)

    def expected_evals(self, sample_shape: Sequence[int] | None = None) -> tuple[float, float]:
        return float(self.rows_per_sample(sample_shape)), 0.0

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   ctx: CallContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.inference_mode():
            value, layout = self._coalitions(model, inputs, targets, ctx)
            m = layout.n_features
            design = kernel_design(m, kernel_budget(m, self.nsamples), ctx.seed)
            v0, fx, v = value.with_ends(torch.tensor(design.masks, device=inputs.device))
            phi = constrained_wls(design, v - v0[:, None], fx - v0, value.varying(m))
        return self._spread(phi, layout, inputs), {"base_value": v0.float()}


class ShapPartition(_FastShap):
    """Partition SHAP: Owen values over shap's axis-aligned hierarchy of the feature grid (shap's
    PartitionExplainer with an Image masker; Owen 1977, Lundberg & Lee 2017), all samples expanded together.

    ``max_evals`` coalitions per sample (shap's default 500, counting the empty and full ones). Like shap,
    each sample expands its highest-gain groups first; what is not expanded when the budget is spent is
    spread evenly over the group, so values always sum to f(x) − v(∅), and with enough budget (2 + 2·visits
    of the whole tree: 2,732 for 64 features) they are exact Owen values, from one streamed pass over
    coalitions shared by every sample (``owen_values``). Deterministic.
    ``extras["base_value"]`` is v(∅).
    """

    name = "shap_partition"
    paper = "Lundberg & Lee 2017; shap PartitionExplainer (Owen values, Owen 1977)"

    def __init__(self, model: nn.Module, *, max_evals: int = 500, feature_grid: tuple[int, int] | None = None,
                 time_window: int | None = None, baseline: str = "mean") -> None:
        super().__init__(model, feature_grid=feature_grid, time_window=time_window, baseline=baseline)
        if not is_integer(max_evals) or max_evals < 4:
            raise XauditError(f"max_evals must be an integer >= 4, got {shown(max_evals)}")
        self.max_evals = int(max_evals)

    def get_params(self) -> dict[str, Any]:
        return {"max_evals": self.max_evals, **super().get_params()}

    def rows_per_sample(self, sample_shape: Sequence[int] | None = None) -> int:
        # f(x), then v(∅) and two coalitions per expansion, each over the references
        expansions = owen_expansions(grid_tree(*self._layout_for(sample_shape).grid), self.max_evals)
        return 1 + self._references() * (1 + 2 * expansions)

    def expected_evals(self, sample_shape: Sequence[int] | None = None) -> tuple[float, float]:
        return float(self.rows_per_sample(sample_shape)), 0.0

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   ctx: CallContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.inference_mode():
            value, layout = self._coalitions(model, inputs, targets, ctx)
            tree = grid_tree(*layout.grid)
            expansions = owen_expansions(tree, self.max_evals)
            # the coalitions every sample evaluates whatever the values (the whole tree's, or the root's
            # halves) ride in the calls of v(∅) and f(x): one streamed pass when the budget covers the tree
            known = torch.tensor(owen_known_coalitions(tree, expansions), device=inputs.device)
            v0, fx, v = value.with_ends(known)
            phi = owen_values(tree, expansions, v0, fx, value.pairs, known=v)
        return self._spread(phi, layout, inputs), {"base_value": v0.float()}
