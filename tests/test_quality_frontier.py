"""The quality-versus-cost frontier and recommendations on hand-made points, and the report.json shapes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

import xaudit.explain as xe
from xaudit.explain import _frontier
from xaudit.reports import Policy, audit, load_policy
from xaudit.reports._summary_section import summarize

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
    pts = [xe.frontier_point("saliency", cost, _results("saliency", (0.3, 0.1, 0.0, -0.1), 0.2),
                             random_deletion_auc=0.4),
           xe.frontier_point("deeplift", slow, _results("deeplift", (0.8, 0.8, 0.8, 0.8), 0.05),
                             random_deletion_auc=0.4)]
    assert pts[0].wall_s_per_sample == pytest.approx(1e-3) and pts[0].sanity_passed
    assert pts[1].sanity_score == pytest.approx(0.2)
    assert pts[0].faithfulness == pytest.approx(0.5) and pts[1].faithfulness == pytest.approx(0.875)
    frontier = xe.frontier_json(xe.pareto_frontier(pts))
    assert frontier["pareto"] == ["saliency", "deeplift"]
    assert {p["method"]: p["pareto"] for p in frontier["points"]} == {"saliency": True, "deeplift": True}
    assert all(p["faithful"] is True and p["random_deletion_auc"] == 0.4 and not p["random_deletion_auc_assumed"]
               for p in frontier["points"])
    assert "random_deletion_auc" in frontier["objectives"]["faithfulness"]
    recs = xe.recommendations_json(xe.recommend(pts))
    assert [r["budget"] for r in recs] == ["1 ms/sample", "10 ms/sample", "100 ms/sample", "1 s/sample"]
    assert [r["method"] for r in recs] == ["saliency"] * 4
    assert all((r["faithfulness"], r["deletion_auc"], r["random_deletion_auc"]) == (pytest.approx(0.5), 0.2, 0.4)
               for r in recs)
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


# ---------------------------------------------------------------- faithfulness is the gain over a random map


@pytest.mark.parametrize(("deletion", "random", "expected"), [
    (0.02, 0.04, 0.5),      # 37 classes: half a random map's AUC
    (0.04, 0.04, 0.0),      # exactly random
    (0.06, 0.04, -0.5),     # worse than random
    (0.0, 0.55, 1.0),       # the class probability is gone at the first deletion
    (0.35, 0.55, 1 - 0.35 / 0.55),
])
def test_faithfulness_is_one_minus_auc_over_the_random_auc(deletion: float, random: float, expected: float) -> None:
    p = P("m", 1e-3, deletion_auc=deletion, sanity_passed=True, sanity_score=0.8, random_deletion_auc=random)
    assert p.faithfulness == pytest.approx(expected)
    assert xe.frontier_json(xe.pareto_frontier([p]))["points"][0]["faithfulness"] == pytest.approx(expected)


def test_without_a_measured_random_map_the_default_is_assumed_and_said() -> None:
    p = P("m", 1e-3, deletion_auc=0.2, sanity_passed=True, sanity_score=0.8)
    assert p.faithfulness == pytest.approx(1 - 0.2 / _frontier.RANDOM_DELETION_AUC)
    (point,) = xe.frontier_json(xe.pareto_frontier([p]))["points"]
    assert point["random_deletion_auc_assumed"] is True
    assert point["random_deletion_auc"] == _frontier.RANDOM_DELETION_AUC
    assert "assumed" in xe.method_verdict(_results("m", (0.1, 0.0), 0.2))
    assert "assumed" not in xe.method_verdict(_results("m", (0.1, 0.0), 0.2), random_deletion_auc=0.5)


@pytest.mark.parametrize("random", [0.0, 1e-9])
def test_a_random_auc_of_about_zero_leaves_faithfulness_unmeasured(random: float) -> None:
    p = P("m", 1e-4, deletion_auc=0.0, sanity_passed=True, sanity_score=0.8, random_deletion_auc=random)
    assert p.faithfulness is None and p.faithful is None
    (rec,) = xe.recommend([p], budgets_s=(1.0,))
    assert rec.method is None and "not measured" in rec.reason
    q = xe.quality_json(_results("m", (0.1, 0.0), 0.0), random_deletion_auc=random)
    assert q["faithfulness"] is None and q["faithful_by_deletion"] is None
    assert "not measured" in q["verdict"] and "faithful by deletion (" not in q["verdict"]
    json.dumps(xe.frontier_json(xe.pareto_frontier([p])), allow_nan=False)


@pytest.mark.parametrize("random", [0.04, 0.124, 0.55])
def test_a_map_no_better_than_random_is_never_recommended(random: float) -> None:
    """Deletion AUC equal to the random map's: faithfulness 0, 'not faithful', no recommendation, and the
    default policy's trustworthy-explanation checks fail, however small (many classes) both AUCs are."""
    pts = [P("saliency", 1e-4, deletion_auc=random, sanity_passed=True, sanity_score=0.9, random_deletion_auc=random),
           P("gradcam", 1e-4, deletion_auc=random * 0.99, sanity_passed=True, sanity_score=0.9,
             random_deletion_auc=random)]
    assert pts[0].faithfulness == pytest.approx(0.0) and not pts[0].faithful and not pts[1].faithful
    recs = xe.recommend(pts)
    assert all(r.method is None for r in recs)
    assert all("faithful by deletion" in r.reason and "saliency" not in r.reason.split(":")[0] for r in recs)
    assert "is not faithful by deletion" in xe.method_verdict(_results("saliency", (0.1, 0.0), random),
                                                              random_deletion_auc=random)
    trust = _default_trust_check()
    result = audit({"recommendations": xe.recommendations_json(recs)}, trust)
    assert len(result.checks) == len(recs) and all(c.status == "failed" for c in result.checks)


