"""The quality-versus-cost frontier and recommendations on hand-made points, and the report.json shapes."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import xaudit.explain as xe

P = xe.FrontierPoint


def test_dominated_points_are_excluded_and_ties_kept() -> None:
    pts = [
        P("cheap_good", 1e-4, deletion_auc=0.10, sanity_passed=True, sanity_score=0.8),
        P("slow_same", 1e-2, deletion_auc=0.10, sanity_passed=True, sanity_score=0.8),  # dominated: only slower
        P("twin", 1e-4, deletion_auc=0.10, sanity_passed=True, sanity_score=0.8),  # exact tie: both stay
        P("faithful_insane", 5e-3, deletion_auc=0.05, sanity_passed=False, sanity_score=0.1),  # best faithfulness
        P("worse_everywhere", 2e-2, deletion_auc=0.30, sanity_passed=True, sanity_score=0.5),
    ]
    f = xe.pareto_frontier(pts)
    assert f.pareto == ("cheap_good", "twin", "faithful_insane")
    assert set(f.dominated_by["slow_same"]) == {"cheap_good", "twin"}
    assert "worse_everywhere" in f.dominated_by


def test_missing_values_count_as_worst() -> None:
    pts = [P("measured", 1e-3, deletion_auc=0.2, sanity_passed=True, sanity_score=0.7),
           P("unmeasured", 1e-3, deletion_auc=0.2)]
    assert xe.pareto_frontier(pts).pareto == ("measured",)


def test_recommendations_per_budget() -> None:
    pts = [
        P("saliency", 2e-4, deletion_auc=0.20, sanity_passed=True, sanity_score=0.8),
        P("smoothgrad", 8e-3, deletion_auc=0.12, sanity_passed=True, sanity_score=0.7),
        P("input_x_gradient", 1e-4, deletion_auc=0.05, sanity_passed=False, sanity_score=0.1),
        P("lime", 0.15, deletion_auc=0.05, sanity_passed=True, sanity_score=0.6),
    ]
    recs = {r.budget_s_per_sample: r for r in xe.recommend(pts, budgets_s=(1e-5, 1.5e-4, 1e-3, 1e-2, 1.0))}
    assert recs[1.5e-4].method is None and "the cheapest that does is saliency" in recs[1.5e-4].reason
    assert recs[1e-5].method is None and "No method runs under 10 µs/sample" in recs[1e-5].reason
    # input × gradient is the most faithful under 1 ms but fails the sanity check: never recommended
    assert recs[1e-3].method == "saliency" and "under 1 ms/sample" in recs[1e-3].reason
    assert recs[1e-2].method == "smoothgrad"
    assert recs[1.0].method == "lime"


def test_recommendation_ties_go_to_the_cheaper_method() -> None:
    pts = [P("b", 2e-3, deletion_auc=0.1, sanity_passed=True, sanity_score=0.5),
           P("a", 1e-3, deletion_auc=0.1, sanity_passed=True, sanity_score=0.5)]
    assert xe.recommend(pts, budgets_s=(1.0,))[0].method == "a"


@pytest.mark.parametrize(("pts", "words"), [
    ([P("x", 0.5, deletion_auc=0.1, sanity_passed=True, sanity_score=0.5)], "No method runs under 1 ms/sample"),
    ([P("x", 1e-4, deletion_auc=0.1, sanity_passed=False, sanity_score=0.1)], "No method passes the randomization"),
    ([P("x", 1e-4, deletion_auc=0.1)], "randomization check was not run"),
])
def test_no_recommendation_says_why(pts: list, words: str) -> None:
    (rec,) = xe.recommend(pts, budgets_s=(1e-3,))
    assert rec.method is None and words in rec.reason


def _results(method: str, spearman: tuple[float, ...], deletion: float, stochastic: bool = False) -> dict:
    """Real result objects from the metrics, with numbers set by hand through the metric's own judge."""
    cost = xe.Cost(n_samples=4, wall_s=0.004, cpu_s=0.004, peak_rss_bytes=0, forward_evals=8, backward_evals=4)
    common = {"method": method, "cost": cost}
    judged = xe.ModelRandomization().judge(method, spearman)
    out = {
        "deletion_auc": xe.CurveResult(metric="deletion_auc", value=deletion, fractions=(0.0, 0.5, 1.0),
                                       curve=(1.0, 0.2, 0.1), reverse_auc=0.8, reverse_curve=(1.0, 0.9, 0.1),
                                       baseline="zero", **common),
        "insertion_auc": xe.CurveResult(metric="insertion_auc", value=0.9, fractions=(0.0, 0.5, 1.0),
                                        curve=(0.1, 0.9, 1.0), reverse_auc=0.3, reverse_curve=(0.1, 0.2, 1.0),
                                        baseline="zero", **common),
        "infidelity": xe.MetricResult(metric="infidelity", value=0.01, **common),
        "max_sensitivity": xe.MetricResult(metric="max_sensitivity", value=float("nan"), **common),
        "model_randomization": xe.RandomizationResult(
            metric="model_randomization", value=spearman[-1], layers=tuple(f"l{i}" for i in range(len(spearman))),
            spearman=spearman, ssim=tuple(0.5 for _ in spearman), **judged, **common),
    }
    if stochastic:
        out["seed_stability"] = xe.StabilityResult(metric="seed_stability", value=0.9, seeds=(0, 1, 2, 3, 4),
                                                   matrix=((1.0,),), min_pair=0.8, **common)
    return out


