"""Explanation quality in ``xaudit report``: per-method quality objects, the frontier and recommendations in
report.json, the quality sections in the HTML, ``--quality none/fast``, and a failing metric recorded as a
reason. The costly knobs (subset, sample grid, sensitivity perturbations) are shrunk so the tests stay fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from xaudit.explain import get_metric
from xaudit.models import Dataset, build_model
from xaudit.models._errors import XauditError
from xaudit.reports import _quality_build, build_report

from _cli_helpers import assert_report_contract, assert_self_contained, read_report_json, run_cli

METHODS = "saliency,integrated_gradients,lime"
QUALITY_KEYS = ("deletion_auc", "insertion_auc", "infidelity", "max_sensitivity", "randomization_similarity",
                "sanity_passed", "verdict", "metric_costs", "failed_metrics")


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, Any]]]:
    """One CLI report per quality mode on the built-in CNN (1 epoch, 4 samples), cheap settings."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("quality")
    mp.setenv("XAUDIT_CACHE_DIR", str(root / "cache"))
    mp.setattr(_quality_build, "EXPENSIVE_SUBSET", 2)
    mp.setattr(_quality_build, "SAMPLE_GRID", (10, 20, 40))
    mp.setattr(_quality_build, "SAMPLE_CURVE_N", 2)
    mp.setattr(_quality_build, "METRIC_PARAMS", {"max_sensitivity": {"n_perturb_samples": 2}})
    capsys = _NoCapture()
    out = {}
    try:
        for mode in ("full", "none"):
            target = root / mode
            code, _, err = run_cli(["report", "--epochs", "1", "--methods", METHODS, "--n-explain", "4",
                                    "--quality", mode, "--out", target, "-q"], capsys)  # type: ignore[arg-type]
            assert code == 0, err
            out[mode] = (target, read_report_json(target))
    finally:
        mp.undo()
    return out


class _NoCapture:
    """run_cli's capsys stand-in for a module-scoped fixture (output is not inspected here)."""

    def readouterr(self) -> tuple[str, str]:
        return "", ""