def _default_trust_check() -> Policy:
    """The default policy reduced to its trustworthy-explanation check (the others read other report parts)."""
    policy = load_policy(None)
    checks = tuple(c for c in policy.checks if c.value == "recommendations[*].faithfulness")
    assert len(checks) == 1
    return dataclasses.replace(policy, checks=checks)


def test_many_classes_a_map_at_half_the_random_auc_is_faithful_and_recommended() -> None:
    """37 classes: a random map scores 0.04; a sane map at 0.02 halves it and must be called faithful."""
    words = xe.method_verdict(_results("integrated_gradients", (0.1, 0.0), 0.02), random_deletion_auc=0.04)
    assert "integrated_gradients is faithful by deletion" in words
    pts = [P("integrated_gradients", 5e-3, deletion_auc=0.02, sanity_passed=True, sanity_score=0.8,
             random_deletion_auc=0.04),
           P("saliency", 1e-4, deletion_auc=0.04, sanity_passed=True, sanity_score=0.8, random_deletion_auc=0.04)]
    recs = {r.budget_s_per_sample: r for r in xe.recommend(pts, budgets_s=(1e-3, 1e-2))}
    assert recs[1e-2].method == "integrated_gradients" and recs[1e-2].faithfulness == pytest.approx(0.5)
    assert recs[1e-2].deletion_auc == 0.02 and recs[1e-2].random_deletion_auc == 0.04
    # saliency is cheap enough for 1 ms but no better than random; IG is faithful but too slow
    assert recs[1e-3].method is None and "the cheapest that does is integrated_gradients" in recs[1e-3].reason
    # the default policy passes the faithful recommendation and fails the budget that has none
    checks = audit({"recommendations": xe.recommendations_json(recs.values())}, _default_trust_check()).checks
    assert [c.status for c in checks] == ["failed", "passed"]


@pytest.mark.parametrize("deletion", [0.39, 0.4, 0.41, 0.45])
def test_at_a_random_auc_of_one_half_the_relative_rule_is_the_old_margin(deletion: float) -> None:
    faithful = deletion <= 0.5 - 0.1
    assert _frontier.faithful_by_deletion(deletion, 0.5) is faithful
    words = xe.method_verdict(_results("m", (0.1, 0.0), deletion), random_deletion_auc=0.5)
    assert (" is faithful by deletion" in words) is faithful and ("not faithful" in words) is not faithful


def test_recommended_iff_sane_and_faithful_by_the_verdicts_own_words() -> None:
    """The recommendation, the verdict and the summary's trusted method come from one predicate."""
    random = 0.3
    methods = {  # name: (cascade Spearman, deletion AUC, wall s/sample)
        "faithful_sane": ((0.2, 0.0), 0.12, 2e-2),
        "random_like_sane": ((0.2, 0.0), 0.29, 1e-4),
        "faithful_insane": ((0.9, 0.9), 0.05, 1e-4),       # "looks faithful ... mostly shows the input"
        "faithful_fails_top": ((0.5, 0.4), 0.05, 1e-4),    # "is faithful by deletion" and fails the check
        "borderline_sane": ((0.2, 0.0), 0.8 * random + 1e-3, 5e-4),
    }
    report: dict = {"methods": [], "metrics": {}}
    points = []
    for name, (spearman, deletion, wall_s) in methods.items():
        results = _results(name, spearman, deletion)
        report["methods"].append({"name": name, "supported": True, "cost": {"wall_s_per_sample": wall_s},
                                  "quality": xe.quality_json(results, random_deletion_auc=random)})
        cost = xe.Cost(n_samples=1, wall_s=wall_s, cpu_s=wall_s, peak_rss_bytes=0, forward_evals=1, backward_evals=1)
        points.append(xe.frontier_point(name, cost, results, random_deletion_auc=random))
    report["frontier"] = xe.frontier_json(xe.pareto_frontier(points))
    report["recommendations"] = xe.recommendations_json(xe.recommend(points))
    recommended = {r["method"] for r in report["recommendations"]} - {None}
    for m in report["methods"]:
        q = m["quality"]
        said_faithful = any(f"{m['name']} {w} faithful by deletion" in q["verdict"] for w in ("is", "looks"))
        assert said_faithful == q["faithful_by_deletion"], m["name"]
        assert (m["name"] in recommended) == (said_faithful and q["sanity_passed"]), m["name"]
        assert q["faithfulness"] == pytest.approx(1 - methods[m["name"]][1] / random)
    assert recommended == {"faithful_sane"}
    summary = summarize(report)
    trusted = next(m for m in report["methods"] if m["name"] == summary["trusted_method"])
    assert f"{trusted['name']} is faithful by deletion" in trusted["quality"]["verdict"]
    line = next(line for line in summary["lines"] if line.startswith("Trust"))
    assert "random_like_sane" not in line and "borderline_sane" not in line


@pytest.mark.parametrize(("deletion", "named"), [(0.1, True), (0.29, False)])
def test_without_the_sanity_check_the_summary_names_only_a_faithful_method(deletion: float, named: bool) -> None:
    """--quality fast: no recommendation; the summary's "by deletion alone" pointer obeys the same test."""
    pts = [P("m", 1e-3, deletion_auc=deletion, random_deletion_auc=0.3)]
    report = {"methods": [{"name": "m", "supported": True, "cost": {}, "quality": {"sanity_passed": None}}],
              "frontier": xe.frontier_json(xe.pareto_frontier(pts)),
              "recommendations": xe.recommendations_json(xe.recommend(pts))}
    summary = summarize(report)
    assert summary["trusted_method"] is None
    assert ("m is the most faithful" in " ".join(summary["lines"])) is named
    assert ("no method beats a random map" in " ".join(summary["lines"])) is not named
