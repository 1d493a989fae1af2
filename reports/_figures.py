"""Figures for the report, drawn on ``matplotlib.figure.Figure`` objects and embedded as base64 PNG.

No pyplot state is touched: each figure gets its own Agg canvas, so rendering works headless, in threads
and in notebooks whatever backend the user selected. matplotlib and seaborn are imported inside the
functions because importing seaborn imports pyplot, which :mod:`xaudit.reports` must not do at import.
The PNG "Software" metadata is dropped: it carries matplotlib's web address, and the report promises that
no URL appears anywhere in the file.
"""

from __future__ import annotations

import base64
import contextlib
import io
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from xaudit.models._errors import XauditWarning

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Diverging map for signed attributions (red = evidence for the class, blue = against), centred at 0.
SIGNED_CMAP = "RdBu_r"
#: Sequential map for unsigned attributions (magnitudes only, e.g. absolute gradients).
UNSIGNED_CMAP = "YlOrRd"
CELL_INCHES = 1.6
DPI = 110


@contextlib.contextmanager
def _style() -> Iterator[None]:
    import seaborn as sns

    # seaborn's style objects are context managers that restore matplotlib's rcParams on exit
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=0.95):
        yield


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def to_data_uri(fig: Figure) -> str:
    """The figure as a ``data:image/png;base64,...`` URI (self-contained; nothing to fetch).

    Characters the figure font lacks (CJK, emoji in class names) are drawn as boxes; matplotlib warns once per
    glyph with its own file path, so those warnings become one line per report (:data:`_GLYPHS_SAID`)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message=r"Glyph \d+ .*missing from", category=UserWarning)
        fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    for w in caught:
        if "missing from" in str(w.message) and "Glyph" in str(w.message):
            if not _GLYPHS_SAID:
                _GLYPHS_SAID.append(True)
                warnings.warn("some characters of the labels (class names?) are not in the figures' font and show "
                              "as boxes there; the report's text shows them as they are", XauditWarning,
                              stacklevel=2)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


_GLYPHS_SAID: list[bool] = []


def training_curves(history: Sequence[Mapping[str, Any]]) -> str:
    """Loss and accuracy per epoch, train vs validation, side by side (seaborn line plots)."""
    import pandas as pd
    import seaborn as sns

    rows = []
    for record in history:
        rows.append({"epoch": record["epoch"], "split": "train", "loss": record["train_loss"],
                     "accuracy": record["train_accuracy"]})
        if record.get("val_loss") is not None:
            rows.append({"epoch": record["epoch"], "split": "validation", "loss": record["val_loss"],
                         "accuracy": record["val_accuracy"]})
    frame = pd.DataFrame(rows)
    with _style():
        fig = _new_figure(8.0, 2.8)
        axes = fig.subplots(1, 2)
        for ax, metric in zip(axes, ("loss", "accuracy")):
            sns.lineplot(data=frame, x="epoch", y=metric, hue="split", style="split", markers=True,
                         dashes=False, ax=ax, palette={"train": "#1f77b4", "validation": "#d62728"})
            ax.set_title(f"{metric} per epoch")
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
        return to_data_uri(fig)


def _limits(values: np.ndarray, signed: bool) -> tuple[float, float]:
    peak = float(np.abs(values).max()) or 1.0
    return (-peak, peak) if signed else (0.0, peak)


def _draw_image(ax: Axes, x: np.ndarray, a: np.ndarray | None, signed: bool) -> None:
    """C×H×W input in gray; the attribution (summed over channels) on top, opaque where it is large."""
    from matplotlib.colors import Normalize

    ax.imshow(x.mean(axis=0), cmap="gray", interpolation="nearest")
    if a is not None:
        heat = a.sum(axis=0)
        low, high = _limits(heat, signed)
        alpha = 0.15 + 0.75 * np.abs(heat) / max(abs(low), high)
        ax.imshow(heat, cmap=SIGNED_CMAP if signed else UNSIGNED_CMAP, norm=Normalize(low, high),
                  alpha=alpha, interpolation="nearest")
    ax.set_axis_off()


def _draw_series(ax: Axes, x: np.ndarray, a: np.ndarray | None, signed: bool) -> None:
    """A univariate T×1 sequence as a line over a heatmap strip of its per-time-step attribution."""
    from matplotlib.colors import Normalize

    series = x[:, 0]
    steps = len(series)
    low_y, high_y = float(series.min()), float(series.max())
    pad = 0.08 * (high_y - low_y or 1.0)
    if a is not None:
        strip = a[:, 0][None, :]
        low, high = _limits(strip, signed)
        ax.imshow(strip, cmap=SIGNED_CMAP if signed else UNSIGNED_CMAP, norm=Normalize(low, high), aspect="auto",
                  extent=(-0.5, steps - 0.5, low_y - pad, high_y + pad), interpolation="nearest", alpha=0.85)
    ax.plot(np.arange(steps), series, color="black", linewidth=1.0)
    ax.set_xlim(-0.5, steps - 0.5)
    ax.set_ylim(low_y - pad, high_y + pad)
    ax.set_yticks([])
    ax.grid(False)


def _draw_matrix(ax: Axes, x: np.ndarray, a: np.ndarray | None, signed: bool) -> None:
    """A multi-feature T×F sequence as a heatmap, time steps left to right, features top to bottom.

    With ``a`` None the input itself is drawn in gray; otherwise the attribution, on the colour scale of
    :func:`_limits`. :func:`sample_grid` stacks the two, input above, so each time step lines up.
    """
    import seaborn as sns

    if a is None:
        sns.heatmap(x.T, ax=ax, cmap="gray", cbar=False, xticklabels=False, yticklabels=False)
        ax.set_ylabel("feature\n(input)", fontsize=7)
    else:
        low, high = _limits(a, signed)
        sns.heatmap(a.T, ax=ax, cmap=SIGNED_CMAP if signed else UNSIGNED_CMAP, vmin=low, vmax=high,
                    center=0.0 if signed else None, cbar=False, xticklabels=False, yticklabels=False)
        ax.set_ylabel("feature\n(attribution)", fontsize=7)
    ax.set_xlabel("time step", fontsize=7)


def sample_layout(sample_shape: Sequence[int]) -> str:
    """How samples of this shape are drawn: ``image``, ``series`` (T×1) or ``matrix`` (T×F, F > 1)."""
    if len(sample_shape) == 3:
        return "image"
    return "series" if sample_shape[-1] == 1 else "matrix"


_DRAW = {"image": _draw_image, "series": _draw_series, "matrix": _draw_matrix}
_WIDTH = {"image": 1.0, "series": 1.6, "matrix": 1.2}


def sample_grid(inputs: np.ndarray, attributions: np.ndarray | None, titles: Sequence[str], *,
                signed: bool = True) -> str:
    """One row of samples: the inputs alone (``attributions=None``) or with their attributions (T×F sequences:
    two rows, the input above the time step × feature heatmap of its attribution).

    Each sample's colour scale is its own (divided by its largest |attribution|), so maps compare in
    shape, not in magnitude across samples; the colour bar says so.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    layout = sample_layout(inputs.shape[1:])
    draw = _DRAW[layout]
    n = len(inputs)
    width = CELL_INCHES * _WIDTH[layout]
    # T×F sequences get two rows, the input above its attribution heatmap, so a time step lines up in both
    stacked = layout == "matrix" and attributions is not None
    with _style():
        fig = _new_figure(width * n + (1.0 if attributions is not None else 0.2),
                          CELL_INCHES * (1.8 if stacked else 1.0) + 0.4)
        grid = fig.subplots(2 if stacked else 1, n, squeeze=False)
        for i in range(n):
            if stacked:
                draw(grid[0][i], inputs[i], None, signed)
                grid[0][i].set_xlabel("")
            draw(grid[-1][i], inputs[i], None if attributions is None else attributions[i], signed)
            grid[0][i].set_title(titles[i], fontsize=8)
            if i and layout == "matrix":
                for ax in grid[:, i]:
                    ax.set_ylabel("")
        if attributions is not None:
            norm = Normalize(-1.0, 1.0) if signed else Normalize(0.0, 1.0)
            bar = fig.colorbar(ScalarMappable(norm=norm, cmap=SIGNED_CMAP if signed else UNSIGNED_CMAP),
                               ax=list(grid.ravel()), shrink=0.85, pad=0.02)
            bar.set_label("attribution ÷ max |attr.|\n(per sample)", fontsize=7)
            bar.ax.tick_params(labelsize=7)
        return to_data_uri(fig)
