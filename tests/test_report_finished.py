"""The finished report page: the summary verdict at the top (an oracle over hand-built report dicts), the
model card, one page per method, sequence heatmaps, the measurement section, and a page that can load
nothing (CSP, no web address), keeps its script small and escapes every user-controlled string."""

from __future__ import annotations

import base64
import re
import struct
from typing import Any

import numpy as np
import pytest
import torch
from markupsafe import escape

from xaudit.models import Dataset
from xaudit.reports import Report, build_report
from xaudit.reports._figures import sample_grid
from xaudit.reports._sections import breakable, format_number
from xaudit.reports._summary_section import SummarySection, summarize

from _cli_helpers import assert_self_contained

EVIL = "<script>alert(1)</script>"
METHODS = ["saliency", "integrated_gradients"]
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'")


def _dataset(shape: tuple[int, ...], kind: str, class_names: tuple[str, ...]) -> Dataset:
    g = torch.Generator().manual_seed(0)
    n = len(class_names)
    return Dataset(name=f"tiny-{kind}", kind=kind,
                   x_train=torch.rand(30, *shape, generator=g), y_train=torch.arange(30) % n,
                   x_test=torch.rand(12, *shape, generator=g), y_test=torch.arange(12) % n,
                   class_names=class_names)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """A one-epoch CNN on tiny images with a hostile class name, two methods, every quality metric."""
    data = _dataset((1, 8, 8), "image", (EVIL, "b & c", "plain"))
    return build_report("cnn", data, methods=METHODS, n_explain=3, epochs=1, quality="full", use_cache=False)


@pytest.fixture(scope="module")
def html(report: Report) -> str:
    return report.to_html()


# ------------------------------------------------------------------------------------- the verdict oracle


def _hand_report(*, gap_verdict: str | None, sanity: dict[str, bool | None], recommended: list[str | None],
                 audit: dict[str, Any] | None = None) -> dict[str, Any]:
    """A report.json reduced to what the summary reads: two budgets, methods with their sanity outcomes."""
    out: dict[str, Any] = {
        "metrics": {"train_accuracy": 0.99, "test_accuracy": 0.8, "generalization_gap": 0.19},
        "methods": [{"name": name, "supported": True, "cost": {"wall_s_per_sample": 0.001},
                     "quality": {"sanity_passed": passed}} for name, passed in sanity.items()],
        "recommendations": [{"budget_s_per_sample": b, "budget": f"{b} s/sample", "method": m,
                             "faithfulness": 0.9 if m else None, "wall_s_per_sample": 0.002 if m else None,
                             "reason": "…"} for b, m in zip((0.001, 1.0), recommended)],
        "frontier": None,
    }
    out["methods"].append({"name": "gradcam", "supported": False, "reason": "needs a conv layer", "cost": None,
                           "quality": {}})
    if gap_verdict:
        out["diagnostics"] = {"gap": {"verdict": gap_verdict, "interpretation": f"{gap_verdict} reading"}}
    if audit is not None:
        out["audit"] = audit
    return out


def test_summary_verdicts_from_a_hand_built_report() -> None:
    hand = _hand_report(gap_verdict="severe", sanity={"saliency": True, "integrated_gradients": False,
                                                      "lime": False},
                        recommended=[None, "saliency"],
                        audit={"passed": False, "checks": [{"name": "gap", "value": 0.19, "threshold": 0.05,
                                                            "passed": False},
                                                           {"name": "sanity", "value": 1, "threshold": 1,
                                                            "passed": True}]})
    s = summarize(hand)
    assert s["generalizes"] is False and s["gap_verdict"] == "severe" and s["test_accuracy"] == 0.8
    assert s["trusted_method"] == "saliency" and s["trusted_s_per_sample"] == 0.002
    assert s["sanity_failed"] == ["integrated_gradients", "lime"] and s["sanity_passed"] == ["saliency"]
    assert s["unsupported"] == ["gradcam"]
    assert s["audit_passed"] is False and s["audit_failed_checks"] == ["gap"]
    text = " ".join(s["lines"])
    assert "Test accuracy 80.0%" in text and "severe reading" in text
    assert "Trust saliency" in text and "integrated_gradients, lime." in text
    assert "Audit FAILED: 1 of 2 checks fail (gap)" in text
    assert all(isinstance(line, str) for line in s["lines"])


def test_summary_without_trustworthy_method_audit_or_diagnostics() -> None:
    s = summarize(_hand_report(gap_verdict="no_overfitting", sanity={"a": False, "b": False},
                               recommended=[None, None]))
    assert s["generalizes"] is True and s["trusted_method"] is None and s["audit_passed"] is None
    assert "every checked method fails" in " ".join(s["lines"])
    assert not any(line.startswith("Audit") for line in s["lines"])
    passed = summarize(_hand_report(gap_verdict=None, sanity={"a": True}, recommended=["a", "a"],
                                    audit={"passed": True, "checks": [{"name": "x", "passed": True}]}))
    assert passed["generalizes"] is None and passed["audit_passed"] is True
    assert "All 1 checked methods pass" in " ".join(passed["lines"]) and "Audit passed" in passed["lines"][-1]
    assert "diagnostics were not part" in passed["lines"][0]


