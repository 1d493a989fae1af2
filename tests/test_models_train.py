"""xaudit.models training: determinism, early stopping, regularization knobs, config validation."""

from __future__ import annotations

import pytest
import torch

from xaudit.models import (
    AUGMENTATIONS,
    TrainConfig,
    XauditError,
    build_model,
    evaluate,
    load_dataset,
    predict_proba,
    reference_config,
    train_model,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").subset(240, 60)


@pytest.fixture(scope="module")
def seqs():
    return load_dataset("mnist1d").subset(240, 60)


def _tiny(ds, seed=0, name="cnn"):
    return build_model(name, ds.input_shape, ds.n_classes, seed=seed, hidden=8)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_by_name_is_deterministic(digits):
    digits = digits.subset(96)
    config = TrainConfig(epochs=2, dropout=0.2, augment=("noise",))
    a, b = train_model("cnn", digits, config), train_model("cnn", digits, config)
    assert a.history == b.history and _same_weights(a.model, b.model)
    c = train_model("cnn", digits, TrainConfig(epochs=2, dropout=0.2, augment=("noise",), seed=1))
    assert c.history != a.history and not _same_weights(a.model, c.model)
    assert len(a.history) == 2 and [r.epoch for r in a.history] == [1, 2]
    assert a.best_epoch == 2 and not a.stopped_early and a.fit_time_s > 0
    assert not a.model.training and a.model.spec.dropout == 0.2


def test_training_leaves_global_rng_alone(digits):
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    train_model(_tiny(digits), digits, TrainConfig(epochs=1, dropout=0.1))
    assert torch.equal(torch.rand(1), expected)


def test_history_records_train_and_validation(digits):
    seen = []
    config = TrainConfig(epochs=3, lr=1e-2)
    result = train_model(_tiny(digits), digits, config, progress=lambda e, n, r: seen.append((e, n, r)))
    assert [(e, n) for e, n, _ in seen] == [(1, 3), (2, 3), (3, 3)]
    assert tuple(r for _, _, r in seen) == result.history
    last = result.history[-1]
    assert 0 <= last.train_accuracy <= 1 and last.val_accuracy is not None and last.val_loss > 0
    assert last.train_accuracy > 0.3  # it learns something in 3 epochs
    no_val = train_model(_tiny(digits), digits, TrainConfig(epochs=1, val_fraction=0.0))
    assert no_val.history[0].val_loss is None and no_val.history[0].val_accuracy is None


def test_early_stopping_stops_and_restores_best(digits):
    # a huge learning rate makes validation loss get worse after the first epochs
    config = TrainConfig(epochs=30, lr=0.05, early_stopping=2, val_fraction=0.2)
    result = train_model(_tiny(digits), digits, config)
    assert result.stopped_early and len(result.history) < 30
    val_losses = [r.val_loss for r in result.history]
    assert result.best_epoch == 1 + val_losses.index(min(val_losses))
    assert len(result.history) == result.best_epoch + 2
    # the returned weights are the best epoch's, not the last epoch's
    best = result.history[result.best_epoch - 1]
    split = torch.Generator().manual_seed(0)
    from xaudit.models._train import stratified_split

    _, val_idx = stratified_split(digits.y_train, 0.2, split)
    loss, acc = evaluate(result.model, digits.x_train[val_idx], digits.y_train[val_idx])
    assert loss == pytest.approx(best.val_loss, rel=1e-5) and acc == best.val_accuracy


@pytest.mark.parametrize(
    "config",
    [
        TrainConfig(epochs=1, l1=1e-4),
        TrainConfig(epochs=1, weight_decay=1e-2, optimizer="adamw"),
        TrainConfig(epochs=1, optimizer="sgd", lr=0.01, lr_schedule="cosine"),
        TrainConfig(epochs=1, augment=("shift", "rotation", "noise", "cutout"), augment_strength=0.5),
    ],
    ids=["l1", "adamw", "sgd-cosine", "image-augment"],
)
def test_knobs_run(digits, config):
    result = train_model(_tiny(digits), digits, config)
    assert len(result.history) == 1 and torch.isfinite(torch.tensor(result.history[0].train_loss))


def test_l1_shrinks_weights(digits):
    plain = train_model(_tiny(digits), digits, TrainConfig(epochs=2))
    sparse = train_model(_tiny(digits), digits, TrainConfig(epochs=2, l1=1e-2))
    norm = lambda m: sum(float(p.detach().abs().sum()) for p in m.parameters() if p.ndim >= 2)  # noqa: E731
    assert norm(sparse.model) < norm(plain.model)


@pytest.mark.parametrize("name", ["gru", "lstm", "cnn"])
def test_sequence_models_train_with_sequence_augmentations(seqs, name):
    config = TrainConfig(epochs=1, augment=("jitter", "scaling", "time_shift", "time_warp"))
    result = train_model(_tiny(seqs, name=name), seqs, config)
    assert len(result.history) == 1


def test_augmentation_kind_must_match_data(digits):
    with pytest.raises(XauditError) as exc:
        train_model(_tiny(digits), digits, TrainConfig(epochs=1, augment=("time_warp",)))
    assert "sequence data" in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(epochs=0), "epochs"),
        (dict(lr=0.0), "lr"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(l1=-1.0), "l1"),
        (dict(dropout=1.0), "dropout"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(optimizer="adamm"), "did you mean 'adam'"),
        (dict(augment=("jiter",)), "did you mean 'jitter'"),
        (dict(early_stopping=3, val_fraction=0.0), "validation data"),
        (dict(lr_schedule="cos"), "cosine"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(XauditError) as exc:
        TrainConfig(**kwargs)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_config_dict_round_trip():
    config = TrainConfig(epochs=3, augment=("noise", "shift"), early_stopping=2)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["augment"] == ["noise", "shift"]
    assert TrainConfig(augment="noise").augment == ("noise",)
    with pytest.raises(XauditError, match="did you mean 'epochs'"):
        TrainConfig.from_dict({"epoch": 3})


def test_evaluate_and_predict_proba_restore_mode(digits):
    model = _tiny(digits)
    model.train()
    loss, acc = evaluate(model, digits.x_test, digits.y_test, batch_size=7)
    probs = predict_proba(model, digits.x_test, batch_size=7)
    assert model.training and loss > 0 and 0 <= acc <= 1
    assert probs.shape == (60, 10) and torch.allclose(probs.sum(1), torch.ones(60))
    assert acc == pytest.approx(float((probs.argmax(1) == digits.y_test).double().mean()))


def test_reference_configs_are_valid():
    for model in ("cnn", "gru", "lstm"):
        for data in ("digits-seq", "mnist1d"):
            config = reference_config(model, data)
            assert all(AUGMENTATIONS[a].kind in ("any", "sequence") for a in config.augment)
    assert all(AUGMENTATIONS[a].kind == "image" for a in reference_config("cnn", "digits").augment)
    assert reference_config("cnn", "my.npz") == TrainConfig()
    with pytest.raises(XauditError, match="did you mean"):
        reference_config("gruu", "mnist1d")


def test_empty_train_split_is_an_error(digits):
    with pytest.raises(XauditError, match="no training samples"):
        train_model(_tiny(digits), digits.subset(0, 10), TrainConfig(epochs=1))
