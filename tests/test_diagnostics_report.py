"""The report side: the overfitting section of ``xaudit report``, the sweep page, and explanation drift."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from _cli_helpers import assert_self_contained
from xaudit.models._data import load_dataset
from xaudit.models._errors import XauditError
from xaudit.models._sweep import run_sweep
from xaudit.models._train import TrainConfig, stratified_split, train_model
from xaudit.reports._drift import explanation_drift
from xaudit.reports._report import _environment
from xaudit.reports._overfit_section import OverfittingSection, render_overfitting
from xaudit.reports._sweep_report import SweepReport, write_sweep_report


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("drift") / "run"
    return run_sweep("cnn", "digits", ["weight_decay=0,1e-2", "augment=none,shift"],
                     base=TrainConfig(epochs=2, batch_size=32), n_train=200, n_test=80, backend="sequential",
                     run_dir=run_dir)


def test_overfitting_section_json_and_html() -> None:
    data = load_dataset("digits").subset(200, 80)
    config = TrainConfig(epochs=2, batch_size=32)
    trained = train_model("cnn", data, config)
    ctx = SimpleNamespace(subject=SimpleNamespace(model=trained.model, dataset=data, history=trained.history,
                                                  train_config=config))
    section = OverfittingSection()
    part = section.json_part(ctx)  # type: ignore[arg-type]
    assert list(part) == ["diagnostics"]
    diagnostics = json.loads(json.dumps(part["diagnostics"], allow_nan=False))
    # the subject's training config rebuilds the split: train accuracy on the fitted samples, not all 200
    fit, _ = stratified_split(data.y_train, config.val_fraction, torch.Generator().manual_seed(config.seed))
    assert diagnostics["gap"]["train_split"] == "fit" and diagnostics["gap"]["n_train"] == len(fit) < 200
    assert diagnostics["gap"]["train_accuracy"] == trained.history[-1].train_accuracy
    html = section.render(ctx, part, _environment())  # type: ignore[arg-type]
    assert_self_contained(html)
    assert "reliability diagram" in html and "features.2.weight" in html
    assert diagnostics["gap"]["verdict"] in html.replace(" ", "_")
    assert str(render_overfitting(diagnostics)) == str(html)


def test_drift_against_the_unregularized_point(sweep) -> None:
    drift = explanation_drift(sweep, methods=["saliency", "input_x_gradient"], n_samples=6, sanity=False)
    assert drift.reference == 0 and drift.methods == ("saliency", "input_x_gradient")
    assert len(drift.rows) == 8 and {r.point_index for r in drift.rows} == {0, 1, 2, 3}
    for row in drift.rows:
        assert row.deletion_auc is not None and 0 <= row.deletion_auc <= 1
        assert row.random_deletion_auc is not None and row.sanity_passed is None
        # each model against its own random map: the sweep's models differ in confidence, so raw AUCs do not compare
        assert row.faithfulness == pytest.approx(1 - row.deletion_auc / row.random_deletion_auc)
        assert row.to_json()["faithfulness"] == row.faithfulness
        if row.point_index == 0:
            assert row.rank_correlation == pytest.approx(1.0)
        else:
            assert -1 <= row.rank_correlation <= 1
    # the same models and inputs give the same maps: a second call agrees exactly
    again = explanation_drift(sweep, methods=["saliency"], n_samples=6, sanity=False)
    assert [r.rank_correlation for r in again.rows] == [r.rank_correlation for r in drift.rows_for("saliency")]
    assert json.dumps(drift.to_json(), allow_nan=False)
    assert "faithfulness" in drift.interpretation("saliency")
    with pytest.raises(XauditError, match="out of range"):
        explanation_drift(sweep, reference=9)
    with pytest.raises(XauditError, match="not the one the sweep ran on"):
        explanation_drift(sweep, dataset=load_dataset("digits").subset(100, 80))


def test_drift_sanity_check(sweep) -> None:
    drift = explanation_drift(sweep, methods=["saliency"], n_samples=4, reference=1)
    assert drift.reference == 1
    assert all(isinstance(r.sanity_passed, bool) and r.sanity_final_spearman is not None for r in drift.rows)


def test_sweep_page(sweep, tmp_path: Path) -> None:
    files = write_sweep_report(sweep, tmp_path / "page")
    data = json.loads(files.json.read_text())
    assert data["drift"] is None and data["xaudit_version"] and len(data["trials"]) == 4
    html = files.html.read_text()
    assert_self_contained(html)
    assert html.count("data:image/png;base64,") == 3  # curves, scatter, training curves (no drift)
    assert f"#{data['recommendation']['chosen']}" in html
    assert "<script" not in SweepReport.from_result(sweep)._repr_html_()


def test_sweep_page_escapes_names(sweep) -> None:
    report = SweepReport.from_result(sweep)
    report.json["data"] = "<img src=x onerror=alert(1)>"
    assert "<img src=x" not in report.to_html()


def test_models_never_import_explain_or_reports() -> None:
    import subprocess
    import sys

    code = ("import sys\n"
            "import xaudit.models._sweep, xaudit.models._diagnostics, xaudit.models._backends\n"
            "bad = [m for m in sys.modules if m.startswith(('xaudit.explain', 'xaudit.reports'))]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert torch.get_num_threads() >= 1
