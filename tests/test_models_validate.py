"""xaudit.models input checks and the trained-model cache."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xaudit.models import TrainConfig, XauditError, build_model, cached_train, check_inputs, load_dataset
from xaudit.models import _cache


@pytest.fixture
def model():
    m = build_model("cnn", (1, 8, 8), 10, hidden=4)
    m.train()
    return m


def _error(model, x, y=None) -> str:
    with pytest.raises(XauditError) as exc:
        check_inputs(model, x, y, what="x_test")
    assert "\n" not in str(exc.value)
    assert model.training
    return str(exc.value)


def test_good_inputs_return_n_classes(model):
    assert check_inputs(model, torch.rand(5, 1, 8, 8), torch.tensor([0, 1, 2, 3, 9])) == 10
    assert model.training


def test_wrong_shape(model):
    message = _error(model, torch.rand(5, 8, 8))
    assert message.startswith("input shape (8, 8) doesn't fit the model (") and "expects (1, 8, 8)" in message


def test_bad_labels(model):
    message = _error(model, torch.rand(2, 1, 8, 8), torch.tensor([1, 10]))
    assert "label 10 in x_test is outside the model's 10 classes" in message
    assert "label -1" in _error(model, torch.rand(2, 1, 8, 8), torch.tensor([-1, 0]))
    assert "dtype" in _error(model, torch.rand(2, 1, 8, 8), torch.tensor([0.0, 1.0]))
    assert "one class index per sample" in _error(model, torch.rand(2, 1, 8, 8), torch.tensor([0]))


def test_nan_and_inf(model):
    x = torch.rand(4, 1, 8, 8)
    x[0, 0, 0, :2] = float("nan")
    x[1, 0, 0, 0] = float("inf")
    assert _error(model, x) == "data 'x_test' has 3 NaN/Inf values: clean or impute them before auditing"


def test_bad_outputs():
    assert "not (2, n_classes)" in _error(nn.Flatten(0), torch.rand(2, 3))  # probed with two samples
    assert "not (1, n_classes)" in _error(nn.Flatten(0), torch.rand(1, 3))  # or the one there is
    assert "1 score per sample" in _error(nn.Linear(3, 1), torch.rand(2, 3))


class _Pair(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.head, self.kind = nn.Linear(3, 2), kind

    def forward(self, x):
        logits = self.head(x)
        return {"tuple": (logits, x), "list": [logits], "dict": {"logits": logits}}[self.kind]


@pytest.mark.parametrize(("kind", "pick"), [("tuple", "model(x)[0]"), ("list", "model(x)[0]"),
                                            ("dict", "model(x)[key]")])
def test_tuple_list_and_dict_outputs_say_how_to_wrap_the_model(kind, pick):
    message = _error(_Pair(kind), torch.rand(2, 3))
    assert f"returned a {kind}" in message and f"a module whose forward is {pick}" in message


def test_cached_train_hits_the_cache(tmp_path, monkeypatch):
    data = load_dataset("digits").subset(64, 16)
    config = TrainConfig(epochs=1, val_fraction=0.0)
    calls = []
    real_train = _cache.train_model

    def counting_train(*args, **kwargs):
        calls.append(args[0])
        if len(calls) > 1:
            raise AssertionError("trained twice: the cache missed")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(_cache, "train_model", counting_train)
    first = cached_train("cnn", data, config, cache_dir=tmp_path)
    second = cached_train("cnn", data, config, cache_dir=tmp_path)
    assert calls == ["cnn"] and len(list(tmp_path.glob("*.pt"))) == 1
    assert second.train_config == config and second.history == first.history and second.dataset == "digits"
    x = data.x_test
    assert torch.equal(second.model(x), first.model(x))
    # a different config is a different entry
    calls.clear()
    cached_train("cnn", data, TrainConfig(epochs=1, val_fraction=0.0, seed=1), cache_dir=tmp_path)
    assert calls == ["cnn"] and len(list(tmp_path.glob("*.pt"))) == 2


def test_corrupt_cache_entry_is_retrained(tmp_path):
    data = load_dataset("digits").subset(64, 16)
    config = TrainConfig(epochs=1, val_fraction=0.0)
    first = cached_train("cnn", data, config, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("*.pt")
    entry.write_bytes(b"garbage")
    again = cached_train("cnn", data, config, cache_dir=tmp_path)
    assert torch.equal(again.model(data.x_test), first.model(data.x_test))
    assert entry.read_bytes()[:2] == b"PK"  # rewritten as a real model file


def test_a_valid_model_of_another_training_under_a_key_is_retrained(tmp_path):
    # e.g. a cache file copied by hand: a valid xaudit cnn, but of another dataset, class count and recipe
    data = load_dataset("digits").subset(64, 16)
    config = TrainConfig(epochs=1, val_fraction=0.0)
    first = cached_train("cnn", data, config, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("*.pt")
    other = load_dataset("digits").subset(32, 16)
    stranger = tmp_path / "other"
    stranger.mkdir()
    cached_train("cnn", other, TrainConfig(epochs=1, val_fraction=0.0, seed=5), cache_dir=stranger)
    (foreign,) = stranger.glob("*.pt")
    entry.write_bytes(foreign.read_bytes())
    again = cached_train("cnn", data, config, cache_dir=tmp_path)
    assert again.train_config == config
    assert torch.equal(again.model(data.x_test), first.model(data.x_test))  # retrained, deterministically


def test_default_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XAUDIT_CACHE_DIR", str(tmp_path / "a"))
    assert _cache.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("XAUDIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _cache.default_cache_dir() == tmp_path / "xdg" / "xaudit"


def test_cache_key_depends_on_data_contents():
    data = load_dataset("digits").subset(64, 16)
    config = TrainConfig(epochs=1)
    changed = load_dataset("digits").subset(64, 16)
    changed.x_train[0, 0, 0, 0] += 0.5
    assert _cache.cache_key("cnn", data, config) != _cache.cache_key("cnn", changed, config)
    same = load_dataset("digits").subset(64, 16)
    assert _cache.cache_key("cnn", data, config) == _cache.cache_key("cnn", same, config)
