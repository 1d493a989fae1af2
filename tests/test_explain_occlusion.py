"""Occlusion equals captum's ``Occlusion`` with the same window, strides, baseline and targets, however its
rows are split over model calls."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

from xaudit.explain import get_explainer


def seeded(factory: Any) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return factory().eval()


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class GruHead(nn.Module):
    """A GRU over T×F sequences, then a 1-D convolution over its states and a linear head."""

    def __init__(self, features: int = 3, hidden: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.conv = nn.Conv1d(hidden, hidden, 3, padding=1)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(x)
        return self.head(torch.relu(self.conv(states.transpose(1, 2))).mean(2))


def cnn(channels: int, height: int, width: int, classes: int = 5) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * height * width, classes))


def assert_equals_captum(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, **kwargs: Any) -> None:
    explainer = get_explainer("occlusion")(model, **{k: v for k, v in kwargs.items()
                                                    if k in ("window", "stride", "baseline")})
    window, strides = explainer.geometry(x.shape[1:])
    explanation = explainer.explain(x, targets, **{k: v for k, v in kwargs.items()
                                                   if k in ("batch_size", "memory_budget")})
    expected = CaptumOcclusion(model).attribute(x, sliding_window_shapes=window, strides=strides,
                                                baselines=explainer.baseline, target=targets)
    # float64 inputs get float64 attributions (captum's Occlusion returns float32 even for a float64 model)
    assert explanation.attributions.dtype == x.dtype
    torch.testing.assert_close(explanation.attributions, expected.to(x.dtype), atol=1e-6, rtol=1e-5)
    n_rows = len(x) * explainer.rows_per_sample(x.shape[1:])
    assert explanation.cost.forward_evals == n_rows and explanation.cost.backward_evals == 0


def test_equals_captum_on_a_cnn_with_the_default_geometry() -> None:
    x = rand(6, 1, 8, 8)
    assert_equals_captum(seeded(lambda: cnn(1, 8, 8)), x, torch.arange(6) % 5)


@pytest.mark.parametrize("window, stride, n_windows", [
    (3, 2, 4 * 3),  # steps of 2 end exactly on 9 and 7: no partial window
    (4, 2, 4 * 3),  # rows start at 0, 2, 4, 6 (the last cut off at 9), columns at 0, 2, 4 (cut off at 7)
    (2, 2, 5 * 4),  # the last row and the last column windows are one pixel wide
])
@pytest.mark.parametrize("baseline", [0.0, -0.5])
def test_equals_captum_on_three_channels_with_partial_last_steps(window: int, stride: int, n_windows: int,
                                                                 baseline: float) -> None:
    x = rand(4, 3, 9, 7)
    model = seeded(lambda: cnn(3, 9, 7))
    assert get_explainer("occlusion")(model, window=window, stride=stride).n_windows((3, 9, 7)) == n_windows
    assert_equals_captum(model, x, torch.tensor([0, 4, 2, 1]), window=window, stride=stride, baseline=baseline)


@pytest.mark.parametrize("window, stride", [(None, None), (3, 2), (4, 3)])
def test_equals_captum_on_a_gru_conv1d_sequence_model(window: int | None, stride: int | None) -> None:
    x = rand(5, 20, 3)
    assert_equals_captum(seeded(GruHead), x, torch.tensor([3, 0, 1, 2, 3]), window=window, stride=stride)


class CallLog(nn.Module):
    """The wrapped model, logging the rows of every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(len(x))
        return self.model(x)


@pytest.mark.parametrize("limit", [{"batch_size": 1}, {"memory_budget": "64KiB"}])
@pytest.mark.parametrize("kind", ["image", "sequence"])
def test_rows_split_over_many_calls_give_the_same_result(kind: str, limit: dict[str, Any]) -> None:
    if kind == "image":
        model, x = CallLog(seeded(lambda: cnn(3, 9, 7))), rand(7, 3, 9, 7)
    else:
        model, x = CallLog(seeded(GruHead)), rand(5, 20, 3)
    targets = torch.arange(len(x)) % 4
    explainer = get_explainer("occlusion")(model, window=3, stride=2)
    whole = explainer.explain(x, targets)
    model.rows.clear()
    split = explainer.explain(x, targets, **limit)
    n_rows = len(x) * explainer.rows_per_sample(x.shape[1:])
    # beyond occlusion's rows the log may hold one-row probes (memory, FLOPs, classes; cached per model today)
    calls, row_batch = model.rows, split.plan["row_batch"]
    assert sum(calls) >= n_rows and max(calls) <= min(row_batch, n_rows // 3)
    torch.testing.assert_close(split.attributions, whole.attributions, atol=1e-6, rtol=1e-5)
    assert_equals_captum(model, x, targets, window=3, stride=2, **limit)


def test_a_float64_model_gets_float64_attributions_equal_to_captums() -> None:
    model = seeded(lambda: cnn(2, 5, 6)).double()
    assert_equals_captum(model, rand(3, 2, 5, 6).double(), torch.tensor([0, 1, 3]), window=4, stride=1,
                         baseline=0.3)
