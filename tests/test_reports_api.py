"""The report's Python API on tiny untrained models: the report.json contract, the self-contained HTML,
sections, unsupported methods, autoescaping, atomic writes and the absence of global side effects."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import pytest
import torch

from xaudit.explain import available_methods, get_explainer
from xaudit.models import Dataset, build_model, count_parameters
from xaudit.models._errors import XauditError
from xaudit.reports import DEFAULT_SECTIONS, Report, Section, build_report, write_report
from xaudit.reports._report import json_safe

from _cli_helpers import assert_report_contract, assert_self_contained

FAST = ["saliency", "integrated_gradients"]
EVIL = "<script>alert(1)</script>"


def _dataset(layout: str, *, class_names: tuple[str, ...] | None = None, n_classes: int = 3) -> Dataset:
    g = torch.Generator().manual_seed(0)
    shape = {"image": (1, 8, 8), "series": (12, 1), "matrix": (6, 4)}[layout]
    return Dataset(
        name=f"tiny-{layout}", kind="image" if layout == "image" else "sequence",
        x_train=torch.rand(24, *shape, generator=g), y_train=torch.arange(24) % n_classes,
        x_test=torch.rand(9, *shape, generator=g), y_test=torch.arange(9) % n_classes,
        class_names=class_names or tuple(f"class {i}" for i in range(n_classes)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XAUDIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def image_report() -> Report:
    """A CNN on tiny images whose class names need escaping; n_explain above the test size (9 samples)."""
    data = _dataset("image", class_names=(EVIL, "b & c", '"q"'))
    return build_report(build_model("cnn", data.input_shape, 3, seed=0), data, methods=FAST, n_explain=500,
                        quality="none")  # quality figures are counted in test_reports_quality.py


def test_image_report_contract(image_report: Report, tmp_path: Path) -> None:
    report = image_report.json
    assert_report_contract(report)
    assert report["model"]["n_params"] == count_parameters(image_report.context.subject.model)
    assert report["model"]["kind"] == "cnn" and report["model"]["input_shape"] == [1, 8, 8]
    assert [m["name"] for m in report["methods"]] == FAST
    assert all(m["cost"]["forward_evals_per_sample"] >= 1 for m in report["methods"])
    # n_explain larger than the test split: every test sample, six of them drawn
    assert report["examples"]["n_explained"] == 9 and report["methods"][0]["n_samples"] == 9
    assert report["examples"]["n_shown"] == 6

    files = image_report.write(tmp_path / "out")
    html = files.html.read_text(encoding="utf-8")
    assert_self_contained(html)
    # no history, so no curves: the inputs, one figure per method and the overfitting section's reliability diagram
    assert html.count("data:image/png;base64,") == 1 + len(FAST) + 1
    assert json.loads(files.json.read_text(encoding="utf-8")) == report
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json"]  # no temp files


def test_class_names_are_html_escaped(image_report: Report) -> None:
    assert image_report.json["model"]["class_names"][0] == EVIL
    html = image_report.to_html()
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "b &amp; c" in html


def test_repr_html_is_a_fragment_reusing_the_sections(image_report: Report) -> None:
    fragment = image_report._repr_html_()
    assert "<html" not in fragment and "<!DOCTYPE" not in fragment
    for section in DEFAULT_SECTIONS:
        assert f'id="{section.id}"' in fragment
    assert_self_contained(fragment)


@pytest.mark.parametrize("layout,model_name", [("series", "gru"), ("matrix", "lstm")])
def test_sequence_reports(layout: str, model_name: str) -> None:
    data = _dataset(layout)
    model = build_model(model_name, data.input_shape, data.n_classes, seed=0)
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    report = build_report(model, data, methods=["saliency"], n_explain=3)
    assert_report_contract(report.json)
    assert report.json["model"]["kind"] == "rnn"
    assert report.json["examples"]["layout"] == layout
    html = report.to_html()
    assert_self_contained(html)
    # rendering must not leave global matplotlib state behind (no pyplot, no rcParams changes)
    assert dict(matplotlib.rcParams) == before
    assert matplotlib.get_backend() == backend


def test_unsupported_method_is_listed_with_its_reason() -> None:
    data = _dataset("series")
    model = build_model("gru", data.input_shape, 3, seed=0)
    unsupported = [m for m in available_methods()
                   if get_explainer(m)(model).unsupported_reason(data.input_shape) is not None]
    if not unsupported:
        pytest.skip("every registered method supports recurrent models")
    report = build_report(model, data, methods=["saliency", unsupported[0]], n_explain=2)
    entry = {m["name"]: m for m in report.json["methods"]}[unsupported[0]]
    assert entry["supported"] is False and entry["cost"] is None and entry["reason"]
    assert_report_contract(report.json)
    html = report.to_html()
    assert "not run:" in html and unsupported[0] in html


def test_training_history_draws_curves() -> None:
    from xaudit.models import TrainConfig, train_model

    data = _dataset("image")
    result = train_model("cnn", data, TrainConfig(epochs=2, seed=0))
    report = build_report(result, data, methods=["saliency"], n_explain=2)
    assert report.json["training"]["epochs_run"] == 2
    assert report.json["model"]["train_config"]["epochs"] == 2
    assert 'alt="loss and accuracy per epoch' in report.to_html()


def test_bad_arguments_fail_before_any_training(tmp_path: Path) -> None:
    with pytest.raises(XauditError, match="did you mean 'saliency'"):
        build_report("cnn", "digits", methods=["sailency"])
    with pytest.raises(XauditError, match="n_explain"):
        build_report("cnn", "digits", n_explain=0)
    with pytest.raises(XauditError, match="no explanation method"):
        build_report("cnn", "digits", methods=" , ")
    assert not (tmp_path / "cache").exists()


def test_sections_are_pluggable_and_keys_may_not_clash(image_report: Report) -> None:
    class Extra(Section):
        id = "extra"
        title = "Extra"
        template = "model.html.j2"

        def json_part(self, ctx):  # type: ignore[no-untyped-def]
            return {"extra": {"n": len(ctx.indices)}}

    custom = Report.from_context(image_report.context, (*DEFAULT_SECTIONS, Extra()))
    assert custom.json["extra"] == {"n": 9} and custom.json["sections"][-1] == "extra"
    assert 'id="extra"' in custom._repr_html_()

    class Clash(Extra):
        def json_part(self, ctx):  # type: ignore[no-untyped-def]
            return {"metrics": {}}

    with pytest.raises(ValueError, match="metrics"):
        Report.from_context(image_report.context, (*DEFAULT_SECTIONS, Clash()))


def test_json_safe_and_write_report_into_new_dirs(image_report: Report, tmp_path: Path) -> None:
    assert json_safe({"a": (1, math.nan), "b": torch.tensor(2.5), "c": math.inf}) == {"a": [1, None], "b": 2.5,
                                                                                    "c": None}
    files = write_report(image_report, tmp_path / "deep" / "er")
    assert files.json == tmp_path / "deep" / "er" / "report.json" and files.json.is_file()


def test_a_method_whose_map_is_all_zero_is_reported_as_failing_the_sanity_check() -> None:
    data = _dataset("image")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    with torch.no_grad():
        model[1].bias.fill_(-100.0)  # every ReLU dead: saliency is zero everywhere
    report = build_report(model, data, methods=["saliency", "occlusion"], n_explain=3)
    assert_report_contract(report.json)
    quality = next(m for m in report.json["methods"] if m["name"] == "saliency")["quality"]
    assert quality["sanity_passed"] is False and "no ranking" in quality["verdict"]
    html = report.to_html()
    assert_self_contained(html)
    assert "no ranking for randomization to destroy" in html


def test_the_report_gap_is_exact_at_a_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    from xaudit.reports import _build

    accuracies = iter([(0.1, 0.95), (0.0, 1.0)])  # test, then train: 1.0 - 0.95 is 0.050000000000000044 in floats
    monkeypatch.setattr(_build, "evaluate", lambda *a, **k: next(accuracies))
    data = _dataset("image")
    assert _build.compute_metrics(torch.nn.Identity(), data)["generalization_gap"] == 0.05


def test_a_method_that_crashes_inside_a_library_costs_only_its_own_result(monkeypatch: pytest.MonkeyPatch) -> None:
    # shap's hooks raised a bare RuntimeError on a ResNet block's in-place add, and the whole report died
    import torch

    from xaudit.explain import get_explainer
    from xaudit.models import build_model
    from xaudit.reports._build import explain_methods

    model = build_model("cnn", (1, 8, 8), 10, seed=0, hidden=8).eval()
    x = torch.rand(3, 1, 8, 8)

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Output 0 of BackwardHookFunction is a view and is being modified inplace")

    monkeypatch.setattr(get_explainer("input_x_gradient"), "_attribute", boom)
    failed, fine = explain_methods(model, x, torch.zeros(3, dtype=torch.long), x, ["input_x_gradient", "saliency"],
                                   seed=0)
    assert failed.failed and failed.explanation is None
    assert failed.reason.startswith("input_x_gradient failed on this model (RuntimeError: Output 0 of")
    assert fine.explanation is not None


def test_the_model_is_warmed_at_the_full_batch_before_the_first_method_is_timed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the first method (saliency by default) was billed the first full-batch call's one-time costs: about
    # twice its time on CPU, 18 times on an H200; an untimed pass over all of x must come before any timed call
    import torch

    from xaudit.explain import Explainer
    from xaudit.models import build_model
    from xaudit.reports._build import explain_methods

    calls: list[tuple[str, int, bool]] = []
    real = Explainer.explain

    def spy(self: Explainer, inputs: torch.Tensor, *args: object, **kwargs: object) -> object:
        calls.append((self.name, len(inputs), bool(kwargs.get("fresh_heap"))))
        return real(self, inputs, *args, **kwargs)

    monkeypatch.setattr(Explainer, "explain", spy)
    model = build_model("cnn", (1, 8, 8), 10, seed=0, hidden=8).eval()
    x = torch.rand(6, 1, 8, 8)
    explain_methods(model, x, torch.zeros(6, dtype=torch.long), x, ["input_x_gradient"], seed=0)
    timed = [i for i, call in enumerate(calls) if call[2]]
    assert calls[timed[0]] == ("input_x_gradient", 6, True)
    assert ("saliency", 6, False) in calls[:timed[0]], calls


@pytest.mark.parametrize(("source", "said"), [
    ("rapl", "the CPU package's energy counter (Intel RAPL) over the call"),
    ("nvml", "the GPU board's energy counter over the call"),
    ("nvml_power", "NVML's board power reading × wall time"),
])
def test_the_page_says_what_each_energy_source_measures(image_report: Report, source: str, said: str) -> None:
    # only "estimate" was explained: "source: rapl" left the reader to guess it is the whole package's energy
    import copy
    import dataclasses

    content = copy.deepcopy(image_report.json)
    content["measurement"]["energy_sources"] = [source]
    page = dataclasses.replace(image_report, json=content).to_html()
    assert said in page.replace("&#34;", '"').replace("&#39;", "'")


def test_the_measurement_notes_say_how_the_methods_were_warmed(image_report: Report) -> None:
    warmup = image_report.json["measurement"]["warmup"]
    assert "untimed gradient pass over all the explained samples" in warmup and "on one sample" in warmup




def test_a_short_call_is_timed_three_times_and_the_fastest_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # one burst of another process during a few-millisecond call billed saliency 70x input_x_gradient's time
    import dataclasses

    import torch

    from xaudit.explain import Explainer
    from xaudit.models import build_model
    from xaudit.reports import _build
    from xaudit.reports._build import SHORT_CALL_REPEATS, SHORT_CALL_S, explain_methods

    # saliency: short; occlusion: a burst made its measured call long, but its one-sample call says it is short;
    # lime: long by both (its one-sample call is slowed to 0.05 s, times 4 samples)
    walls = {"saliency": iter([0.05, 0.01, 0.03]), "occlusion": iter([5.0, 0.02, 0.04]), "lime": iter([5.0])}
    timed: list[str] = []
    real = Explainer.explain
    now = [0.0]  # the clock explain_methods reads around the one-sample call: 1 ms per call, 50 ms for lime's
    monkeypatch.setattr(_build, "_clock", lambda: now[0])

    def fake_clock(self: Explainer, inputs: torch.Tensor, *args: object, **kwargs: object) -> object:
        exp = real(self, inputs, *args, **kwargs)
        if not kwargs.get("fresh_heap"):
            now[0] += 0.05 if self.name == "lime" and len(inputs) == 1 else 0.001
            return exp
        timed.append(self.name)
        return dataclasses.replace(exp, cost=dataclasses.replace(exp.cost, wall_s=next(walls[self.name])))

    monkeypatch.setattr(Explainer, "explain", fake_clock)
    model = build_model("cnn", (1, 8, 8), 10, seed=0, hidden=8).eval()
    x = torch.rand(4, 1, 8, 8)
    results = explain_methods(model, x, torch.zeros(4, dtype=torch.long), x, ["saliency", "occlusion", "lime"],
                              seed=0)
    assert 0.05 < SHORT_CALL_S <= 0.2 and SHORT_CALL_REPEATS == 3
    assert timed == ["saliency"] * 3 + ["occlusion"] * 3 + ["lime"]
    assert [r.explanation.cost.wall_s for r in results] == [0.01, 0.02, 5.0]
