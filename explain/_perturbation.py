"""Occlusion computed natively: the drop in the target's score when a sliding window is blanked out, with
every window's rows batched across samples (the numbers of captum's ``Occlusion``, tested equal)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from xaudit.models._errors import XauditError

from ._base import CallContext, Explainer, input_kind
from ._params import constant_baseline, is_integer, shown

#: What ``window`` and ``stride`` take per kind of input, beside one number (said in errors).
_FORMS = {"image": "(height, width)", "sequence": "(steps,)"}


class Occlusion(Explainer):
    """Attribution of a feature = mean change of the target score over the windows that blank it
    (Zeiler & Fergus 2014, sec. 4.2).

    ``window`` is the side of a square patch for images (all channels at once) or a number of time steps
    for sequences (all features at once); by default a quarter of the image's shorter side (2×2 on 8×8)
    or a tenth of the sequence (at least 2 steps). A rectangular patch is ``(height, width)``. ``stride``
    defaults to half the window (overlapping windows give smoother maps), one number or ``(height, width)``;
    it may not exceed the window. (captum's ``sliding_window_shapes`` also has an entry for the channels,
    which are always occluded together here: window=(2, 2) is captum's (C, 2, 2).) Forward passes only: the
    number of model evaluations per sample is the number of windows plus one for the unoccluded input.

    Computes what captum's ``Occlusion`` computes with the same window, strides and baseline (windows start
    at 0 and step until the input is covered, the last one cut off at the edge; each feature gets
    f(x) − f(occluded) summed over the windows covering it, divided by their number; float32 results),
    tested equal to it, but builds the occluded rows of many samples and windows at once.
    """

    name = "occlusion"
    paper = "Zeiler & Fergus 2014"
    uses_gradients = False
    needs_input_gradient = False
    # next to the model's activations: the occluded copies of the inputs and the per-window outputs; measured
    # from a released heap, 10.1-10.8 MiB under a 10 MiB budget planned at the bare row estimate
    memory_factor = 1.25
    # rows of all samples and windows are streamed ctx.row_batch at a time: chunks sized by windows instead
    # meant one model call per 5 samples on 8×8 digits, 1.9× the time of captum called once (bench_explain.py)
    streams_rows = True
    groups_regions = True  # windows/segments/features of neighbouring elements: along L on N×C×L data

    def __init__(self, model: nn.Module, *, window: int | tuple[int, ...] | None = None,
                 stride: int | tuple[int, ...] | None = None, baseline: float = 0.0) -> None:
        super().__init__(model)
        self.window = _window_param("window", window)
        self.stride = _window_param("stride", stride)
        if self.window is not None and self.stride is not None:
            n = max(len(v) if isinstance(v, tuple) else 1 for v in (self.window, self.stride))
            sides, steps = _per_dim(self.window, n), _per_dim(self.stride, n)
            if len(sides) != len(steps):
                raise XauditError(f"occlusion window {window} and stride {stride} have different numbers of "
                                  "entries: give both per dimension, or one of them as one number")
            if any(st > w for st, w in zip(steps, sides)):
                raise XauditError(f"occlusion stride {stride} is larger than the window {window}: features "
                                  "between windows would never be occluded; use stride <= window")
        self.baseline = constant_baseline(self.name, baseline)

    def get_params(self) -> dict[str, Any]:
        return {"window": self.window, "stride": self.stride, "baseline": self.baseline}

    def settings(self, sample_shape: Sequence[int]) -> dict[str, Any]:
        window, strides = self.geometry(sample_shape)
        # the channel (image) or feature (sequence) dimension always spans the whole sample
        spatial = slice(1, None) if input_kind(tuple(sample_shape)) == "image" else slice(0, 1)
        return {"window": "×".join(map(str, window[spatial])), "stride": "×".join(map(str, strides[spatial])),
                "baseline": self.baseline}

    def geometry(self, sample_shape: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Sliding window shape and strides for one sample of ``sample_shape`` (captum's arguments)."""
        shape = tuple(int(s) for s in sample_shape)
        kind = input_kind(shape)
        window, stride = (self._for(label, value, kind) for label, value in (("window", self.window),
                                                                               ("stride", self.stride)))
        if kind == "image":
            channels, height, width = shape
            sides = window or (max(1, min(height, width) // 4),) * 2
            kh, kw = min(sides[0], height), min(sides[1], width)
            step = stride or tuple(max(1, side // 2) for side in sides)
            return (channels, kh, kw), (channels, min(step[0], kh), min(step[1], kw))
        steps, features = shape
        span = min(window[0] if window else max(2, steps // 10), steps)
        return (span, features), (min(stride[0] if stride else max(1, span // 2), span), features)

    def _for(self, label: str, value: int | tuple[int, ...] | None, kind: str) -> tuple[int, ...] | None:
        """``window`` or ``stride`` per slid dimension of ``kind`` inputs (images: 2, sequences: 1), or None."""
        n = 2 if kind == "image" else 1
        if isinstance(value, tuple) and len(value) != n:
            raise XauditError(f"occlusion {label} {value} does not fit {kind} inputs: for {kind}s it is one number "
                              f"or {_FORMS[kind]} (the {'channels' if kind == 'image' else 'features'} are "
                              f"occluded together); pass e.g. {label}={_example(kind)}")
        return None if value is None else _per_dim(value, n)

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
        sample_shape = tuple(inputs.shape[1:])
        covers = window_covers(sample_shape, *self.geometry(sample_shape), device=inputs.device)
        scores = occluded_scores(model, inputs, targets, covers, self.baseline, ctx.row_batch)
        # per sample: f(x) − f(x with window k blanked), one value per window position
        drops = (scores[:, :1] - scores[:, 1:]).reshape(len(inputs), *(len(c) for c in covers))
        return spread_over_windows(drops, covers)


def _window_param(label: str, value: Any) -> int | tuple[int, ...] | None:
    """``window`` or ``stride`` checked at construction: None, a positive integer, or one per slid dimension
    ((height, width) for images, (steps,) for sequences; which applies is known at the call)."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)) and 1 <= len(value) <= 2 and all(is_integer(v) for v in value):
        entries = tuple(int(v) for v in value)
    elif is_integer(value):
        entries = (int(value),)
    elif isinstance(value, (tuple, list)) and len(value) == 3:
        raise XauditError(f"occlusion {label} {tuple(value)} has an entry per input dimension, as captum's, but the "
                          f"channels are always occluded together here: give (height, width), e.g. "
                          f"{label}={tuple(value)[1:]}")
    else:
        raise XauditError(f"occlusion {label} must be a positive integer, or (height, width) for images, got "
                          f"{shown(value)}: pass e.g. {label}=2 or {label}=(2, 3)")
    if min(entries) < 1:
        raise XauditError(f"occlusion {label} must be at least 1, got {value}")
    return entries if isinstance(value, (tuple, list)) else entries[0]


def _per_dim(value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,) * n


def _example(kind: str) -> str:
    return "(2, 3)" if kind == "image" else "4"


def window_covers(sample_shape: Sequence[int], window: Sequence[int], strides: Sequence[int],
                  device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Per input dimension, which indices each window position covers: a (positions × size) bool matrix.

    A window is the product of its ranges along every dimension, so these small matrices describe every
    window (see :func:`window_masks` and :func:`spread_over_windows`). Positions start at 0 and step by the
    stride until the window reaches the end, ``ceil((size − window) / stride) + 1`` of them; the last one is
    cut off at the edge when the steps do not divide the remainder (as captum places them).
    """
    covers = []
    for size, span, step in zip(sample_shape, window, strides):
        starts = torch.arange(math.ceil((size - span) / step) + 1, device=device) * step
        index = torch.arange(size, device=device)
        covers.append((index >= starts[:, None]) & (index < starts[:, None] + span))
    return covers


def occluded_scores(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, covers: list[torch.Tensor],
                    baseline: float, row_batch: int) -> torch.Tensor:
    """The target's score on every sample and on every window of it blanked to ``baseline``: (n, 1 + windows),
    column 0 the unoccluded input, then the windows in row-major order of their positions.

    All rows of all samples are streamed through the model ``row_batch`` at a time, each chunk's occluded
    inputs built at once (``torch.where`` on the chunk's window masks).
    """
    n, device = len(inputs), inputs.device
    per_sample = math.prod(len(c) for c in covers) + 1
    # row 0 of a sample is unoccluded (window −1 masks nothing); the masks of all its rows are made once when
    # they take no more bools than one call's rows, else per call (on stride-1 windows over large images
    # a table of every window would be windows × elements, far more than the rows in flight)
    table = None
    if per_sample <= row_batch:
        table = window_masks(covers, torch.arange(-1, per_sample - 1, device=device))
    total = n * per_sample
    scores = []
    with torch.no_grad():
        for start in range(0, total, row_batch):
            row = torch.arange(start, min(start + row_batch, total), device=device)
            sample, window = row // per_sample, row % per_sample
            mask = table[window] if table is not None else window_masks(covers, window - 1)
            out = model(torch.where(mask, baseline, inputs[sample]))
            scores.append(out.reshape(len(row), -1).gather(1, targets[sample, None]).squeeze(1))
    return torch.cat(scores).reshape(n, per_sample)


def window_masks(covers: list[torch.Tensor], windows: torch.Tensor) -> torch.Tensor:
    """Bool masks (len(windows) × sample shape) of the given window numbers (row-major over the positions in
    ``covers``; −1: no window): each the outer product of the window's range in every dimension."""
    mask = (windows >= 0).reshape(-1, *[1] * len(covers))
    position = windows.clamp(min=0)
    for dim in reversed(range(len(covers))):
        n_positions, size = covers[dim].shape
        shape = [-1] + [1] * len(covers)
        shape[dim + 1] = size
        mask = mask & covers[dim][position % n_positions].reshape(shape)
        position = position // n_positions
    return mask


def spread_over_windows(drops: torch.Tensor, covers: list[torch.Tensor]) -> torch.Tensor:
    """Each element's mean of ``drops`` (n × positions per dimension) over the windows covering it, float32.

    The sum over windows contracts one dimension's positions at a time with its cover matrix; the number of
    windows covering an element is the product of its per-dimension counts.
    """
    total = drops
    for cover in covers:
        # contracts the leading position axis; the dimension's elements axis is appended at the end
        total = torch.tensordot(total, cover.to(drops.dtype), dims=([1], [0]))
    n_covering = torch.ones((), device=drops.device)
    for cover in covers:
        n_covering = n_covering[..., None] * cover.sum(0, dtype=torch.float32)
    return total.float() / n_covering
