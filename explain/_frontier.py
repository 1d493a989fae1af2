"""Quality versus cost: the Pareto frontier, per-budget recommendations, and the report.json shapes.

Pure functions over numbers. A method is a point with three objectives: faithfulness, sanity (1 − the mean
of the randomization cascade's Spearman values clipped to [0, 1], higher is better) and cost (wall seconds
per explained sample, lower is better). A point is on the frontier when no other point is at least as good
on all three and better on one; a missing value counts as the worst possible, since an unmeasured property
cannot be assumed good.

Faithfulness is the gain of a map over a uniformly random one by deletion (Petsiuk et al. 2018):
``1 − deletion_auc / random_deletion_auc``, both AUCs measured on the same model and samples. 0 means no
better than random, 1 perfect (the class probability vanishes at the first deletion), negative worse than
random. Unlike ``1 − deletion_auc`` it does not reward an unconfident model: a 37-class model whose random
map already scores 0.04 leaves a map that also scores 0.04 at 0, not 0.96. Without a measured random map
:data:`RANDOM_DELETION_AUC` is assumed (and the verdict says so); a random AUC of about 0 leaves it
unmeasured. A method is *faithful by deletion* when its AUC is at most :data:`FAITHFUL_AUC_FRACTION` of the
random map's (:func:`faithful_by_deletion`). That one predicate decides the verdict's words, the
recommendations and so the report's summary: a recommendation for a budget names the most faithful method
within it that passes the randomization check AND is faithful by deletion — a method that fails the check
is never recommended, however faithful it looks by deletion, and neither is one no better than a random map.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._cost import Cost
from ._faithfulness import CurveResult
from ._quality import MetricResult, _json_float
from ._sanity import RandomizationResult, StabilityResult

#: Per-sample budgets recommendations are made for: 1 ms, 10 ms, 100 ms, 1 s.
DEFAULT_BUDGETS_S: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0)
#: A deletion AUC at most this fraction of the random map's counts as faithful by deletion, i.e. faithfulness
#: ≥ 1 − 0.8 = 0.2. Relative, not a fixed margin: at a random AUC of 0.5 it is the former margin of 0.1
#: (0.4 = 0.5 − 0.1), and it still applies when many classes make every AUC small (random 0.04: at most 0.032).
FAITHFUL_AUC_FRACTION = 0.8
#: The same test on the faithfulness scale, 1 − :data:`FAITHFUL_AUC_FRACTION` (for figures and words only:
#: :func:`faithful_by_deletion` compares the AUCs, which a rounded ratio could put on the wrong side).
FAITHFUL_MIN = round(1.0 - FAITHFUL_AUC_FRACTION, 12)
#: A random map's typical deletion AUC, assumed when no measured reference is given.
RANDOM_DELETION_AUC = 0.5
#: Below this random-map deletion AUC the model gives the explained class next to no probability before any
#: deletion: the ratio would divide by noise, so faithfulness is left unmeasured (None).
MIN_RANDOM_DELETION_AUC = 1e-6
#: Below this mean pairwise rank correlation across seeds, a map is called seed-dependent.
STABLE_SEED_SPEARMAN = 0.5


def reference_deletion_auc(random_deletion_auc: float | None) -> float:
    """The random map's measured deletion AUC, or :data:`RANDOM_DELETION_AUC` when none was measured."""
    measured = _finite(random_deletion_auc)
    return RANDOM_DELETION_AUC if measured is None else measured


def deletion_faithfulness(deletion_auc: float | None, random_deletion_auc: float | None = None) -> float | None:
    """Gain over a random map by deletion, ``1 − deletion_auc / random_deletion_auc`` (0 = no better than
    random, 1 = perfect, < 0 = worse); None when either AUC is missing or the random one is about 0."""
    d, ref = _finite(deletion_auc), reference_deletion_auc(random_deletion_auc)
    return None if d is None or ref < MIN_RANDOM_DELETION_AUC else 1.0 - d / ref


