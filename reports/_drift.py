"""Explanation drift across a sweep: how the maps, and their faithfulness and sanity, change as
regularization or augmentation gets stronger.

For every grid point (repeat 0) the trained model explains the same fixed test inputs, each for its true
class (the predicted class may differ between models, the label does not). Each map is compared with the
reference point's map of the same input by the Spearman rank correlation of |attribution| (as in the
sanity checks of Adebayo et al. 2018); faithfulness is the deletion AUC of :mod:`xaudit.explain`'s quality
metrics (Petsiuk et al. 2018; lower = more faithful), next to a random map's AUC on the same model; sanity
is its cascading model-randomization check. Composed here because it needs both trained models
(:mod:`xaudit.models`) and explanations (:mod:`xaudit.explain`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xaudit.explain import evaluate_quality, get_explainer, random_map_auc
from xaudit.explain._frontier import deletion_faithfulness
from xaudit.explain._quality_stats import relevance_map, spearman_rows
from xaudit.models import Dataset
from xaudit.models._errors import XauditError
from xaudit.models._sweep import data_fingerprint, load_sweep_data, trained_model
from xaudit.models._sweep_result import SweepResult

from ._build import background_samples, no_background, resolve_methods, select_samples

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DriftRow:
    """One (point, method): agreement with the reference point's maps, faithfulness and sanity of the maps."""

    point_index: int
    label: str
    method: str
    rank_correlation: float | None
    rank_correlation_std: float | None
    deletion_auc: float | None
    random_deletion_auc: float | None
    sanity_passed: bool | None
    sanity_final_spearman: float | None
    test_accuracy: float
    reason: str | None = None

    @property
    def faithfulness(self) -> float | None:
        """Gain over this model's own random map (``1 − deletion AUC / random AUC``): comparable across the
        sweep's models, whose confidence, and so whose raw AUCs, differ."""
        if self.deletion_auc is None or self.random_deletion_auc is None:
            return None
        return deletion_faithfulness(self.deletion_auc, self.random_deletion_auc)

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "faithfulness": self.faithfulness}


@dataclass(frozen=True)
class ExplanationDrift:
    """Drift of each method's maps over the sweep's points, against the ``reference`` point (the baseline)."""

    reference: int
    methods: tuple[str, ...]
    sample_indices: tuple[int, ...]
    rows: tuple[DriftRow, ...]
    seed: int

    def rows_for(self, method: str) -> tuple[DriftRow, ...]:
        return tuple(r for r in self.rows if r.method == method)

    def interpretation(self, method: str) -> str:
        """One sentence: the point whose maps moved furthest from the reference, and what faithfulness did."""
        rows = [r for r in self.rows_for(method) if r.rank_correlation is not None and r.point_index != self.reference]
        ref = next((r for r in self.rows_for(method) if r.point_index == self.reference), None)
        if not rows or ref is None:
            return f"{method}: no other point to compare with"
        far = min(rows, key=lambda r: r.rank_correlation)  # type: ignore[arg-type, return-value]
        text = (f"{method}: maps move furthest at {far.label} (rank correlation {far.rank_correlation:.2f} with "
                f"the reference point's maps)")
        if far.faithfulness is not None and ref.faithfulness is not None:
            text += (f"; faithfulness {ref.faithfulness:.2f} → {far.faithfulness:.2f} (gain over each model's random "
                     "map by deletion)")
        elif far.deletion_auc is not None and ref.deletion_auc is not None:
            text += f"; deletion AUC {ref.deletion_auc:.3f} → {far.deletion_auc:.3f} (lower = more faithful)"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "methods": list(self.methods), "n_samples": len(self.sample_indices),
                "sample_indices": list(self.sample_indices), "seed": self.seed,
                "targets": "true class", "rank_correlation": "Spearman of |attribution| per input, mean over inputs",
                "deletion_auc": ("xaudit.explain deletion_auc (Petsiuk et al. 2018), zero baseline; "
                                 "lower = more faithful"),
                "faithfulness": "1 - deletion_auc / random_deletion_auc of the same model (0 = random map)",
                "sanity": "xaudit.explain model_randomization (Adebayo et al. 2018), cascading",
                "rows": [r.to_json() for r in self.rows],
                "interpretation": {m: self.interpretation(m) for m in self.methods}}


