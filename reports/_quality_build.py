"""Computing the report's explanation-quality part: each method's metrics, the frontier, recommendations,
method agreement, the random-map reference and the samples-against-error curves of sampling methods.

Nothing here draws; :mod:`._quality_sections` renders what this returns. Cheap metrics (deletion and
insertion AUC, Petsiuk et al. 2018; infidelity, Yeh et al. 2019) score every explained sample; the ones
that re-run the method (max-sensitivity, Yeh et al. 2019; cascading model randomization, Adebayo et al.
2018; seed stability) score only the first :data:`EXPENSIVE_SUBSET` samples, as ``quality_config`` says.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xaudit.explain import (
    Explainer,
    Explanation,
    MetricResult,
    frontier_json,
    frontier_point,
    get_metric,
    method_agreement,
    pareto_frontier,
    quality_json,
    random_map_auc,
    recommend,
    recommendations_json,
)
from xaudit.explain._quality_stats import mean_finite, relevance_map, spearman_rows
from xaudit.models._errors import XauditError, did_you_mean

QUALITY_MODES: tuple[str, ...] = ("full", "fast", "none")
#: Metrics over every explained sample (each costs a few model evaluations per sample).
CHEAP_METRICS: dict[str, tuple[str, ...]] = {"full": ("deletion_auc", "insertion_auc", "infidelity"),
                                             "fast": ("deletion_auc", "insertion_auc"), "none": ()}
#: Metrics that re-run the method (dozens of explanations per sample): full mode only, on a subset.
EXPENSIVE_METRICS: tuple[str, ...] = ("max_sensitivity", "model_randomization", "seed_stability")
EXPENSIVE_SUBSET = 8
#: Model evaluations of the explained method one expensive metric may spend per re-run on the subset; a
#: sampling method (thousands of evaluations per sample) is scored on fewer samples, down to one, so the
#: default report stays in minutes. ``metric_samples`` records how many each metric scored.
EXPENSIVE_EVALS = 4000
#: Sample counts the samples-against-error curves re-run sampling methods at (the largest is the reference).
SAMPLE_GRID: tuple[int, ...] = (50, 100, 200, 500, 1000)
SAMPLE_CURVE_N = 3
#: Constructor arguments per metric (empty: each metric's documented defaults).
METRIC_PARAMS: dict[str, dict[str, Any]] = {}
#: Constructor parameters that set how many perturbed samples a sampling method draws.
SAMPLE_COUNT_PARAMS: tuple[str, ...] = ("num_samples", "nsamples")

Progress = Callable[[str], None]


def check_quality_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`QUALITY_MODES`, else a "did you mean" error."""
    if mode not in QUALITY_MODES:
        raise did_you_mean("quality mode", mode, QUALITY_MODES)
    return mode


def quality_config(mode: str, n_explained: int) -> dict[str, Any]:
    """report.json's ``quality_config``: which metrics ran, on how many samples, and why a subset."""
    subset = min(EXPENSIVE_SUBSET, n_explained)
    expensive = EXPENSIVE_METRICS if mode == "full" else ()
    return {"mode": mode, "metrics_all_samples": list(CHEAP_METRICS[mode]), "n_all_samples": n_explained,
            "metrics_subset": list(expensive), "n_subset": subset if expensive else 0,
            "subset_note": ("metrics that re-run the method score the first "
                            f"{subset} explained samples to keep their cost in check") if expensive else None,
            "sample_curve_grid": list(SAMPLE_GRID) if mode == "full" else [],
            "n_sample_curve": min(SAMPLE_CURVE_N, n_explained) if mode == "full" else 0,
            # every model evaluation the quality step made (filled in by compute_quality)
            "model_evals": {"forward": 0, "backward": 0}}


def _subset(exp: Explanation, n: int) -> Explanation:
    return dataclasses.replace(exp, attributions=exp.attributions[:n], inputs=exp.inputs[:n],
                               targets=exp.targets[:n])


