"""Notebook display: ``_repr_html_`` of explanations, sweeps, overfitting diagnostics and reports.

Each is an HTML fragment (no document around it) styled by the report's CSS scoped under ``.xaudit-report``,
with figures as data: URIs and every user-controlled string escaped.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
import torch
from markupsafe import escape

from xaudit.explain import explain
from xaudit.models import Dataset, TrainConfig, build_model, load_dataset, overfitting_diagnostics, run_sweep
from xaudit.reports import build_report
from xaudit.reports._sections import format_number

EVIL = '<script>alert("x")</script>'


def assert_fragment(html: str) -> None:
    """A notebook fragment: no document tags, the scoped container, only scoped CSS rules."""
    lowered = html.lower()
    for tag in ("<html", "<head", "<body", "<!doctype"):
        assert tag not in lowered
    assert 'class="xaudit-report"' in html
    style = re.search(r"<style>(.*?)</style>", html, re.S)
    assert style is not None
    # every selector of every rule (outside @media wrappers) is scoped to the report container
    for selectors in re.findall(r"([^{}]+)\{[^{}]*\}", style.group(1)):
        for selector in selectors.split(","):
            selector = selector.strip()
            if selector and not selector.startswith("@"):
                assert selector.startswith(".xaudit-report"), f"unscoped CSS rule: {selector!r}"


@pytest.fixture(scope="module")
def image_explanation():
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    return explain(model, x, method="saliency", target=[1, 2, 3])


def test_explanation_card_shows_method_cost_and_gallery(image_explanation):
    exp = image_explanation
    html = exp._repr_html_()
    assert_fragment(html)
    assert "<h3>saliency " in html and "3 samples of shape 1×8×8" in html
    cost = exp.cost.per_sample()
    # the exact per-sample numbers, and their rendering, are those of exp.cost.per_sample()
    for key in ("wall_s_per_sample", "cpu_s_per_sample", "peak_rss_bytes", "forward_evals_per_sample",
                "backward_evals_per_sample", "flops_per_sample", "energy_j_per_sample"):
        assert f'data-v="{cost[key]}"' in html, key
    assert format_number(cost["wall_s_per_sample"], "ms", scale=1000) in html
    assert f">{format_number(cost['forward_evals_per_sample'])}<" in html
    assert cost["flops_source"] in html
    assert html.count('<img src="data:image/png;base64,') == 1
    assert "gray underneath" in html  # the image layout's caption


def test_explanation_card_escapes_user_strings(image_explanation):
    evil = {"label": "<img src=x onerror=alert(1)>"}
    exp = dataclasses.replace(image_explanation, method=EVIL, config=evil, settings=evil)
    html = exp._repr_html_()
    assert "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html


def test_explanation_card_of_a_sequence_draws_time_steps():
    model = build_model("gru", (12, 1), 3, seed=0)
    x = torch.randn(2, 12, 1, generator=torch.Generator().manual_seed(1))
    exp = explain(model, x, method="integrated_gradients", target=0, n_steps=8)
    html = exp._repr_html_()
    assert_fragment(html)
    assert "<h3>integrated_gradients " in html and "2 samples of shape 12×1" in html
    assert "attribution of each time step" in html
    assert html.count('src="data:image/png;base64,') == 1


@pytest.fixture(scope="module")
def small_digits() -> Dataset:
    # a user-named dataset: its name reaches the sweep page and must be escaped there
    d = load_dataset("digits")
    return Dataset(name=EVIL, kind="image", x_train=d.x_train[:120], y_train=d.y_train[:120],
                   x_test=d.x_test[:60], y_test=d.y_test[:60], class_names=d.class_names)


def test_sweep_result_renders_the_sweep_page_inline(small_digits):
    result = run_sweep("cnn", small_digits, {"weight_decay": [0.0, 1e-3]}, base=TrainConfig(epochs=1),
                       backend="sequential")
    html = result._repr_html_()
    assert_fragment(html)
    assert "Recommendation" in html and "weight_decay=0.001" in html
    assert f"#{result.recommendation.chosen.point.index}" in html
    assert "<script>" not in html and "xaudit sweep: cnn on &lt;script&gt;" in html
    assert html.count('src="data:image/png;base64,') == 3  # validation curves, gap scatter, training curves


def test_diagnostics_render_the_overfitting_section(small_digits):
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    diagnostics = overfitting_diagnostics(model, small_digits)
    html = diagnostics._repr_html_()
    assert_fragment(html)
    assert "<h3>Overfitting diagnostics</h3>" in html and "expected calibration error" in html
    assert all(str(escape(line)) in html for line in diagnostics.summary)
    assert html.count('src="data:image/png;base64,') == 1  # the reliability diagram


def test_report_repr_is_a_fragment():
    report = build_report("cnn", "digits", methods=["saliency"], n_explain=2, epochs=1, quality="none")
    html = report._repr_html_()
    assert_fragment(html)
    assert 'id="method-saliency"' in html
    assert report.to_html().lstrip().lower().startswith("<!doctype html>")  # the file keeps its document


def test_result_types_do_not_import_reports_until_displayed():
    code = ("import sys, xaudit.explain, xaudit.models; "
            "print([m for m in sys.modules if m.startswith('xaudit.reports')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_repr_of_an_explanation_is_a_one_line_summary_not_the_tensors() -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    exp = explain(model, torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)),
                  method="integrated_gradients", n_steps=8)
    text = repr(exp)
    assert "\n" not in text and len(text) < 300 and "tensor(" not in text
    assert text.startswith("Explanation(method='integrated_gradients', attributions=40×1×8×8 float32")
    assert "n_steps=8" in text and "evals/sample" in text
