"""SHAP's background data in a report: never the samples being explained (a sample in its own background pulls
its SHAP values towards 0; with one test sample every map was all zeros), and report.json says where it came
from."""

from __future__ import annotations

import torch

from xaudit.models import build_model
from xaudit.models._data import Dataset
from xaudit.reports import build_report
from xaudit.reports._build import background_samples, select_samples


def _test_only(n: int, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return Dataset(name="user", kind="image", x_train=x[:0], y_train=torch.zeros(0, dtype=torch.long), x_test=x,
                   y_test=torch.arange(n) % 3, class_names=("a", "b", "c"))


def test_without_a_training_split_the_background_leaves_the_explained_samples_out() -> None:
    data = _test_only(10)
    explained = select_samples(data.n_test, 4, seed=0)
    background = background_samples(data, 0, explained=explained)
    assert len(background) == 6
    for i in range(data.n_test):
        in_background = bool((background == data.x_test[i]).flatten(1).all(1).any())
        assert in_background == (i not in explained.tolist())


def test_with_a_training_split_the_background_is_training_data() -> None:
    g = torch.Generator().manual_seed(1)
    data = Dataset(name="user", kind="image", x_train=torch.rand(5, 1, 8, 8, generator=g),
                   y_train=torch.arange(5) % 3, x_test=torch.rand(3, 1, 8, 8, generator=g),
                   y_test=torch.arange(3) % 3, class_names=("a", "b", "c"))
    background = background_samples(data, 0, explained=torch.arange(3))
    assert len(background) == 5
    assert all(bool((background == row).flatten(1).all(1).any()) for row in data.x_train)


def test_a_one_sample_test_set_gives_shap_no_background_and_says_so() -> None:
    data = _test_only(1)
    report = build_report(build_model("cnn", data.input_shape, 3, seed=0), data,
                          methods=["saliency", "shap_kernel"], n_explain=1, quality="none")
    methods = {m["name"]: m for m in report.json["methods"]}
    assert methods["saliency"]["supported"]
    kernel = methods["shap_kernel"]
    assert not kernel["supported"] and not kernel.get("failed")
    assert "needs background data and there is none" in kernel["reason"] and "x_train" in kernel["reason"]
    assert report.json["examples"]["background"] == {"n": 0, "source": "test, the explained samples left out"}


def test_report_json_records_the_background_of_a_test_only_file() -> None:
    data = _test_only(6)
    report = build_report(build_model("cnn", data.input_shape, 3, seed=0), data, methods=["shap_gradient"],
                          n_explain=2, quality="none")
    assert report.json["examples"]["background"] == {"n": 4, "source": "test, the explained samples left out"}
    (method,) = report.json["methods"]
    assert method["supported"]


def test_the_html_says_where_the_background_came_from() -> None:
    data = _test_only(6)
    report = build_report(build_model("cnn", data.input_shape, 3, seed=0), data, methods=["saliency"],
                          n_explain=2, quality="none")
    text = " ".join(report.to_html().split())
    assert "were given 4 samples from the test split, the explained samples left out" in text