def faithful_by_deletion(deletion_auc: float | None, random_deletion_auc: float | None = None) -> bool | None:
    """Whether a deletion AUC is at most :data:`FAITHFUL_AUC_FRACTION` of the random map's (None: cannot tell).

    The one predicate behind the verdict's "faithful by deletion", the recommendations and the summary.
    Compared on the AUCs, not on the rounded ratio, so an AUC exactly at the threshold counts as faithful.
    """
    d, ref = _finite(deletion_auc), reference_deletion_auc(random_deletion_auc)
    return None if d is None or ref < MIN_RANDOM_DELETION_AUC else d <= FAITHFUL_AUC_FRACTION * ref


@dataclass(frozen=True)
class FrontierPoint:
    """One method's position: cost per sample, deletion AUC, the random map's deletion AUC on the same samples
    and the randomization outcome (None = not measured; a missing random AUC means
    :data:`RANDOM_DELETION_AUC` is assumed)."""

    method: str
    wall_s_per_sample: float
    deletion_auc: float | None = None
    sanity_passed: bool | None = None
    sanity_score: float | None = None
    random_deletion_auc: float | None = None

    @property
    def faithfulness(self) -> float | None:
        """``1 − deletion_auc / random_deletion_auc``: see :func:`deletion_faithfulness`."""
        return deletion_faithfulness(self.deletion_auc, self.random_deletion_auc)

    @property
    def faithful(self) -> bool | None:
        """Faithful by deletion: see :func:`faithful_by_deletion`."""
        return faithful_by_deletion(self.deletion_auc, self.random_deletion_auc)

    @property
    def reference_deletion_auc(self) -> float:
        """The random map's deletion AUC this point is compared with (measured or assumed)."""
        return reference_deletion_auc(self.random_deletion_auc)


@dataclass(frozen=True)
class Frontier:
    """All points, the Pareto-optimal method names (in input order) and, per dominated method, its dominators."""

    points: tuple[FrontierPoint, ...]
    pareto: tuple[str, ...]
    dominated_by: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Recommendation:
    """The method recommended under one per-sample budget (None when none qualifies) and why, in words."""

    budget_s_per_sample: float
    method: str | None
    reason: str
    faithfulness: float | None = None
    wall_s_per_sample: float | None = None
    deletion_auc: float | None = None
    random_deletion_auc: float | None = None


def _finite(v: float | None) -> float | None:
    """``v`` as a float, or None when it is missing or not finite."""
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _objectives(p: FrontierPoint) -> tuple[float, float, float]:
    """(faithfulness, sanity, −cost): all three higher-is-better, missing values worst."""
    faith, sanity, cost = p.faithfulness, _finite(p.sanity_score), _finite(p.wall_s_per_sample)
    return (-math.inf if faith is None else faith, -math.inf if sanity is None else sanity,
            -math.inf if cost is None else -cost)


def dominates(a: FrontierPoint, b: FrontierPoint) -> bool:
    """True when ``a`` is at least as good as ``b`` on every objective and strictly better on one."""
    oa, ob = _objectives(a), _objectives(b)
    return all(x >= y for x, y in zip(oa, ob)) and any(x > y for x, y in zip(oa, ob))


def pareto_frontier(points: Iterable[FrontierPoint]) -> Frontier:
    """The Pareto set over (faithfulness, sanity, cost); exact ties are all kept."""
    pts = tuple(points)
    names = [p.method for p in pts]
    if len(set(names)) != len(names):
        raise ValueError(f"frontier points must have distinct method names, got {names}")
    dominated = {p.method: tuple(q.method for q in pts if dominates(q, p)) for p in pts}
    return Frontier(points=pts, pareto=tuple(n for n in names if not dominated[n]),
                    dominated_by={n: d for n, d in dominated.items() if d})


def format_seconds(s: float) -> str:
    """``0.00016`` → ``"0.16 ms"``, ``2.5`` → ``"2.5 s"``."""
    if s < 1e-3:
        return f"{s * 1e6:.3g} µs"
    if s < 1.0:
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def _auc_text(v: float) -> str:
    """An AUC in words: two decimals, or two significant digits below 0.1 (many-class AUCs are small)."""
    return f"{v:.2f}" if abs(v) >= 0.1 else f"{v:.2g}"