def test_quality_json_has_the_issue_keys_and_honest_words() -> None:
    q = xe.quality_json(_results("input_x_gradient", (0.8, 0.8, 0.8, 0.81), 0.05), random_deletion_auc=0.51)
    assert {"deletion_auc", "insertion_auc", "infidelity", "max_sensitivity", "randomization_similarity",
            "sanity_passed"} <= set(q)
    assert "seed_stability" not in q  # deterministic method
    assert q["randomization_similarity"] == [0.8, 0.8, 0.8, 0.81]  # top-1, top-2, top-3, all
    assert q["sanity_passed"] is False and q["dominated_by_input"] is True
    assert q["max_sensitivity"] is None  # NaN is not JSON
    assert "looks faithful by deletion" in q["verdict"] and "mostly shows the input" in q["verdict"]
    assert set(q["metric_costs"]) == {"deletion_auc", "insertion_auc", "infidelity", "max_sensitivity",
                                      "model_randomization"}
    assert q["metric_costs"]["deletion_auc"]["wall_s_per_sample"] == pytest.approx(0.001)
    json.dumps(q, allow_nan=False)
    stochastic = xe.quality_json(_results("smoothgrad", (0.3, 0.1, 0.0, -0.1), 0.2, stochastic=True))
    assert stochastic["seed_stability"] == 0.9 and stochastic["sanity_passed"] is True
    assert "passes the model-randomization check" in stochastic["verdict"] and "stable across 5 seeds" in \
        stochastic["verdict"]


def test_verdict_for_a_method_no_better_than_random() -> None:
    words = xe.method_verdict(_results("bad", (0.1, 0.0), 0.48), random_deletion_auc=0.5)
    assert "not faithful by deletion" in words


def test_frontier_and_recommendations_json_from_results() -> None:
    cost = xe.Cost(n_samples=10, wall_s=0.01, cpu_s=0.01, peak_rss_bytes=0, forward_evals=10, backward_evals=10)
    slow = xe.Cost(n_samples=10, wall_s=1.0, cpu_s=1.0, peak_rss_bytes=0, forward_evals=10, backward_evals=10)
    pts = [xe.frontier_point("saliency", cost, _results("saliency", (0.3, 0.1, 0.0, -0.1), 0.2)),
           xe.frontier_point("deeplift", slow, _results("deeplift", (0.8, 0.8, 0.8, 0.8), 0.05))]
    assert pts[0].wall_s_per_sample == pytest.approx(1e-3) and pts[0].sanity_passed
    assert pts[1].sanity_score == pytest.approx(0.2)
    frontier = xe.frontier_json(xe.pareto_frontier(pts))
    assert frontier["pareto"] == ["saliency", "deeplift"]
    assert {p["method"]: p["pareto"] for p in frontier["points"]} == {"saliency": True, "deeplift": True}
    recs = xe.recommendations_json(xe.recommend(pts))
    assert [r["budget"] for r in recs] == ["1 ms/sample", "10 ms/sample", "100 ms/sample", "1 s/sample"]
    assert [r["method"] for r in recs] == ["saliency"] * 4
    json.dumps({"frontier": frontier, "recommendations": recs}, allow_nan=False)


def test_end_to_end_on_a_tiny_model() -> None:
    """Metrics → quality json → frontier → recommendations, with real explanations."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4))
    x = torch.rand(6, 1, 4, 4)
    points, report = [], {}
    for name in ("saliency", "integrated_gradients"):
        explainer = xe.get_explainer(name)(model)
        exp = explainer.explain(x)
        results = xe.evaluate_quality(model, exp, explainer=explainer)
        report[name] = xe.quality_json(results)
        points.append(xe.frontier_point(name, exp.cost, results))
    out = {"methods": report, "frontier": xe.frontier_json(xe.pareto_frontier(points)),
           "recommendations": xe.recommendations_json(xe.recommend(points))}
    json.dumps(out, allow_nan=False)
    assert all(len(q["randomization_similarity"]) == 2 for q in report.values())
