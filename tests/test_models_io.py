"""xaudit.models model I/O: xaudit files, TorchScript, factories, and refusing untrusted pickles."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from xaudit.models import (
    EpochRecord,
    TrainConfig,
    UnsafeModelFileError,
    XauditError,
    build_model,
    load_model,
    predict_proba,
    save_model,
)

HERE = Path(__file__).parent


def _one_line(exc) -> str:
    assert "\n" not in str(exc.value)
    return str(exc.value)


class PickledOnly(nn.Module):
    """A user class: torch.save(model) pickles a reference to it."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


@pytest.fixture
def factory_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


@pytest.mark.parametrize(("name", "shape"), [("cnn", (1, 8, 8)), ("lstm", (40, 1))])
def test_save_load_round_trip(tmp_path, name, shape):
    model = build_model(name, shape, 3, seed=0, hidden=8, dropout=0.1)
    config = TrainConfig(epochs=2, augment=("noise",) if len(shape) == 3 else ("jitter",))
    history = (EpochRecord(1, 1.0, 0.5, 1.1, 0.4), EpochRecord(2, 0.5, 0.8, None, None))
    path = tmp_path / "m.pt"
    save_model(model, path, dataset="digits", train_config=config, history=history)
    loaded = load_model(path)
    assert (loaded.name, loaded.dataset, loaded.train_config, loaded.history) == (name, "digits", config, history)
    assert loaded.source == str(path) and loaded.model.spec == model.spec and not loaded.model.training
    x = torch.randn(5, *shape)
    assert torch.equal(predict_proba(loaded.model, x), predict_proba(model, x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # the temporary file was moved, not left behind


def test_saved_file_is_weights_only_loadable(tmp_path):
    path = tmp_path / "m.pt"
    save_model(build_model("gru", (8, 8), 10, hidden=4), path)
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "xaudit-model" and payload["format_version"] == 1
    assert set(payload) >= {"xaudit_version", "spec", "state_dict", "dataset", "train_config", "history"}


def test_save_rejects_non_builtin_and_missing_dir(tmp_path):
    with pytest.raises(XauditError) as exc:
        save_model(nn.Linear(2, 2), tmp_path / "m.pt")
    assert "torch.jit.save" in _one_line(exc)
    with pytest.raises(XauditError) as exc:
        save_model(build_model("cnn", (1, 8, 8), 2, hidden=4), tmp_path / "no" / "m.pt")
    assert "does not exist" in _one_line(exc)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace/save are deprecated in torch ≥ 2.9
def test_torchscript_round_trip(tmp_path):
    model = build_model("cnn", (40, 1), 4, seed=0, hidden=4).eval()
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 40, 1)), str(path))
    loaded = load_model(path)
    x = torch.randn(3, 40, 1)
    assert torch.allclose(loaded.model(x), model(x))
    assert loaded.dataset is None and loaded.train_config is None and loaded.history == ()


def test_module_passes_through():
    model = nn.Linear(3, 2)
    model.train()
    loaded = load_model(model)
    assert loaded.model is model and loaded.model.training and loaded.name == "Linear"


def test_factory_with_state_dict(tmp_path, factory_path):
    import _factory_models

    trained = _factory_models.make_tiny_mlp()
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    weights = tmp_path / "weights.pt"
    torch.save(trained.state_dict(), weights)
    loaded = load_model("_factory_models:make_tiny_mlp", state_dict=weights)
    x = torch.randn(4, 4)
    assert torch.equal(loaded.model(x), trained(x)) and loaded.source == "_factory_models:make_tiny_mlp"
    # a {"state_dict": ...} checkpoint works too
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, weights)
    assert torch.equal(load_model("_factory_models:make_tiny_mlp", state_dict=weights).model(x), trained(x))


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("no_such_module_xyz:make", "can't import module 'no_such_module_xyz'"),
        ("_factory_models:missing", "has no attribute 'missing'"),
        ("_factory_models:make_not_a_module", "returned a str, not a torch.nn.Module"),
        ("_factory_models:make_broken", "raised ValueError: factory exploded"),
    ],
)
def test_bad_factories(factory_path, source, message):
    with pytest.raises(XauditError) as exc:
        load_model(source)
    assert message in _one_line(exc)


def test_state_dict_mismatch(tmp_path, factory_path):
    weights = tmp_path / "other.pt"
    torch.save(nn.Linear(3, 3).state_dict(), weights)
    with pytest.raises(XauditError) as exc:
        load_model("_factory_models:make_tiny_mlp", state_dict=weights)
    assert "doesn't match the model" in _one_line(exc)


def test_untrusted_pickle_is_refused_unless_trusted(tmp_path):
    model = PickledOnly()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(UnsafeModelFileError) as exc:
        load_model(path)
    assert "trust_pickle=True" in _one_line(exc) and "arbitrary code" in str(exc.value)
    loaded = load_model(path, trust_pickle=True)
    x = torch.randn(2, 4)
    assert isinstance(loaded.model, PickledOnly) and torch.equal(loaded.model(x), model(x))


def test_bare_state_dict_file_explains_what_to_do(tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(XauditError) as exc:
        load_model(path)
    assert "only a state_dict" in _one_line(exc)


# fixed bytes and short ids: random ones differed between pytest-xdist's workers, which then refused to run
@pytest.mark.parametrize("content", [bytes(range(256)) * 8, b"hello world", b"PK\x03\x04 truncated zip"],
                         ids=["binary noise", "text", "truncated zip"])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(content)
    with pytest.raises(XauditError) as exc:
        load_model(path)
    assert not isinstance(exc.value, UnsafeModelFileError)
    assert "not a readable PyTorch/TorchScript file" in _one_line(exc)


def test_truncated_xaudit_file(tmp_path):
    path = tmp_path / "m.pt"
    save_model(build_model("cnn", (1, 8, 8), 2, hidden=4), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(XauditError) as exc:
        load_model(path)
    assert "not a readable" in _one_line(exc)


def test_missing_file_and_builtin_name(tmp_path):
    with pytest.raises(XauditError) as exc:
        load_model(tmp_path / "missing.pt")
    assert "model file not found" in _one_line(exc)
    with pytest.raises(XauditError) as exc:
        load_model("cnn")
    assert "built-in model name" in _one_line(exc)