def _deletion_evidence(p: FrontierPoint) -> str:
    assumed = "" if _finite(p.random_deletion_auc) is not None else " (assumed: no random map was measured)"
    faith = "unmeasured" if p.faithfulness is None else f"{p.faithfulness:.2f}"
    return (f"deletion AUC {_auc_text(p.deletion_auc or 0.0)} against {_auc_text(p.reference_deletion_auc)} "
            f"for a random map{assumed}, faithfulness {faith}")


def recommend(points: Iterable[FrontierPoint], budgets_s: Sequence[float] = DEFAULT_BUDGETS_S,
              ) -> tuple[Recommendation, ...]:
    """Per budget, the most faithful method that passes the randomization check, is faithful by deletion
    (:func:`faithful_by_deletion`, the verdict's own test) and costs at most the budget.

    Ties in faithfulness go to the cheaper method, then to the name.
    """
    pts = [p for p in points if _finite(p.wall_s_per_sample) is not None]
    sane = [p for p in pts if p.sanity_passed]
    qualified = [p for p in sane if p.faithful]
    rule = f"deletion AUC at most {FAITHFUL_AUC_FRACTION:.0%} of a random map's"
    out = []
    for budget in sorted(budgets_s):
        label = f"{format_seconds(budget)}/sample"
        within = [p for p in qualified if p.wall_s_per_sample <= budget]
        if within:
            best = min(within, key=lambda p: (-(p.faithfulness or 0.0), p.wall_s_per_sample, p.method))
            reason = (f"{best.method} is the most faithful method that passes the randomization check and beats a "
                      f"random map by deletion under {label}: {_deletion_evidence(best)}, at "
                      f"{format_seconds(best.wall_s_per_sample)}/sample.")
            out.append(Recommendation(budget, best.method, reason, best.faithfulness, best.wall_s_per_sample,
                                      best.deletion_auc, best.reference_deletion_auc))
            continue
        affordable = [p for p in pts if p.wall_s_per_sample <= budget]
        if not pts:
            reason = f"No method was measured, so none is recommended under {label}."
        elif not affordable:
            cheapest = min(pts, key=lambda p: (p.wall_s_per_sample, p.method))
            reason = (f"No method runs under {label}; the cheapest is {cheapest.method} at "
                      f"{format_seconds(cheapest.wall_s_per_sample)}/sample.")
        elif qualified:
            cheapest = min(qualified, key=lambda p: (p.wall_s_per_sample, p.method))
            reason = (f"No method that passes the randomization check and is faithful by deletion ({rule}) runs "
                      f"under {label}; the cheapest that does is {cheapest.method} at "
                      f"{format_seconds(cheapest.wall_s_per_sample)}/sample.")
        elif all(p.sanity_passed is None for p in pts):
            reason = (f"The randomization check was not run, so no method is recommended under {label}: "
                      "faithfulness alone can reward maps that only show the input.")
        elif not sane:
            reason = (f"No method passes the randomization check on this model, so none is recommended under "
                      f"{label}.")
        else:
            measured = [p for p in sane if p.faithfulness is not None]
            if measured:
                best = min(measured, key=lambda p: (-(p.faithfulness or 0.0), p.wall_s_per_sample, p.method))
                found = f"the best of them, {best.method}, has {_deletion_evidence(best)}"
            else:
                found = "their faithfulness was not measured"
            reason = (f"No method that passes the randomization check is faithful by deletion ({rule}), so none "
                      f"is recommended under {label}: {found}.")
        out.append(Recommendation(budget, None, reason))
    return tuple(out)


# ---------------------------------------------------------------------------------------------- from results


def _by_metric(results: Mapping[str, MetricResult] | Iterable[MetricResult]) -> dict[str, MetricResult]:
    items = results.values() if isinstance(results, Mapping) else results
    return {r.metric: r for r in items}


def _randomization(by: Mapping[str, MetricResult]) -> RandomizationResult | None:
    r = by.get("model_randomization")
    return r if isinstance(r, RandomizationResult) else None


