"""LIME: a locally weighted linear model over binary segment masks (Ribeiro, Singh & Guestrin 2016, eq. 1-2).

lime_image loops in Python over its perturbations and calls the model in batches of 10 (~150 ms per 8×8
digit at 1000 samples, FIELD_NOTES). Here the perturbations are built with tensor ops and evaluated in
model calls of ``ctx.row_batch`` rows filled across the samples of a chunk; the statistics stay lime's: the
same sampling distribution (each segment kept with probability 1/2, the first row the unperturbed input),
the same cosine distance to the all-ones row, the same exponential kernel ``sqrt(exp(-d²/w²))`` and the same
weighted ``Ridge(alpha=1)``. When the feature selection keeps every segment (the default) the ridge is
solved here in closed form, equal to sklearn's to 1e-6 (tested) and batched over samples; a selection that
drops segments calls ``lime.lime_base.LimeBase`` itself.
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from threadpoolctl import ThreadpoolController
from torch import nn

from xaudit.models._errors import XauditError, did_you_mean
from xaudit.models._outputs import to_probabilities

from ._base import CallContext, Explainer, input_kind
from ._params import shown

IMAGE_SEGMENTATIONS = ("grid", "quickshift", "slic", "felzenszwalb")
SEQUENCE_FEATURES = ("time", "feature", "time_x_feature")
FEATURE_SELECTIONS = ("auto", "none", "highest_weights", "forward_selection", "lasso_path")
#: The default grid has at most this many cells (one pixel per cell on 8×8 digits).
MAX_GRID_SEGMENTS = 64
#: The default time windows number at most this many.
MAX_TIME_WINDOWS = 40
#: Most perturbed rows per model call on CPU, below the memory budget's cap. On the digits CNN (2-core EPYC, 1 MiB
#: L2 per core) 512-row calls took 3.5 or 8 ms per 1000 rows from one process to the next and 256-row calls
#: a steady 3.7-4.5 ms (a 512-row layer output is 2 MiB); a GRU loses ~15% at 2 threads. Measured in
#: tests/benchmarks/bench_lime.py.
ROWS_PER_CALL = 256
#: Samples per batched ridge solve.
_RIDGE_GROUP = 16
#: lime's SegmentationAlgorithm defaults for quickshift; slic asks for as many segments as the default grid.
_SKIMAGE_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "quickshift": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
    "slic": {"n_segments": MAX_GRID_SEGMENTS, "start_label": 0},
    "felzenszwalb": {},
}


# --------------------------------------------------------------------------------------- lime's statistics


def sample_seed(seed: int) -> int:
    """Seed of every sample's perturbation generator in a call with ``seed``: the seed itself, in the 32 bits
    ``np.random.RandomState`` (lime's generator) takes.

    The same for every sample, not keyed on its position or its values: a sample gets the same perturbations
    whatever batch or chunk it is explained in (lime's own ``random_seed`` only seeds segmentation, lime #477,
    #683), and a slightly perturbed input gets the masks its original got, so max-sensitivity measures LIME,
    not a new draw (keyed on the values, any change drew anew).
    """
    return int(seed) % 2**32


def lime_masks(rng: np.random.RandomState, num_samples: int, n_features: int) -> np.ndarray:
    """Binary keep-masks (num_samples × n_features), drawn as lime_image's ``data_labels`` draws them."""
    data = rng.randint(0, 2, num_samples * n_features).reshape((num_samples, n_features))
    data[0, :] = 1
    return data


def cosine_distance_to_original(masks: np.ndarray) -> np.ndarray:
    """Cosine distance of each mask row to the all-ones row (lime_image's ``distance_metric='cosine'``).

    For a row with m ones among k features the cosine similarity is m / sqrt(m k); sklearn gives an
    all-zero row similarity 0, so distance 1, which this closed form also yields.
    """
    return 1.0 - np.sqrt(masks.sum(axis=-1) / masks.shape[-1])


def exponential_kernel(distances: np.ndarray, kernel_width: float) -> np.ndarray:
    """lime's default proximity kernel, ``sqrt(exp(-d² / w²))``."""
    return np.sqrt(np.exp(-(distances**2) / kernel_width**2))


def weighted_ridge(data: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                   alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coef, intercept, weighted R²) of ``Ridge(alpha, fit_intercept=True).fit(data, labels, weights)``.

    Batched over any leading dimensions (``data``: ...×S×k). Solves the same normal equations as sklearn's
    cholesky solver: centre by the weighted means, then ``(Xᵀ W X + αI) β = Xᵀ W y``.
    """
    x = np.asarray(data, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    w_sum = w.sum(axis=-1, keepdims=True)
    x_mean = (w[..., None, :] @ x)[..., 0, :] / w_sum
    y_mean = (w * y).sum(axis=-1, keepdims=True) / w_sum
    xc = x - x_mean[..., None, :]
    yc = y - y_mean
    xc_t_w = np.swapaxes(xc, -1, -2) * w[..., None, :]
    gram = xc_t_w @ xc + alpha * np.eye(x.shape[-1])
    coef = np.linalg.solve(gram, xc_t_w @ yc[..., None])[..., 0]
    intercept = y_mean[..., 0] - (x_mean * coef).sum(axis=-1)
    # lime reports sklearn's weighted R² (r2_score with force_finite: a constant target scores 1 if fit exactly)
    resid = (w * (yc - (xc @ coef[..., None])[..., 0]) ** 2).sum(axis=-1)
    total = (w * yc**2).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(total > 0, 1.0 - resid / total, np.where(resid > 0, 0.0, 1.0))
    return coef, intercept, r2


@functools.lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    # built on first use, not at import: it scans the loaded libraries
    return ThreadpoolController()


# ------------------------------------------------------------------------------------------- segments


def grid_cell(height: int, width: int, cell: int | None) -> int:
    """``cell``, or when None the smallest square side giving at most 64 cells."""
    if cell is None:
        cell = 1
        while math.ceil(height / cell) * math.ceil(width / cell) > MAX_GRID_SEGMENTS:
            cell += 1
    return cell


def time_window(steps: int, window: int | None) -> int:
    """``window``, or when None the shortest window giving at most 40 windows."""
    return math.ceil(steps / MAX_TIME_WINDOWS) if window is None else window


def grid_segments(height: int, width: int, cell: int | None) -> np.ndarray:
    """Square superpixels of side ``cell`` (None: the smallest side giving at most 64 cells), H×W labels."""
    cell = grid_cell(height, width, cell)
    rows = np.arange(height)[:, None] // cell
    cols = np.arange(width)[None, :] // cell
    return rows * math.ceil(width / cell) + cols


def skimage_segments(image: np.ndarray, method: str, params: Mapping[str, Any], seed: int) -> np.ndarray:
    """Superpixels of a C×H×W image from scikit-image (installed with lime), H×W labels."""
    from skimage import segmentation
    from skimage.color import gray2rgb

    channels = image.shape[0]
    hwc = np.moveaxis(image.astype(np.float64), 0, -1)
    kwargs = {**_SKIMAGE_DEFAULTS[method], **params}
    if method == "quickshift":
        # quickshift's colour-space conversion needs RGB: grey images go through gray2rgb as in lime_image
        if channels == 1:
            hwc = gray2rgb(hwc[..., 0])
        elif channels != 3:
            kwargs.setdefault("convert2lab", False)
        return segmentation.quickshift(hwc, rng=seed % 2**31, **kwargs)  # its rng is a C int
    fn = segmentation.slic if method == "slic" else segmentation.felzenszwalb
    if channels == 1:
        return fn(hwc[..., 0], channel_axis=None, **kwargs)
    return fn(hwc, channel_axis=-1, **kwargs)


def sequence_segments(steps: int, n_features: int, features: str, window: int | None) -> np.ndarray:
    """T×F labels: time windows across all features, whole features, or windows of single features."""
    window = time_window(steps, window)
    t = np.arange(steps)[:, None] // window
    f = np.arange(n_features)[None, :]
    if features == "time":
        return np.broadcast_to(t, (steps, n_features))
    if features == "feature":
        return np.broadcast_to(f, (steps, n_features))
    return t * n_features + f


# -------------------------------------------------------------------------------------------- explainer


class Lime(Explainer):
    """LIME: the weights of a proximity-weighted linear fit to the target's probability under segment masking.

    Ribeiro, Singh & Guestrin 2016, eq. 1-2 and Algorithm 1, with lime_image's kernel, distance and ridge.

    Features are segments, and each input element receives its segment's weight (lime's and captum's
    convention, so a segment's pixels rank together). The model explained is ``softmax(logits)[target]``
    (the output itself for a model that returns probabilities): lime explains class probabilities. Extras:
    the local model's ``intercept`` and weighted ``local_r2``.

    Images (C×H×W): ``segmentation="grid"`` (default) uses square cells of side ``segment_size`` (None: the
    smallest giving ≤ 64 cells, one pixel each on 8×8 digits); ``"quickshift"``, ``"slic"`` and
    ``"felzenszwalb"`` use scikit-image, with ``segmentation_params`` overriding its arguments. Segments span
    all channels. Sequences (T×F): ``features="time"`` (default) masks windows of ``segment_size`` time steps
    across all features (None: at most 40 windows); ``"feature"`` masks one feature over all time steps;
    ``"time_x_feature"`` masks one feature within one window.

    ``hide_color`` is the value a masked element takes; None is lime_image's default, each segment's
    per-channel mean. Our default is 0.0 because with one-pixel segments the segment mean *is* the pixel,
    and nothing would be masked. ``num_features`` (None: all) and ``feature_selection`` are lime's; segments
    not selected get 0.

    Every sample's perturbations come from a generator seeded by the call's seed (:func:`sample_seed`), so
    results are reproducible and do not depend on the batch a sample is in (``batch_invariant``);
    ``seed=None`` draws fresh perturbations.
    """

    name = "lime"
    family = "lime"
    paper = "Ribeiro, Singh & Guestrin 2016"
    uses_gradients = False
    needs_input_gradient = False
    is_stochastic = True
    batch_invariant = True
    # perturbed rows fill model calls across the samples of a chunk (``_masked_probabilities``)
    streams_rows = True
    groups_regions = True  # windows/segments/features of neighbouring elements: along L on N×C×L data

    def __init__(self, model: nn.Module, *, num_samples: int = 1000, kernel_width: float = 0.25,
                 hide_color: float | None = 0.0, segmentation: str = "grid", features: str = "time",
                 segment_size: int | None = None, segmentation_params: Mapping[str, Any] | None = None,
                 feature_selection: str = "auto", num_features: int | None = None) -> None:
        super().__init__(model)
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 2:
            raise XauditError(f"num_samples must be an integer of at least 2, got {shown(num_samples)}: "
                              "pass e.g. num_samples=1000")
        if not _is_real(kernel_width) or not math.isfinite(kernel_width) or kernel_width <= 0:
            raise XauditError(f"kernel_width must be a positive number, got {shown(kernel_width)}: "
                              "lime's default is 0.25")
        if hide_color is not None and (not _is_real(hide_color) or not math.isfinite(hide_color)):
            raise XauditError(f"hide_color must be a finite number or None (segment mean), got {shown(hide_color)}")
        if segmentation not in IMAGE_SEGMENTATIONS:
            raise did_you_mean("image segmentation", segmentation, IMAGE_SEGMENTATIONS)
        if features not in SEQUENCE_FEATURES:
            raise did_you_mean("sequence features", features, SEQUENCE_FEATURES)
        if feature_selection not in FEATURE_SELECTIONS:
            raise did_you_mean("feature selection", feature_selection, FEATURE_SELECTIONS)
        for label, value in (("segment_size", segment_size), ("num_features", num_features)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or value < 1):
                raise XauditError(f"{label} must be a positive integer or None, got {shown(value)}")
        if segmentation_params is not None and not isinstance(segmentation_params, Mapping):
            raise XauditError(f"segmentation_params must be a dict of scikit-image arguments, "
                              f"got {type(segmentation_params).__name__}")
        if segmentation_params and segmentation == "grid":
            raise XauditError("segmentation_params apply to quickshift, slic and felzenszwalb: "
                              "set the grid's cell side with segment_size instead")
        self.num_samples = int(num_samples)
        self.kernel_width = float(kernel_width)
        self.hide_color = None if hide_color is None else float(hide_color)
        self.segmentation = segmentation
        self.features = features
        self.segment_size = None if segment_size is None else int(segment_size)
        self.segmentation_params = dict(segmentation_params or {})
        self.feature_selection = feature_selection
        self.num_features = None if num_features is None else int(num_features)

    def get_params(self) -> dict[str, Any]:
        return {"num_samples": self.num_samples, "kernel_width": self.kernel_width, "hide_color": self.hide_color,
                "segmentation": self.segmentation, "features": self.features, "segment_size": self.segment_size,
                "segmentation_params": dict(self.segmentation_params),
                "feature_selection": self.feature_selection, "num_features": self.num_features}

    def settings(self, sample_shape: Sequence[int]) -> dict[str, Any]:
        params = self.get_params()
        shape = tuple(int(d) for d in sample_shape)
        if input_kind(shape) == "image":
            del params["features"]
            if self.segmentation == "grid":
                params["segment_size"] = grid_cell(shape[1], shape[2], self.segment_size)
                del params["segmentation_params"]
            else:
                del params["segment_size"]
        else:
            del params["segmentation"], params["segmentation_params"]
            if self.features == "feature":
                del params["segment_size"]
            else:
                params["segment_size"] = time_window(shape[0], self.segment_size)
        if params.get("num_features") is None:
            params["num_features"] = "all"
        return params

    def _prepare(self, sample: torch.Tensor) -> None:
        _blas_controller()  # threadpoolctl inspects the loaded BLAS libraries once
        if input_kind(sample.shape[1:]) == "image" and self.segmentation != "grid":
            importlib.import_module("skimage.segmentation")  # scikit-image's import is setup, not the call's cost
        if self.feature_selection == "lasso_path" or (self.feature_selection != "none"
                                                       and self.num_features is not None):
            importlib.import_module("lime.lime_base")  # imports scikit-learn

    def rows_per_sample(self) -> int:
        return self.num_samples

    def expected_evals(self) -> tuple[float, float]:
        # the first mask row is the unperturbed input, so num_samples rows in all, as in lime_image
        return float(self.num_samples), 0.0

    # -- segments and masked values -------------------------------------------------------------------------

    def segments(self, sample: torch.Tensor, seed: int) -> np.ndarray:
        """Segment label of every element of one sample (its shape), labels 0..k-1."""
        x = sample.detach().to("cpu", torch.float32).numpy()
        if input_kind(x.shape) == "sequence":
            labels = sequence_segments(*x.shape, self.features, self.segment_size)
        else:
            if self.segmentation == "grid":
                plane = grid_segments(x.shape[1], x.shape[2], self.segment_size)
            else:
                plane = skimage_segments(x, self.segmentation, self.segmentation_params, seed)
                if len(np.unique(plane)) < 2:
                    # lime's quickshift defaults (max_dist=200) merge any small image into one segment
                    raise XauditError(
                        f"{self.segmentation} found a single segment in a {x.shape[1]}×{x.shape[2]} image: pass "
                        "segmentation_params for finer segments (e.g. quickshift max_dist=4, kernel_size=2) "
                        "or use segmentation='grid'")
            labels = np.broadcast_to(plane, x.shape)
        # contiguous labels: slic counts from 1, and lime_image would silently never mask the last one
        return np.unique(labels, return_inverse=True)[1].reshape(x.shape)

    def _hidden_values(self, sample: torch.Tensor, segments: torch.Tensor, n_segments: int) -> torch.Tensor:
        """What a masked element becomes: ``hide_color``, or its segment's mean in its own channel."""
        if self.hide_color is not None:
            return torch.full_like(sample, self.hide_color)
        # channel = image channel (dim 0 of C×H×W) or sequence feature (dim 1 of T×F), as lime's colour mean
        channel_dim = 0 if sample.dim() == 3 else 1
        channel = torch.arange(sample.shape[channel_dim], device=sample.device)
        channel = channel.view([-1 if d == channel_dim else 1 for d in range(sample.dim())]).expand_as(sample)
        key = (segments * sample.shape[channel_dim] + channel).reshape(-1)
        size = n_segments * sample.shape[channel_dim]
        counts = torch.bincount(key, minlength=size)
        if int(counts.max()) == 1:
            raise XauditError("hide_color=None masks each segment with its own mean, which changes nothing when "
                              "every segment is a single element: pass hide_color=0.0 or a larger segment_size")
        sums = torch.zeros(size, dtype=sample.dtype, device=sample.device).index_add_(0, key, sample.reshape(-1))
        return (sums / counts.clamp(min=1).to(sample.dtype))[key].view_as(sample)

    # -- the explanation ------------------------------------------------------------------------------------

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   ctx: CallContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        samples = []
        for sample in inputs:
            # seed=None: fresh perturbations from the caller's global numpy generator
            seed = (sample_seed(ctx.seed) if ctx.seed is not None
                    else int(np.random.randint(0, 2**32, dtype=np.int64)))
            segments = self.segments(sample, seed)
            masks = lime_masks(np.random.RandomState(seed), self.num_samples, int(segments.max()) + 1)
            samples.append((seed, segments, masks.astype(bool)))
        rows_per_call = min(ctx.row_batch, ROWS_PER_CALL) if ctx.device.type == "cpu" else ctx.row_batch
        probs = self._masked_probabilities(model, inputs, targets, samples, rows_per_call)
        # one BLAS thread limit for the whole chunk: a 1000×64 solve gains nothing from BLAS threads, on a busy
        # machine they cost 50× (measured), and entering the limit once per sample was ~10% of lime's time
        with _blas_controller().limit(limits=1, user_api="blas"):
            fits = self._fit_all(samples, probs)
        attributions = torch.empty_like(inputs)
        for i, ((_, segments, _), (coef, _, _)) in enumerate(zip(samples, fits)):
            seg = torch.from_numpy(segments).to(inputs.device)
            attributions[i] = torch.from_numpy(coef).to(inputs.device, inputs.dtype)[seg]
        return attributions, {"intercept": torch.tensor([f[1] for f in fits], dtype=torch.float64),
                              "local_r2": torch.tensor([f[2] for f in fits], dtype=torch.float64)}

    def _masked_probabilities(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                              samples: list[tuple[int, np.ndarray, np.ndarray]], row_batch: int) -> list[np.ndarray]:
        """Target-class probability of every masked copy of every sample, in model calls of ``row_batch`` rows
        filled across samples (a sample's rows may span two calls)."""
        out = [np.empty(len(masks)) for _, _, masks in samples]
        pending: list[tuple[torch.Tensor, int, int, int]] = []  # (rows, sample, first mask row, count)

        def flush() -> None:
            if not pending:
                return
            owner = torch.cat([torch.full((n,), i, device=inputs.device) for _, i, _, n in pending])
            p = to_probabilities(self.model, model(torch.cat([r for r, *_ in pending])))
            p = p.gather(1, targets[owner][:, None])[:, 0].to("cpu", torch.float64).numpy()
            at = 0
            for _, i, first, n in pending:
                out[i][first:first + n] = p[at:at + n]
                at += n
            pending.clear()

        filled = 0
        with torch.no_grad():
            for i, (_, segments, masks) in enumerate(samples):
                sample = inputs[i].detach()
                seg = torch.from_numpy(segments).to(sample.device)
                hidden = self._hidden_values(sample, seg, masks.shape[1])
                keep_all = torch.from_numpy(masks).to(sample.device)
                first = 0
                while first < len(masks):
                    n = min(row_batch - filled, len(masks) - first)
                    # indexing a mask row by the element→segment map is the mask @ segment-indicator product
                    pending.append((torch.where(keep_all[first:first + n][:, seg], sample, hidden), i, first, n))
                    filled, first = filled + n, first + n
                    if filled == row_batch:
                        flush()
                        filled = 0
            flush()
        return out

    def _keeps_all(self, n_segments: int) -> bool:
        return self.feature_selection == "none" or (
            self.feature_selection != "lasso_path" and (self.num_features is None or self.num_features >= n_segments))

    def _fit_all(self, samples: list[tuple[int, np.ndarray, np.ndarray]],
                 probs: list[np.ndarray]) -> list[tuple[np.ndarray, float, float]]:
        """lime's weighted ridge per sample: closed form, batched over samples with the same segment count,
        when every segment is kept; otherwise lime's own LimeBase."""
        fits: list[tuple[np.ndarray, float, float] | None] = [None] * len(samples)
        groups: dict[int, list[int]] = {}
        for i, (seed, _, masks) in enumerate(samples):
            if self._keeps_all(masks.shape[1]):
                groups.setdefault(masks.shape[1], []).append(i)
            else:
                fits[i] = self._fit_lime_base(masks.astype(np.int64), probs[i], seed)
        for members in groups.values():
            # a few samples per solve keep the float64 copies small (1000×64 doubles is 0.5 MiB per sample)
            for part in range(0, len(members), _RIDGE_GROUP):
                idx = members[part:part + _RIDGE_GROUP]
                masks = np.stack([samples[i][2] for i in idx])
                weights = exponential_kernel(cosine_distance_to_original(masks), self.kernel_width)
                coef, intercept, r2 = weighted_ridge(masks, np.stack([probs[i] for i in idx]), weights)
                for j, i in enumerate(idx):
                    fits[i] = (coef[j], float(intercept[j]), float(r2[j]))
        assert all(f is not None for f in fits), "every sample is fitted by one of the two paths"
        return fits  # type: ignore[return-value]

    def _fit_lime_base(self, masks: np.ndarray, probs: np.ndarray, seed: int) -> tuple[np.ndarray, float, float]:
        """lime's LimeBase with its feature selection (the caller holds the BLAS thread limit)."""
        from lime.lime_base import LimeBase  # on first use: lime imports scikit-learn

        k = masks.shape[1]
        base = LimeBase(lambda d: exponential_kernel(d, self.kernel_width), random_state=seed)
        intercept, pairs, score, _ = base.explain_instance_with_data(
            masks, probs[:, None], cosine_distance_to_original(masks), 0, self.num_features or k,
            feature_selection=self.feature_selection)
        coef = np.zeros(k)
        for feature, weight in pairs:
            coef[feature] = weight
        return coef, float(intercept), float(score)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
