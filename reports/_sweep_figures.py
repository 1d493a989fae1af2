"""Figures of the sweep page and the overfitting section, drawn from their JSON (so page and JSON agree).

Built on :mod:`._figures`: each figure has its own Agg canvas (no pyplot state), is styled by seaborn and
embedded as a base64 PNG without metadata that could carry a web address.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._figures import _new_figure, _style, to_data_uri

_COLORS = {"train": "#1f77b4", "validation": "#d62728", "test": "#2ca02c"}
_SPLITS = (("train", "train_accuracy"), ("validation", "val_accuracy"), ("test", "test_accuracy"))


def _plain(label: str) -> str:
    return label.replace("$", r"\$")  # a "$" pair would switch matplotlib to math mode


def validation_curves(curves: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """One panel per knob: mean train/validation/test accuracy at each of its values (bars: ±1 std over the
    trials at that value, which pool the other knobs' values and the repeats)."""
    knobs = list(curves)
    with _style():
        fig = _new_figure(min(3.4 * len(knobs), 11.0) + 0.6, 2.9)
        axes = np.atleast_1d(fig.subplots(1, len(knobs), squeeze=False)[0])
        for ax, knob in zip(axes, knobs):
            entries = curves[knob]
            xs = np.arange(len(entries))
            for split, key in _SPLITS:
                means = [e[key]["mean"] for e in entries]
                if any(m is None for m in means):
                    continue
                stds = [e[key]["std"] or 0.0 for e in entries]
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=split, color=_COLORS[split])
            ax.set_xticks(xs, [_plain(str(e["value"])) for e in entries], rotation=20 if len(entries) > 4 else 0)
            ax.set_xlabel(knob)
            ax.set_ylabel("accuracy")
            ax.set_title(f"validation curve: {knob}")
        axes[0].legend(fontsize=7)
        return to_data_uri(fig)


def gap_scatter(points: Sequence[Mapping[str, Any]], chosen: int, baseline: int) -> str:
    """Every point's mean validation accuracy against its mean gap (train − test); up and left is better."""
    with _style():
        fig = _new_figure(5.2, 3.2)
        ax = fig.subplots()
        for p in points:
            gap, val = p["gap"]["mean"], p["val_accuracy"]["mean"]
            if gap is None or val is None:
                continue
            marker, size, color = ("*", 160, "#d62728") if p["index"] == chosen else \
                (("s", 60, "#555555") if p["index"] == baseline else ("o", 36, "#1f77b4"))
            ax.scatter([gap], [val], marker=marker, s=size, color=color, zorder=3)
            ax.annotate(str(p["index"]), (gap, val), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel("generalization gap (train − test accuracy)")
        ax.set_ylabel("validation accuracy")
        ax.set_title("points (★ recommended, ■ baseline)")
        return to_data_uri(fig)


def epoch_curves(runs: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> str:
    """Per-epoch accuracy on the three splits, one panel per run (e.g. baseline and recommended, repeat 0)."""
    with _style():
        fig = _new_figure(4.0 * len(runs), 2.8)
        axes = np.atleast_1d(fig.subplots(1, len(runs), squeeze=False, sharey=True)[0])
        for ax, (title, history) in zip(axes, runs):
            epochs = [h["epoch"] for h in history]
            for split, key in _SPLITS:
                values = [h[key] for h in history]
                if all(v is not None for v in values):
                    ax.plot(epochs, values, marker=".", label=split, color=_COLORS[split])
            ax.set_title(_plain(title), fontsize=8)
            ax.set_xlabel("epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
        axes[0].set_ylabel("accuracy")
        axes[0].legend(fontsize=7)
        return to_data_uri(fig)


def reliability_diagram(calibration: Mapping[str, Any]) -> str:
    """Accuracy against mean confidence per bin (the diagonal is perfect calibration), with bin counts below."""
    bins = calibration["bins"]
    with _style():
        fig = _new_figure(4.0, 3.6)
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
        widths = [b["upper"] - b["lower"] for b in bins]
        top.bar(centers, [b["accuracy"] for b in bins], width=widths, color="#1f77b4", edgecolor="white",
                label="accuracy")
        top.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins], color="#d62728", s=12, zorder=3,
                    label="bin: (mean confidence, accuracy)")
        top.plot([0, 1], [0, 1], linestyle="--", color="#555555", linewidth=1)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy")
        top.set_title(f"reliability (ECE {calibration['ece']:.3f})")
        top.legend(fontsize=7, loc="upper left")
        bottom.bar(centers, [b["count"] for b in bins], width=widths, color="#888888", edgecolor="white")
        bottom.set_xlabel("confidence (top-class probability)")
        bottom.set_ylabel("count")
        bottom.set_xlim(0, 1)
        return to_data_uri(fig)


def drift_plot(drift: Mapping[str, Any]) -> str:
    """Per method: rank correlation of its maps with the reference point's, and deletion AUC, at every point."""
    methods = drift["methods"]
    with _style():
        fig = _new_figure(8.0, 2.8)
        left, right = fig.subplots(1, 2)
        for method in methods:
            rows = [r for r in drift["rows"] if r["method"] == method]
            xs = [r["point_index"] for r in rows]
            left.plot(xs, [np.nan if r["rank_correlation"] is None else r["rank_correlation"] for r in rows],
                      marker="o", label=method)
            right.plot(xs, [np.nan if r["deletion_auc"] is None else r["deletion_auc"] for r in rows],
                       marker="o", label=method)
        rows = [r for r in drift["rows"] if r["method"] == methods[0]]
        right.plot([r["point_index"] for r in rows], [r["random_deletion_auc"] for r in rows], linestyle="--",
                   color="#555555", label="random map")
        left.set_title("rank correlation with the reference maps")
        right.set_title("deletion AUC (lower = more faithful)")
        for ax in (left, right):
            ax.set_xlabel("grid point")
            ax.xaxis.get_major_locator().set_params(integer=True)
        left.legend(fontsize=7)
        right.legend(fontsize=7)
        return to_data_uri(fig)