def method_quality(model: nn.Module, explainer: Explainer, exp: Explanation, *, mode: str, seed: int,
                   background: torch.Tensor | None, random_deletion_auc: float | None,
                   ) -> tuple[dict[str, Any], dict[str, MetricResult]]:
    """One method's ``quality`` object and its metric results; a metric raising :class:`XauditError` (it
    does not apply, or cannot run on this model) leaves its reason in ``failed_metrics``."""
    plan = [(name, exp) for name in CHEAP_METRICS[mode]]
    if mode == "full":
        evals_per_sample = max(exp.cost.forward_evals / max(exp.cost.n_samples, 1), 1.0)
        small = _subset(exp, max(1, min(EXPENSIVE_SUBSET, int(EXPENSIVE_EVALS // evals_per_sample))))
        plan += [(name, small) for name in EXPENSIVE_METRICS
                 if get_metric(name).applies_to(type(explainer)) is None]
    results: dict[str, MetricResult] = {}
    failed: dict[str, str] = {}
    for name, scored in plan:
        if name == "model_randomization" and isinstance(model, torch.jit.ScriptModule):
            # the cascade finds layers with forward hooks, which TorchScript refuses with a RuntimeError
            failed[name] = ("the randomization check hooks the model's layers, which a TorchScript model does not "
                            "allow: load the model as a torch.nn.Module to run it")
            continue
        try:
            results[name] = get_metric(name)(**METRIC_PARAMS.get(name, {})).compute(model, scored, explainer=explainer, background=background,
                                                       seed=seed)
        except XauditError as exc:
            # one metric that cannot score this method must not cost the report every other result
            failed[name] = str(exc)
    out = quality_json(results, random_deletion_auc=random_deletion_auc)
    out["metric_samples"] = {name: len(scored) for name, scored in plan if name in results}
    out["failed_metrics"] = failed
    return out, results


def _sample_count_param(explainer: Explainer) -> str | None:
    """The sample-count parameter of a model-agnostic sampling method (LIME, Kernel SHAP), else None."""
    if explainer.uses_gradients or not explainer.is_stochastic:
        return None
    params = explainer.get_params()
    return next((p for p in SAMPLE_COUNT_PARAMS if p in params), None)


def sample_curve(model: nn.Module, explainer: Explainer, x: torch.Tensor, targets: torch.Tensor, param: str, *,
                 seed: int, background: torch.Tensor | None) -> dict[str, Any]:
    """Re-run a sampling method at each count of :data:`SAMPLE_GRID`; error of each map against the largest
    count's: mean |difference| ÷ mean |reference| and 1 − Spearman of |attributions|."""
    runs = []
    for n in SAMPLE_GRID:
        again = type(explainer)(model, **{**explainer.get_params(), param: n})
        if again.needs_background:
            again.fit(background)
        runs.append(again.explain(x, targets, seed=seed))
    ref = runs[-1].attributions.double()
    ref_rank, _ = relevance_map(runs[-1].attributions, absolute=True)
    scale = float(ref.abs().mean()) or 1.0
    mae, rank_error = [], []
    for run in runs:
        mae.append(float((run.attributions.double() - ref).abs().mean()) / scale)
        rank_error.append(1.0 - mean_finite(spearman_rows(ref_rank, relevance_map(run.attributions, absolute=True)[0])))
    return {"param": param, "n_samples_grid": list(SAMPLE_GRID), "n_explained": len(x),
            "relative_mae": mae, "rank_error": rank_error,
            "wall_s_per_sample": [r.cost.wall_s / max(r.cost.n_samples, 1) for r in runs],
            "forward_evals": sum(r.cost.forward_evals for r in runs),
            "backward_evals": sum(r.cost.backward_evals for r in runs)}


def _evals(results: Mapping[str, MetricResult]) -> np.ndarray:
    return np.array([[r.cost.forward_evals, r.cost.backward_evals] for r in results.values()]
                    or [[0, 0]]).sum(0)


def compute_quality(model: nn.Module, methods: Sequence[Any], x: torch.Tensor, targets: torch.Tensor,
                    background: torch.Tensor | None, *, mode: str = "full", seed: int = 0,
                    progress: Progress | None = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Fill each supported :class:`~._build.MethodResult`'s ``quality``; return the new results and the
    report-wide part (``quality_config``, ``random_map``, ``agreement``, ``frontier``, ``recommendations``,
    ``sample_curves``)."""
    check_quality_mode(mode)
    summary: dict[str, Any] = {"quality_config": quality_config(mode, len(x)), "random_map": None,
                               "agreement": None, "frontier": None, "recommendations": [], "sample_curves": {}}
    if mode == "none":
        return tuple(methods), summary
    say = progress or (lambda _msg: None)
    evals = np.zeros(2, dtype=np.int64)
    deletion = random_map_auc(model, x, targets, seed=seed)
    insertion = random_map_auc(model, x, targets, metric="insertion_auc", seed=seed)
    evals += _evals({"d": deletion, "i": insertion})
    summary["random_map"] = {"deletion_auc": deletion.value, "insertion_auc": insertion.value,
                             "note": "AUC of a uniformly random relevance map: the reference a method must beat"}
    out, points = [], []
    supported = [m for m in methods if m.explanation is not None and m.explainer is not None]
    for i, result in enumerate(methods, 1):
        if result.explanation is None or result.explainer is None:
            out.append(result)
            continue
        say(f"quality {i}/{len(methods)} {result.name}: {mode} metrics")
        quality, results = method_quality(model, result.explainer, result.explanation, mode=mode, seed=seed,
                                          background=background, random_deletion_auc=deletion.value)
        evals += _evals(results)
        param = _sample_count_param(result.explainer) if mode == "full" else None
        if param is not None:
            n = SAMPLE_CURVE_N
            try:
                curve = sample_curve(model, result.explainer, x[:n], targets[:n], param, seed=seed,
                                     background=background)
            except XauditError as exc:
                quality["failed_metrics"]["sample_curve"] = str(exc)
            else:
                summary["sample_curves"][result.name] = curve
                evals += (curve["forward_evals"], curve["backward_evals"])
        out.append(dataclasses.replace(result, quality=quality))
        points.append(frontier_point(result.name, result.explanation.cost, results,
                                     random_deletion_auc=deletion.value))
    if len(supported) >= 2:
        agreement = method_agreement([m.explanation for m in supported])
        summary["agreement"] = {"methods": list(agreement.methods), "matrix": [list(r) for r in agreement.matrix],
                                "mean": agreement.value,
                                "note": "mean Spearman of |attributions| between every pair of methods"}
    if points:
        summary["frontier"] = frontier_json(pareto_frontier(points))
        summary["recommendations"] = recommendations_json(recommend(points))
    summary["quality_config"]["model_evals"] = {"forward": int(evals[0]), "backward": int(evals[1])}
    return tuple(out), summary