def load_sweep_dataset(result: SweepResult, dataset: Dataset | None) -> Dataset:
    if dataset is None:
        dataset = load_sweep_data(result.data, result.n_train, result.n_test)
    if data_fingerprint(dataset) != result.data_fingerprint:
        raise XauditError(f"the dataset is not the one the sweep ran on ({result.data!r}): pass the sweep's own data")
    return dataset


def explanation_drift(
    result: SweepResult,
    *,
    methods: str | Sequence[str] = ("saliency",),
    n_samples: int = 16,
    dataset: Dataset | None = None,
    reference: int | None = None,
    sanity: bool = True,
    seed: int = 0,
    progress: Progress | None = None,
) -> ExplanationDrift:
    """Explain ``n_samples`` fixed test inputs with every method at every point of the sweep and compare.

    ``reference`` is the point the maps are compared with (default: the recommendation's baseline, the
    unregularized point). Models come from the run directory when the sweep kept them, otherwise they are
    trained again (bit-identical; needs ``dataset`` unless the sweep's data loads by name).
    """
    names = resolve_methods(methods)
    if n_samples < 2:
        raise XauditError(f"n_samples must be at least 2, got {n_samples}: pass e.g. n_samples=16")
    data = load_sweep_dataset(result, dataset)
    ref = result.recommendation.baseline.point.index if reference is None else int(reference)
    if not 0 <= ref < len(result.points):
        raise XauditError(f"reference point {ref} is out of range: the sweep has {len(result.points)} points")
    indices = select_samples(data.n_test, n_samples, seed)
    x, labels = data.x_test[indices], data.y_test[indices]
    background = background_samples(data, seed, explained=indices)
    say = progress or (lambda _msg: None)

    maps: dict[tuple[int, str], torch.Tensor] = {}
    partial: list[dict[str, Any]] = []
    order = [ref] + [p.index for p in result.points if p.index != ref]  # the reference's maps are needed first
    for i in order:
        point = result.points[i]
        model = trained_model(result, i, 0, dataset=data)
        test_accuracy = result.trials_at(i)[0].test_accuracy
        random_auc = random_map_auc(model, x, labels, seed=seed).value
        for name in names:
            row: dict[str, Any] = {"point_index": i, "label": point.label or "base", "method": name,
                                   "test_accuracy": test_accuracy, "random_deletion_auc": random_auc}
            explainer = get_explainer(name)(model)
            reason = explainer.unsupported_reason(tuple(x.shape[1:]))
            if not reason and explainer.needs_background and len(background) == 0:
                reason = no_background(name)
            if reason:
                partial.append({**row, "reason": reason})
                continue
            if explainer.needs_background:
                explainer.fit(background)
            exp = explainer.explain(x, labels, seed=seed)
            maps[(i, name)] = relevance_map(exp.attributions, absolute=True)[0]
            wanted = ["deletion_auc"] + (["model_randomization"] if sanity else [])
            quality = evaluate_quality(model, exp, explainer=explainer, metrics=wanted, background=background,
                                       seed=seed)
            row["deletion_auc"] = quality["deletion_auc"].value
            if sanity:
                check = quality["model_randomization"]
                row["sanity_passed"] = bool(getattr(check, "passed", False))
                row["sanity_final_spearman"] = check.value
            partial.append(row)
        say(f"explanation drift: point {i} ({point.label or 'base'}) explained with {', '.join(names)}")

    rows = []
    for row in partial:
        own = maps.get((row["point_index"], row["method"]))
        base = maps.get((ref, row["method"]))
        if own is not None and base is not None:
            rho = spearman_rows(own.numpy(), base.numpy())
            row["rank_correlation"], row["rank_correlation_std"] = float(np.mean(rho)), float(np.std(rho))
        rows.append(DriftRow(**{"rank_correlation": None, "rank_correlation_std": None, "deletion_auc": None,
                                "sanity_passed": None, "sanity_final_spearman": None, **row}))
    rows.sort(key=lambda r: (r.point_index, names.index(r.method)))
    return ExplanationDrift(reference=ref, methods=names, sample_indices=tuple(indices.tolist()), rows=tuple(rows),
                            seed=seed)