def test_full_report_has_quality_per_method(reports: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    report = reports["full"][1]
    assert_report_contract(report)
    n_layers = None
    for m in report["methods"]:
        q = m["quality"]
        for key in QUALITY_KEYS:
            assert key in q, (m["name"], key)
        for key in ("deletion_auc", "insertion_auc", "infidelity", "max_sensitivity"):
            assert isinstance(q[key], float), (m["name"], key)
        assert 0.0 <= q["deletion_auc"] <= 1.0 and 0.0 <= q["insertion_auc"] <= 1.0
        sims = q["randomization_similarity"]
        assert isinstance(sims, list) and sims and all(isinstance(v, float) and -1 <= v <= 1 for v in sims)
        n_layers = n_layers or len(sims)
        assert len(sims) == n_layers == len(q["randomization_layers"])
        assert isinstance(q["sanity_passed"], bool)
        assert isinstance(q["verdict"], str) and m["name"] in q["verdict"]
        assert q["failed_metrics"] == {}
        for metric, cost in q["metric_costs"].items():
            assert cost["forward_evals_per_sample"] > 0, (m["name"], metric)
        # the re-running metrics score the subset, the cheap ones every sample
        assert q["metric_samples"]["model_randomization"] == 2 and q["metric_samples"]["deletion_auc"] == 4
        # seed stability is measured for the stochastic method only
        assert ("seed_stability" in q) == m["capabilities"]["is_stochastic"]
    lime = next(m for m in report["methods"] if m["name"] == "lime")
    assert isinstance(lime["quality"]["seed_stability"], float)


def test_full_report_top_level_quality(reports: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    report = reports["full"][1]
    names = METHODS.split(",")
    frontier = report["frontier"]
    assert [p["method"] for p in frontier["points"]] == names
    assert frontier["pareto"] and set(frontier["pareto"]) <= set(names)
    assert all(p["pareto"] == (p["method"] in frontier["pareto"]) for p in frontier["points"])
    recs = report["recommendations"]
    assert recs and all(isinstance(r["reason"], str) and r["reason"] for r in recs)
    # a method that fails the randomization check is never recommended, nor one its verdict calls unfaithful
    passing = {m["name"] for m in report["methods"] if m["quality"]["sanity_passed"]}
    assert all(r["method"] is None or r["method"] in passing for r in recs)
    verdicts = {m["name"]: m["quality"]["verdict"] for m in report["methods"]}
    assert all(r["method"] is None or f"{r['method']} is faithful by deletion" in verdicts[r["method"]] for r in recs)
    # faithfulness is the gain over the report's own random map
    random_auc = report["random_map"]["deletion_auc"]
    for p in frontier["points"]:
        assert p["faithfulness"] == pytest.approx(1 - p["deletion_auc"] / random_auc)
        assert p["random_deletion_auc"] == random_auc and p["random_deletion_auc_assumed"] is False
    trusted = report["summary"]["trusted_method"]
    assert trusted is None or f"{trusted} is faithful by deletion" in verdicts[trusted]
    agreement = report["agreement"]
    assert agreement["methods"] == names and len(agreement["matrix"]) == 3
    assert all(agreement["matrix"][i][i] == pytest.approx(1.0) for i in range(3))
    assert isinstance(report["random_map"]["deletion_auc"], float)
    config = report["quality_config"]
    assert config["mode"] == "full" and config["n_subset"] == 2 and config["subset_note"]
    assert set(report["sample_curves"]) == {"lime"}
    curve = report["sample_curves"]["lime"]
    assert curve["param"] == "num_samples" and curve["n_samples_grid"] == [10, 20, 40]
    # the largest count is the reference: zero error against itself
    assert curve["relative_mae"][-1] == 0.0 and curve["rank_error"][-1] == pytest.approx(0.0, abs=1e-9)


def test_full_report_html_has_quality_sections(reports: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    html = (reports["full"][0] / "report.html").read_text(encoding="utf-8")
    assert_self_contained(html)
    for anchor in ('id="quality"', 'id="frontier"', 'id="sample_curves"', 'class="quality"',
                   "randomization curves", "method agreement", "quality against cost", "samples against error"):
        assert anchor in html, anchor
    report = reports["full"][1]
    for m in report["methods"]:
        assert m["quality"]["verdict"].split(" (")[0] in html


def test_quality_none_leaves_quality_empty_and_costs_nothing(
        reports: dict[str, tuple[Path, dict[str, Any]]]) -> None:
    full, none = reports["full"][1], reports["none"][1]
    assert all(m["quality"] == {} for m in none["methods"])
    assert none["frontier"] is None and none["recommendations"] == [] and none["sample_curves"] == {}
    assert none["quality_config"]["model_evals"] == {"forward": 0, "backward": 0}
    assert full["quality_config"]["model_evals"]["forward"] > 0
    html = (reports["none"][0] / "report.html").read_text(encoding="utf-8")
    assert 'class="quality"' not in html and "quality against cost" not in html


def test_failing_metric_is_recorded_as_a_reason(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def refuse(self: Any, ctx: Any, explanations: Any, explainer: Any) -> dict[str, Any]:
        raise XauditError("infidelity refused on purpose")

    monkeypatch.setattr(get_metric("infidelity"), "_compute", refuse)
    monkeypatch.setenv("XAUDIT_CACHE_DIR", str(tmp_path / "cache"))
    g = torch.Generator().manual_seed(0)
    data = Dataset(name="tiny", kind="image", x_train=torch.rand(12, 1, 8, 8, generator=g),
                   y_train=torch.arange(12) % 3, x_test=torch.rand(4, 1, 8, 8, generator=g),
                   y_test=torch.arange(4) % 3, class_names=("a", "b", "c"))
    monkeypatch.setattr(_quality_build, "EXPENSIVE_METRICS", ())
    report = build_report(build_model("cnn", data.input_shape, 3, seed=0), data, methods=["saliency"], n_explain=3)
    q = report.json["methods"][0]["quality"]
    assert q["infidelity"] is None and q["failed_metrics"] == {"infidelity": "infidelity refused on purpose"}
    assert isinstance(q["deletion_auc"], float)
    assert "infidelity refused on purpose" in report.to_html()
    with pytest.raises(XauditError, match="quality mode"):
        build_report(build_model("cnn", data.input_shape, 3, seed=0), data, methods=["saliency"], quality="fulll")
