"""xaudit.models built-in architectures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xaudit.models import MODELS, ModelSpec, XauditError, build_model, count_parameters, model_kind

SHAPES = {"image": (1, 8, 8), "image-rgb": (3, 16, 12), "sequence": (40, 1), "multivariate": (8, 8), "tiny": (3, 2)}
CASES = [("cnn", shape) for shape in SHAPES] + [(m, s) for m in ("gru", "lstm") for s in SHAPES if len(SHAPES[s]) == 2]


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_forward_shape_and_spec(name, shape):
    model = build_model(name, SHAPES[shape], 5, seed=0, hidden=8)
    out = model(torch.randn(3, *SHAPES[shape]))
    assert out.shape == (3, 5)
    assert model.spec == ModelSpec(name, SHAPES[shape], 5, hidden=8)
    assert model_kind(model) == ("cnn" if name == "cnn" else "rnn")


@pytest.mark.parametrize(("name", "shape"), CASES)
def test_every_relu_is_its_own_non_inplace_module(name, shape):
    model = build_model(name, SHAPES[shape], 4, hidden=8)
    relus = [m for _, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.ReLU)]
    assert len(relus) == len({id(m) for m in relus})
    assert not any(m.inplace for m in relus)
    if name == "cnn":
        assert len(relus) == 3


def test_seed_controls_init_without_touching_global_rng():
    torch.manual_seed(7)
    expected = torch.rand(1)
    torch.manual_seed(7)
    a = build_model("cnn", (1, 8, 8), 10, seed=3)
    assert torch.equal(torch.rand(1), expected)
    b = build_model("cnn", (1, 8, 8), 10, seed=3)
    c = build_model("cnn", (1, 8, 8), 10, seed=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_sequence_cnn_takes_dataset_layout():
    # N×T×F in; the 1-D convolutions see the features as channels
    model = build_model("cnn", (40, 1), 10, hidden=4)
    assert isinstance(model.features[0], nn.Conv1d) and model.features[0].in_channels == 1
    image = build_model("cnn", (1, 8, 8), 10, hidden=4)
    assert isinstance(image.features[0], nn.Conv2d)


def test_spec_round_trip_and_defaults():
    spec = ModelSpec("gru", (40, 1), 10, dropout=0.2)
    assert spec.hidden > 0
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["input_shape"] == [40, 1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(name="cnnn", input_shape=(1, 8, 8), n_classes=10), "did you mean 'cnn'"),
        (dict(name="gru", input_shape=(1, 8, 8), n_classes=10), "needs sequence data"),
        (dict(name="cnn", input_shape=(8,), n_classes=10), "not a sample shape"),
        (dict(name="cnn", input_shape=(1, 8, 8), n_classes=1), "at least 2 classes"),
        (dict(name="cnn", input_shape=(1, 8, 8), n_classes=10, dropout=1.0), "dropout"),
    ],
)
def test_build_errors_are_one_line(kwargs, message):
    with pytest.raises(XauditError) as exc:
        build_model(**kwargs)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_count_parameters():
    model = nn.Linear(3, 2)
    assert count_parameters(model) == 8
    model.bias.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 6
    assert MODELS == ("cnn", "gru", "lstm")


def test_lstm_forget_gate_bias_starts_at_one():
    model = build_model("lstm", (40, 1), 10, hidden=6, seed=0)
    forget = model.rnn.bias_ih_l0[6:12] + model.rnn.bias_hh_l0[6:12]
    assert torch.equal(forget, torch.ones(6))