def test_summary_is_rendered_first_from_the_report_json(report: Report, html: str) -> None:
    expected = summarize(report.json)
    assert report.json["sections"][-1] == "summary"  # computed last …
    body = html[html.index("<body>"):]
    assert body.index('id="summary"') < body.index('id="model"')  # … shown first
    for line in expected["lines"]:
        assert str(escape(line)) in html
    trusted = expected["trusted_method"]
    assert trusted is None or trusted in METHODS
    checked = {m["name"]: m["quality"]["sanity_passed"] for m in report.json["methods"]}
    assert expected["sanity_failed"] == [n for n, p in checked.items() if p is False]
    stored = report.json.get("summary")
    if stored:  # report.json carries it when the report hands sections the content assembled so far
        assert stored["lines"] == expected["lines"]


def test_summary_section_accepts_the_assembled_report(report: Report) -> None:
    part = SummarySection().json_part(report.context, report.json)
    assert part["summary"]["lines"] == summarize(report.json)["lines"]


# ---------------------------------------------------------------------------------------------- the page


def test_each_method_has_a_page_with_name_cost_and_verdict(report: Report, html: str) -> None:
    pages = re.findall(r'<article class="method-page" id="method-([^"]+)">(.*?)</article>', html, re.S)
    assert [name for name, _ in pages] == METHODS
    for (name, page), entry in zip(pages, report.json["methods"]):
        wall_ms = entry["cost"]["wall_s_per_sample"] * 1e3
        assert f"{wall_ms:.3g} ms" in page and "wall time per sample" in page
        assert "data:image/png;base64," in page and str(escape(entry["paper"])) in page
        assert ("FAIL" in page) == (entry["quality"]["sanity_passed"] is False)
        assert f'href="#method-{name}"' in html  # reachable from the method index



def _card_text(html: str, label: str) -> str:
    """The value and label of the one card whose label mentions ``label``, tags stripped."""
    cards = re.findall(r'<div class="card[^"]*"><div class="value">(.*?)</div>'
                       r'<div class="label">(.*?)</div></div>', html)
    found = [f"{value} {text}" for value, text in cards if label in text]
    assert len(found) == 1, (label, cards)
    return re.sub(r"<[^>]+>", "", found[0])


def test_method_pages_count_forward_and_backward_evaluations(report: Report, html: str) -> None:
    # saliency's card read "1 model evaluations per sample (forward)" next to "1 forward + 1 backward evaluations"
    pages = dict(re.findall(r'<article class="method-page" id="method-([^"]+)">(.*?)</article>', html, re.S))
    for entry in report.json["methods"]:
        cost = entry["cost"]
        forward = format_number(cost["forward_evals_per_sample"])
        backward = format_number(cost["backward_evals_per_sample"])
        assert cost["backward_evals_per_sample"] > 0  # both methods take gradients
        assert _card_text(pages[entry["name"]], "evaluation") == (
            f"{forward} + {backward} forward + backward model evaluations per sample")
        assert f"{forward} forward + {backward} backward evaluations" in pages[entry["name"]]  # the table agrees
    assert "(forward)</div>" not in html


@pytest.mark.parametrize(("forward", "backward", "expected"), [
    (1.0, 1.0, "1 + 1 forward + backward model evaluations per sample"),
    (51.03125, 50.0, "51 + 50 forward + backward model evaluations per sample"),
    (1000.0, 0.0, "1 k forward model evaluations per sample (no backward)"),
    (1.0, 0.0, "1 forward model evaluation per sample (no backward)"),
    (None, None, "– model evaluations per sample"),
])
def test_evaluations_card_wording(forward: float | None, backward: float | None, expected: str) -> None:
    from xaudit.reports._report import _environment

    card = _environment().from_string('{% from "evals_card.html.j2" import evals_card %}{{ evals_card(c) }}')
    cost = None if forward is None else {"forward_evals_per_sample": forward, "backward_evals_per_sample": backward}
    assert _card_text(card.render(c=cost), "evaluation") == expected


def test_explanation_card_counts_backward_evaluations() -> None:
    # the notebook card of one Explanation shares the card with the method pages
    from xaudit.explain import explain
    from xaudit.models import build_model

    model = build_model("cnn", (1, 8, 8), 3, seed=0)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    html = explain(model, x, method="saliency")._repr_html_()
    assert _card_text(html, "evaluation") == "1 + 1 forward + backward model evaluations per sample"