def sanity_score(spearman: Sequence[float]) -> float:
    """1 − mean of the cascade's Spearman values clipped to [0, 1] (1 = the map is gone at the first step)."""
    return 1.0 - float(np.clip(np.asarray(spearman, dtype=np.float64), 0.0, 1.0).mean())


def frontier_point(method: str, cost: Cost, results: Mapping[str, MetricResult] | Iterable[MetricResult], *,
                   random_deletion_auc: float | None = None) -> FrontierPoint:
    """A method's point from its explanation's :class:`Cost` and its metric results; ``random_deletion_auc``
    is a random map's deletion AUC on the same samples (None: :data:`RANDOM_DELETION_AUC` is assumed)."""
    by = _by_metric(results)
    deletion = by.get("deletion_auc")
    rnd = _randomization(by)
    return FrontierPoint(method=method, wall_s_per_sample=cost.wall_s / max(cost.n_samples, 1),
                         deletion_auc=deletion.value if deletion is not None else None,
                         sanity_passed=rnd.passed if rnd else None,
                         sanity_score=sanity_score(rnd.spearman) if rnd else None,
                         random_deletion_auc=random_deletion_auc)


def method_verdict(results: Mapping[str, MetricResult] | Iterable[MetricResult], *,
                   random_deletion_auc: float | None = None) -> str:
    """The words next to the numbers: is the method faithful by deletion, does it pass the sanity check,
    and — the honest part — does a good deletion score come from a map that mostly shows the input?"""
    by = _by_metric(results)
    if not by:
        return "No quality metric was computed."
    method = next(iter(by.values())).method
    sentences = []
    deletion = by.get("deletion_auc")
    rnd = _randomization(by)
    point = FrontierPoint(method, math.nan, deletion_auc=deletion.value if deletion is not None else None,
                          random_deletion_auc=random_deletion_auc)
    faithful = point.faithful
    if deletion is not None and _finite(deletion.value) is None:
        sentences.append(f"{method}'s faithfulness by deletion is not measured: its deletion AUC is not finite.")
    elif deletion is not None and faithful is None:
        sentences.append(f"{method}'s faithfulness by deletion is not measured: a random map's deletion AUC is "
                         f"{point.reference_deletion_auc:.2g}, so the model gives the explained class next to no "
                         "probability to delete.")
    elif deletion is not None:
        evidence = _deletion_evidence(point)
        if faithful and rnd is not None and rnd.dominated_by_input:
            sentences.append(f"{method} looks faithful by deletion ({evidence}) but fails the model-randomization "
                             f"check: with every layer randomized its map still has rank correlation {rnd.value:.2f} "
                             "with the trained model's, so it mostly shows the input and the architecture's own "
                             "structure, not what the model learned.")
            rnd = None  # said already
        else:
            need = "" if faithful else f"; {FAITHFUL_MIN:.2f} needed"
            word = "faithful" if faithful else "not faithful"
            sentences.append(f"{method} is {word} by deletion ({evidence}{need}).")
    if rnd is not None:
        sentences.append(rnd.verdict)
    stability = by.get("seed_stability")
    if isinstance(stability, StabilityResult):
        word = "stable" if stability.value >= STABLE_SEED_SPEARMAN else "seed-dependent"
        sentences.append(f"Its map is {word} across {len(stability.seeds)} seeds (mean rank correlation "
                         f"{stability.value:.2f}).")
    return " ".join(sentences) or f"{method}: no faithfulness or sanity metric was computed."


