"""Figures of the explanation-quality sections, drawn from report.json's values (never from tensors).

Same rules as :mod:`._figures`: one ``Figure`` with its own Agg canvas each, seaborn imported on use,
base64 PNG without the "Software" metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ._figures import _new_figure, _style, to_data_uri


def randomization_curves(methods: Sequence[Mapping[str, Any]]) -> str:
    """Spearman of |attributions| against the trained model's map per cascade step, one line per method
    (Adebayo et al. 2018, Fig. 2): a sane map falls towards 0 as more layers are randomized."""
    import pandas as pd
    import seaborn as sns

    rows = [{"step": step, "method": m["name"], "rank correlation": value}
            for m in methods for step, value in enumerate(m["quality"]["randomization_similarity"], 1)
            if value is not None]
    layers = methods[0]["quality"]["randomization_layers"] or []
    with _style():
        fig = _new_figure(6.4, 3.0)
        ax = fig.subplots()
        sns.lineplot(data=pd.DataFrame(rows), x="step", y="rank correlation", hue="method", style="method",
                     markers=True, dashes=False, ax=ax)
        ax.axhline(0.0, color="gray", linewidth=0.8)
        ax.set_xticks(range(1, len(layers) + 1))
        ax.set_xticklabels([f"+{name}" if i else name for i, name in enumerate(layers)], rotation=20, fontsize=7)
        ax.set_xlabel("layers randomized, top first (cumulative)")
        ax.set_ylabel("Spearman vs trained map")
        ax.legend(fontsize=7, loc="best")
        return to_data_uri(fig)


def agreement_heatmap(methods: Sequence[str], matrix: Sequence[Sequence[float]]) -> str:
    """The methods' pairwise mean Spearman of |attributions| as an annotated heatmap."""
    import numpy as np
    import seaborn as sns

    n = len(methods)
    with _style():
        fig = _new_figure(1.2 + 0.55 * n, 0.9 + 0.45 * n)
        ax = fig.subplots()
        sns.heatmap(np.asarray(matrix, dtype=float), ax=ax, vmin=-1.0, vmax=1.0, center=0.0, cmap="RdBu_r",
                    annot=n <= 14, fmt=".2f", annot_kws={"fontsize": 6}, xticklabels=list(methods),
                    yticklabels=list(methods), cbar_kws={"label": "Spearman"}, square=True)
        ax.tick_params(labelsize=7)
        return to_data_uri(fig)


def pareto_scatter(points: Sequence[Mapping[str, Any]], faithful_min: float | None = None) -> str:
    """Cost (ms/sample, log x) against faithfulness (1 − deletion AUC ÷ a random map's); filled = passes the
    randomization check, × = fails it, hollow = not checked; the Pareto set is ringed and joined by a line.
    Dotted lines mark a random map (0) and, given ``faithful_min``, the least faithfulness counted as faithful."""
    shown = [p for p in points if p["faithfulness"] is not None and p["wall_s_per_sample"]]
    palette = {True: "#2ca02c", False: "#d62728", None: "#7f7f7f"}
    with _style():
        fig = _new_figure(6.4, 3.6)
        ax = fig.subplots()
        for p in shown:
            x, y, ok = p["wall_s_per_sample"] * 1e3, p["faithfulness"], p["sanity_passed"]
            if ok is False:
                ax.scatter(x, y, marker="x", s=50, color=palette[ok], zorder=3)
            else:
                ax.scatter(x, y, marker="o", s=45, facecolors=palette[ok] if ok else "none",
                           edgecolors=palette[ok], zorder=3)
            if p["pareto"]:
                ax.scatter(x, y, marker="o", s=180, facecolors="none", edgecolors="black", linewidths=1.2, zorder=2)
            ax.annotate(p["method"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
        front = sorted((p for p in shown if p["pareto"]), key=lambda p: p["wall_s_per_sample"])
        if len(front) > 1:
            ax.plot([p["wall_s_per_sample"] * 1e3 for p in front], [p["faithfulness"] for p in front],
                    color="black", linewidth=0.8, linestyle="--", zorder=1)
        ax.axhline(0.0, color="#7f7f7f", linewidth=0.8, linestyle=":", zorder=0)
        ax.annotate("random map", (0.0, 0.0), xycoords=("axes fraction", "data"), textcoords="offset points",
                    xytext=(3, 2), fontsize=6, color="#7f7f7f")
        if faithful_min is not None:
            ax.axhline(faithful_min, color="#2ca02c", linewidth=0.8, linestyle=":", zorder=0)
            ax.annotate("faithful", (0.0, faithful_min), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(3, 2), fontsize=6, color="#2ca02c")
        ax.set_xscale("log")
        ax.set_xlabel("explanation cost (wall ms/sample, log scale)")
        ax.set_ylabel("faithfulness (1 − deletion AUC ÷ random map's)")
        from matplotlib.lines import Line2D

        ax.legend(handles=[
            Line2D([], [], marker="o", linestyle="", color=palette[True], label="passes randomization"),
            Line2D([], [], marker="x", linestyle="", color=palette[False], label="fails randomization"),
            Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color=palette[None], label="not checked"),
            Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markersize=11, color="black",
                   label="Pareto set")], fontsize=7, loc="best")
        return to_data_uri(fig)


def sample_error_curves(curves: Mapping[str, Mapping[str, Any]]) -> str:
    """Per sampling method, the error of its map against the largest sample count's, as samples grow."""
    import pandas as pd
    import seaborn as sns

    rows = [{"samples": n, "method": name, "relative MAE": mae, "1 − Spearman": rank}
            for name, c in curves.items()
            for n, mae, rank in zip(c["n_samples_grid"], c["relative_mae"], c["rank_error"])]
    frame = pd.DataFrame(rows)
    with _style():
        fig = _new_figure(8.0, 2.8)
        axes = fig.subplots(1, 2)
        for ax, column in zip(axes, ("relative MAE", "1 − Spearman")):
            sns.lineplot(data=frame, x="samples", y=column, hue="method", style="method", markers=True,
                         dashes=False, ax=ax)
            ax.set_xscale("log")
            ax.set_xlabel("samples drawn per explanation (log scale)")
            ax.set_title(f"{column} vs the largest count")
            ax.legend(fontsize=7)
        return to_data_uri(fig)
