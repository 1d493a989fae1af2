"""Inputs as users hold them: numpy's float64 for a float32 model, and 1-D CNNs written for N×C×L data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xaudit.explain import explain, get_explainer
from xaudit.models._layout import ChannelsFirst

REGION_METHODS = ("occlusion", "lime", "shap_kernel", "shap_partition")


class _Conv1dNCL(nn.Module):
    """A 1-D CNN over N×C×L (3 channels × 24 steps), as time-series code usually writes it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(3, 6, 5, padding=2)
        self.head = nn.Linear(6 * 24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def test_float64_numpy_inputs_run_in_the_models_dtype() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4)).eval()
    x64 = np.random.default_rng(0).random((3, 1, 8, 8))  # float64, as numpy makes it
    exp = explain(model, x64, method="integrated_gradients", target=1)
    same = explain(model, torch.from_numpy(x64).float(), method="integrated_gradients", target=1)
    assert exp.attributions.dtype == torch.float32
    torch.testing.assert_close(exp.attributions, same.attributions)


@pytest.mark.parametrize("method", REGION_METHODS)
def test_region_methods_run_along_the_length_of_nxcxl_data(method: str) -> None:
    model, x = _Conv1dNCL().eval(), torch.rand(2, 3, 24)
    explainer = get_explainer(method)(model).fit(torch.rand(8, 3, 24))
    exp = explainer.explain(x, target=1)
    # the oracle: the method on the model given N×L×C data (what the report explains), transposed back
    oracle = get_explainer(method)(ChannelsFirst(model)).fit(torch.rand(8, 3, 24).transpose(1, 2))
    if method.startswith("shap"):
        oracle = get_explainer(method)(ChannelsFirst(model)).fit(explainer.background_.transpose(1, 2))
    expected = oracle.explain(x.transpose(1, 2), target=1).attributions.transpose(1, 2)
    assert exp.attributions.shape == x.shape
    torch.testing.assert_close(exp.attributions, expected)
    assert exp.attributions[0, 0].unique().numel() > 3  # windows along the 24 steps, not along the 3 channels
    assert exp.settings["input_layout"].startswith("N×C×L")
    torch.testing.assert_close(exp.inputs, x)
    predicted = explainer.predict_cost(x)
    assert (predicted.forward_evals, predicted.backward_evals) == (exp.cost.forward_evals, exp.cost.backward_evals)


def test_per_element_methods_and_models_without_conv1d_are_left_as_they_are() -> None:
    model, x = _Conv1dNCL().eval(), torch.rand(2, 3, 24)
    assert "input_layout" not in explain(model, x, method="saliency", target=1).settings  # per element
    flat = nn.Sequential(nn.Flatten(), nn.Linear(72, 2)).eval()  # N×T×F as it is: no Conv1d to hand it to
    exp = explain(flat, x, method="occlusion", target=1)
    assert "input_layout" not in exp.settings


def test_a_float32_model_with_a_float64_attribute_gets_float32_inputs() -> None:
    model = _Conv1dNCL().eval()
    model.register_buffer("temperature", torch.tensor(2.0, dtype=torch.float64))  # a calibration scalar
    exp = explain(model, torch.rand(2, 3, 24, dtype=torch.float64), method="saliency", target=1)
    assert exp.attributions.dtype == torch.float32


def test_the_routed_method_follows_a_new_model() -> None:
    first, second = _Conv1dNCL().eval(), _Conv1dNCL().eval()
    with torch.no_grad():
        second.head.weight.mul_(-1.0)
    x = torch.rand(2, 3, 24)
    explainer = get_explainer("occlusion")(first)
    explainer.explain(x, target=1)
    explainer.model = second
    torch.testing.assert_close(explainer.explain(x, target=1).attributions,
                               get_explainer("occlusion")(second).explain(x, target=1).attributions)


def test_integer_token_ids_for_an_embedding_are_refused_with_the_fix() -> None:
    from xaudit.models._errors import XauditError

    model = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(6 * 4, 2))
    ids = torch.randint(0, 20, (3, 6))
    with pytest.raises(XauditError, match="integer token ids for an nn.Embedding.*embedding output"):
        explain(model, ids, method="saliency", target=0)
    with pytest.raises(XauditError, match="integer token ids"):
        explain(model, ids.numpy(), method="occlusion", target=0)