def quality_json(results: Mapping[str, MetricResult] | Iterable[MetricResult], *,
                 random_deletion_auc: float | None = None) -> dict[str, Any]:
    """report.json's per-method ``quality`` object (numbers, the verdict, curves and each metric's cost)."""
    by = _by_metric(results)

    def value(name: str) -> float | None:
        r = by.get(name)
        return _json_float(r.value) if r is not None else None

    rnd = _randomization(by)
    deletion = value("deletion_auc")
    out: dict[str, Any] = {
        "deletion_auc": deletion,
        # the gain over a random map and the verdict's test, so a policy can gate on either per method
        "faithfulness": _json_float(deletion_faithfulness(deletion, random_deletion_auc)),
        "faithful_by_deletion": faithful_by_deletion(deletion, random_deletion_auc),
        "insertion_auc": value("insertion_auc"),
        "infidelity": value("infidelity"),
        "max_sensitivity": value("max_sensitivity"),
        "randomization_similarity": [_json_float(v) for v in rnd.spearman] if rnd else None,
        "randomization_ssim": [_json_float(v) for v in rnd.ssim] if rnd else None,
        "randomization_layers": list(rnd.layers) if rnd else None,
        "sanity_passed": rnd.passed if rnd else None,
        "dominated_by_input": rnd.dominated_by_input if rnd else None,
    }
    if "seed_stability" in by:
        out["seed_stability"] = value("seed_stability")
    curves: dict[str, Any] = {}
    for name, key in (("deletion_auc", "deletion"), ("insertion_auc", "insertion")):
        r = by.get(name)
        if isinstance(r, CurveResult):
            curves["fractions"] = list(r.fractions)
            curves[key] = [_json_float(v) for v in r.curve]
    out["curves"] = curves
    out["verdict"] = method_verdict(by, random_deletion_auc=random_deletion_auc)
    out["metric_costs"] = {name: r.cost.per_sample() for name, r in by.items()}
    return out


#: report.json's words for faithfulness, also shown in the report's "How each figure was measured".
FAITHFULNESS_DEFINITION = (
    "1 - deletion_auc / random_deletion_auc: the gain over a uniformly random map by deletion on the same model "
    "and samples (0 = no better than random, 1 = perfect, negative = worse than random; higher is better). "
    "random_deletion_auc is the report's measured random map (random_map.deletion_auc), or "
    f"{RANDOM_DELETION_AUC} assumed when none was measured; unmeasured (null) when it is about 0")
#: The test behind "faithful by deletion", the recommendations and the summary, in report.json's words.
FAITHFUL_RULE = (f"faithful by deletion: deletion_auc <= {FAITHFUL_AUC_FRACTION} * random_deletion_auc, "
                 f"i.e. faithfulness >= {FAITHFUL_MIN}; only a method that is faithful by "
                 "deletion and passes the randomization check is recommended")


def frontier_json(frontier: Frontier) -> dict[str, Any]:
    """report.json's top-level ``frontier`` object."""
    return {
        "objectives": {
            "faithfulness": FAITHFULNESS_DEFINITION,
            "sanity": "1 - mean Spearman of the randomization cascade, clipped to [0, 1] (higher is better)",
            "cost": "wall_s_per_sample of the explanation (lower is better)",
        },
        "faithful_rule": FAITHFUL_RULE,
        "faithful_min": FAITHFUL_MIN,
        "pareto": list(frontier.pareto),
        "points": [{"method": p.method, "wall_s_per_sample": _json_float(p.wall_s_per_sample),
                    "faithfulness": _json_float(p.faithfulness), "deletion_auc": _json_float(p.deletion_auc),
                    "random_deletion_auc": _json_float(p.reference_deletion_auc),
                    "random_deletion_auc_assumed": _finite(p.random_deletion_auc) is None,
                    "faithful": p.faithful,
                    "sanity": _json_float(p.sanity_score), "sanity_passed": p.sanity_passed,
                    "pareto": p.method in frontier.pareto,
                    "dominated_by": list(frontier.dominated_by.get(p.method, ()))} for p in frontier.points],
    }


def recommendations_json(recommendations: Iterable[Recommendation]) -> list[dict[str, Any]]:
    """report.json's top-level ``recommendations`` list, one entry per budget."""
    return [{"budget_s_per_sample": r.budget_s_per_sample, "budget": f"{format_seconds(r.budget_s_per_sample)}/sample",
             "method": r.method, "faithfulness": _json_float(r.faithfulness),
             "deletion_auc": _json_float(r.deletion_auc), "random_deletion_auc": _json_float(r.random_deletion_auc),
             "wall_s_per_sample": _json_float(r.wall_s_per_sample), "reason": r.reason} for r in recommendations]