def test_breakable_adds_break_places_to_long_identifiers_only() -> None:
    # table cells keep words whole, so a long report.json path needs places where it may wrap (<wbr>)
    def plain(markup: str) -> str:
        return str(markup).replace("<wbr>", "")

    path = "methods[integrated_gradients].cost.wall_s_per_sample"
    assert str(breakable(path)) == ("methods<wbr>[integrated_<wbr>gradients].<wbr>cost.<wbr>wall_<wbr>s_<wbr>per_<wbr>"
                                    "sample")
    for short in ("features.2.weight", "saliency", "0.000123456789012345678", "report.json"):
        assert str(breakable(short)) == short  # words, numbers and short names are left alone
    assert str(breakable("x" * 70)) == "x" * 32 + "<wbr>" + "x" * 32 + "<wbr>" + "x" * 6  # no separator at all
    evil = "<script>alert(1)</script> and a_very_long_name_with_<b>&amp;"
    assert plain(breakable(evil)) == str(escape(evil))  # escaped, and the text itself unchanged
    assert "<script>" not in str(breakable(evil)) and breakable(escape(evil)) == escape(evil)


def test_model_card_facts(report: Report, html: str) -> None:
    card = report.json["model_card"]
    assert card["input_layout"] == "channels × height × width"
    assert card["training"]["epochs_configured"] == 1 and card["training"]["epochs_run"] == 1
    splits = card["splits"]
    assert splits["train"] + splits["validation"] == 30 and splits["test"] == 12
    assert any(layer["type"] == "Conv2d" for layer in card["layers"])
    for label in ("intended use", "limitations", "layers", "splits", "weights"):
        assert f"<th>{label}</th>" in html


def test_measurement_section_names_versions_and_sources(report: Report, html: str) -> None:
    ms = report.json["measurement"]
    section = html[html.index('id="measurement"'):]
    for name, version in ms["machine"]["versions"].items():
        assert f"{name} {version or 'not installed'}" in section
    assert f"Python {ms['machine']['python']}" in section and ms["machine"]["platform"] in section
    assert ms["figures"]["matplotlib"] and f"matplotlib {ms['figures']['matplotlib']}" in section
    assert "time.perf_counter" in section


def test_page_loads_nothing_and_keeps_its_script_small(html: str) -> None:
    assert_self_contained(html)
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in html
    for value in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', html, re.I):
        assert value.startswith(("data:image/png;base64,", "#")), value
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1 and len(scripts[0].strip().splitlines()) < 60
    assert "{" not in scripts[0].split("(function", 1)[0]  # no report JSON inlined before the code
    assert "@media print" in html and ".method-page[hidden] { display: block !important; }" in html


def test_user_strings_are_escaped(html: str) -> None:
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "b &amp; c" in html


def test_notebook_fragment_has_no_script(report: Report) -> None:
    fragment = report._repr_html_()
    assert "<script" not in fragment and 'id="summary"' in fragment


# ------------------------------------------------------------------------------------------ sequences


def _png_height(uri: str) -> int:
    data = base64.b64decode(uri.split(",", 1)[1])
    return struct.unpack(">II", data[16:24])[1]


def test_multi_feature_sequences_get_a_heatmap_under_the_input() -> None:
    rng = np.random.default_rng(0)
    x, a = rng.random((2, 10, 4)), rng.standard_normal((2, 10, 4))
    titles = ["#0", "#1"]
    inputs_only, with_attr = sample_grid(x, None, titles), sample_grid(x, a, titles)
    # two rows (input above its time step × feature heatmap) against one
    assert _png_height(with_attr) > 1.5 * _png_height(inputs_only)


def test_sequence_report_pages_carry_heatmaps_or_the_reason() -> None:
    data = _dataset((6, 4), "sequence", ("up", "down"))
    report = build_report("gru", data, methods=["saliency", "gradcam"], n_explain=2, epochs=1, quality="none",
                          use_cache=False)
    html = report.to_html()
    saliency = html[html.index('id="method-saliency"'):html.index('id="method-gradcam"')]
    assert "attribution heatmap over the same time steps × features" in saliency
    assert "data:image/png;base64," in saliency and report.json["examples"]["layout"] == "matrix"
    gradcam = html[html.index('id="method-gradcam"'):]
    gradcam = gradcam[:gradcam.index("</article>")]
    reason = report.json["methods"][1]["reason"]
    assert reason and f"Not run on this model: {escape(reason)}" in gradcam and "data:image" not in gradcam


def test_summary_cards_show_the_audit_and_escape_its_check_names() -> None:
    from xaudit.reports._report import _environment

    hand = _hand_report(gap_verdict="mild", sanity={"saliency": True}, recommended=["saliency", "saliency"],
                        audit={"passed": False, "checks": [{"name": EVIL, "value": 1.0, "threshold": 0.5,
                                                            "passed": False}]})
    html = str(SummarySection().render(None, hand, _environment()))  # type: ignore[arg-type]
    assert "FAILED" in html and "audit" in html and EVIL not in html and str(escape(EVIL)) in html
    assert 'class="card good"' in html  # mild overfitting still generalizes
    bare = _hand_report(gap_verdict="severe", sanity={}, recommended=[None, None])
    no_audit = str(SummarySection().render(None, bare, _environment()))  # type: ignore[arg-type]
    assert "FAILED" not in no_audit and "passed" not in no_audit and "not checked" in no_audit
