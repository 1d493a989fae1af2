"""Every entry point that runs the user's model in eval mode gives each module its own ``training`` flag back.

``model.train(was_training)`` restores only the root's mode and sets every submodule to it: a fine-tuning
model (root training, a frozen BatchNorm kept in eval) came back with the BatchNorm training, whose running
statistics then drift on the next step; an MC-dropout model (root in eval, its Dropout training) came back
with the Dropout off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from xaudit.models import (
    Dataset,
    XauditError,
    check_inputs,
    evaluate,
    model_calibration,
    overfitting_diagnostics,
    predict_proba,
)
from xaudit.reports import build_report

N_CLASSES = 3


class ImageNet(nn.Module):
    """A tiny CNN with a BatchNorm and a Dropout, the two layers whose flag users set on their own."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4 * 8 * 8, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


class SequenceNet(nn.Module):
    """A tiny 1-D CNN on N×C×L data (the report probes its layout with one more eval-mode forward)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4 * 10, N_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def fine_tuning(model: nn.Module) -> nn.Module:
    """Root in train mode, its BatchNorm frozen in eval mode."""
    model.train()
    model.bn.eval()
    return model


def mc_dropout(model: nn.Module) -> nn.Module:
    """Root in eval mode, its Dropout kept in train mode (Monte Carlo dropout)."""
    model.eval()
    model.drop.train()
    return model


SETUPS = {"fine-tuning (frozen BN)": fine_tuning, "MC dropout": mc_dropout}


def _dataset(sample_shape: tuple[int, ...]) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(name="tiny", kind="image" if len(sample_shape) == 3 else "sequence",
                   x_train=torch.randn(12, *sample_shape, generator=g), y_train=torch.arange(12) % N_CLASSES,
                   x_test=torch.randn(6, *sample_shape, generator=g), y_test=torch.arange(6) % N_CLASSES,
                   class_names=tuple(f"c{i}" for i in range(N_CLASSES)))


IMAGES = _dataset((1, 8, 8))

ENTRY_POINTS: dict[str, Callable[[nn.Module], Any]] = {
    "evaluate": lambda m: evaluate(m, IMAGES.x_test, IMAGES.y_test),
    "predict_proba": lambda m: predict_proba(m, IMAGES.x_test),
    "check_inputs": lambda m: check_inputs(m, IMAGES.x_test, IMAGES.y_test),
    "model_calibration": lambda m: model_calibration(m, IMAGES.x_test, IMAGES.y_test, n_bins=3),
    "overfitting_diagnostics": lambda m: overfitting_diagnostics(m, IMAGES, retrain=False),
    "build_report": lambda m: build_report(m, IMAGES, methods=["saliency"], n_explain=2, quality="none"),
}


def _state(model: nn.Module) -> dict[str, Any]:
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
    }


def _assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    after = _state(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), key


@pytest.mark.parametrize("setup", SETUPS.values(), ids=SETUPS.keys())
@pytest.mark.parametrize("entry_point", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
def test_every_module_keeps_its_own_training_flag(entry_point: Callable[[nn.Module], Any],
                                                  setup: Callable[[nn.Module], nn.Module]) -> None:
    model = setup(ImageNet())
    before = _state(model)
    entry_point(model)
    _assert_unchanged(model, before)


@pytest.mark.parametrize("setup", SETUPS.values(), ids=SETUPS.keys())
def test_report_on_a_channels_first_sequence_model_keeps_every_flag(setup: Callable[[nn.Module], nn.Module]) -> None:
    # the layout probe (takes_channels_first) runs the model once more in eval mode
    model = setup(SequenceNet())
    before = _state(model)
    report = build_report(model, _dataset((2, 10)), methods=["saliency"], n_explain=2, quality="none")
    assert report.json["data"]["input_layout"].startswith("N×C×L")  # the probe did run
    _assert_unchanged(model, before)


@pytest.mark.parametrize("setup", SETUPS.values(), ids=SETUPS.keys())
def test_flags_are_restored_when_the_model_raises(setup: Callable[[nn.Module], nn.Module]) -> None:
    model = setup(ImageNet())
    before = _state(model)
    with pytest.raises(XauditError, match="doesn't fit the model"):
        check_inputs(model, torch.randn(4, 1, 6, 6))  # the head expects 8×8 images
    _assert_unchanged(model, before)


class KeepsDropoutOn(ImageNet):
    """MC dropout built into the model: its ``train()`` override keeps the Dropout on in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[dict[str, bool]] = []

    def train(self, mode: bool = True) -> KeepsDropoutOn:
        super().train(mode)
        self.drop.train(True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append({"bn": self.bn.training, "drop": self.drop.training})
        return super().forward(x)


def test_the_switch_goes_through_the_models_own_train() -> None:
    model = fine_tuning(KeepsDropoutOn())
    before = _state(model)
    with torch.random.fork_rng(devices=[]):
        evaluate(model, IMAGES.x_test, IMAGES.y_test)
    assert model.seen == [{"bn": False, "drop": True}]  # eval mode as the model defines it
    _assert_unchanged(model, before)


class CountsModeSwitches(ImageNet):
    def __init__(self) -> None:
        super().__init__()
        self.switches = 0

    def train(self, mode: bool = True) -> CountsModeSwitches:
        self.switches += 1
        return super().train(mode)


@pytest.mark.parametrize("entry_point", ENTRY_POINTS.values(), ids=ENTRY_POINTS.keys())
def test_a_model_in_eval_mode_is_not_switched(entry_point: Callable[[nn.Module], Any]) -> None:
    model = CountsModeSwitches().eval()
    model.switches = 0
    entry_point(model)
    assert model.switches == 0 and not any(m.training for m in model.modules())


def test_eval_mode_restores_each_flag_also_on_error() -> None:
    from xaudit.models._modes import eval_mode

    model = mc_dropout(ImageNet())
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not any(m.training for m in model.modules())
        raise RuntimeError("boom")
    _assert_unchanged(model, before)
