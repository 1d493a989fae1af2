"""Random-label memorization and the spatial shuffle on tiny data, and the whole diagnostics bundle."""

from __future__ import annotations

import json

import pytest
import torch

from xaudit.models._data import Dataset, load_dataset
from xaudit.models._diagnostics import overfitting_diagnostics
from xaudit.models._errors import XauditError
from xaudit.models._memorization import (MemorizationResult, MemorizationRun, corrupt_labels, memorization_test,
                                         shuffle_dataset, spatial_shuffle_test)
from xaudit.models._train import TrainConfig, evaluate, stratified_split, train_model

QUICK = TrainConfig(epochs=8, lr=3e-3, batch_size=32)


def _sequences(n: int, seed: int, *, local: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 32-step signals. ``local``: the class is the ORDER of a 4-step motif at a random place
    (+ + − − against + − + −: same values, same sum), which a fixed permutation of time steps scrambles.
    Otherwise the class is a constant offset, which no permutation can hide."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.3 * torch.randn(n, 32, 1, generator=g)
    if not local:
        return x + (y.float() - 0.5)[:, None, None], y
    motifs = torch.tensor([[1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0]])
    starts = torch.randint(0, 28, (n,), generator=g)
    for i in range(n):
        x[i, starts[i]:starts[i] + 4, 0] += motifs[y[i]]
    return x, y


def _dataset(local: bool) -> Dataset:
    x_train, y_train = _sequences(300, 1, local=local)
    x_test, y_test = _sequences(200, 2, local=local)
    return Dataset("motifs", "sequence", x_train, y_train, x_test, y_test, ("a", "b"))


def test_shuffle_applies_one_permutation_to_train_and_test() -> None:
    data = load_dataset("digits").subset(20, 10)
    shuffled, perm = shuffle_dataset(data, seed=3)
    assert sorted(perm.tolist()) == list(range(64)) and not torch.equal(perm, torch.arange(64))
    for split in ("x_train", "x_test"):
        before, after = getattr(data, split), getattr(shuffled, split)
        assert torch.equal(after.flatten(2), before.flatten(2)[:, :, perm])
    assert torch.equal(shuffled.y_test, data.y_test)
    seq = _dataset(local=True)
    seq_shuffled, seq_perm = shuffle_dataset(seq, seed=3)
    assert torch.equal(seq_shuffled.x_test, seq.x_test[:, seq_perm])


def test_spatial_shuffle_hurts_a_cnn_only_when_order_matters() -> None:
    local = spatial_shuffle_test("cnn", _dataset(local=True), QUICK, hidden=8)
    assert local.original_test_accuracy > 0.9
    assert local.drop > 0.15, local.to_json()
    assert "relies on local structure" in local.interpretation
    offset = spatial_shuffle_test("cnn", _dataset(local=False), QUICK, hidden=8)
    assert abs(offset.drop) < 0.05, offset.to_json()


def test_corrupt_labels() -> None:
    y = torch.arange(1000) % 10
    assert torch.equal(corrupt_labels(y, 0.0, 10, 0), y)
    noisy = corrupt_labels(y, 1.0, 10, 0)
    assert 0.05 < (noisy == y).float().mean() < 0.15  # random labels agree by chance (1/10)
    assert torch.equal(noisy, corrupt_labels(y, 1.0, 10, 0))


def test_random_labels_are_fitted_slower_and_do_not_generalize() -> None:
    data = load_dataset("digits").subset(200, 200)
    result = memorization_test("cnn", data, TrainConfig(epochs=12, lr=3e-3, batch_size=32), threshold=0.9)
    clean, noisy = result.runs
    assert clean.epochs_to_fit is not None and clean.test_accuracy > 0.7
    # memorizes something (well above the 10% chance on its own random labels) …
    assert noisy.final_train_accuracy > 0.25
    # … but more slowly than true labels at every epoch, and learns nothing that transfers
    assert all(n < c for n, c in zip(noisy.train_accuracy, clean.train_accuracy))
    assert noisy.test_accuracy < 0.2
    assert json.dumps(result.to_json()) and "memorization" in result.interpretation


def test_overfitting_diagnostics_bundle() -> None:
    data = load_dataset("digits").subset(300, 150)
    trained = train_model("cnn", data, TrainConfig(epochs=3, batch_size=32))
    diagnostics = overfitting_diagnostics(trained.model, data, trained)
    fit, _ = stratified_split(data.y_train, 0.1, torch.Generator().manual_seed(0))  # the default val_fraction, seed
    train_acc = evaluate(trained.model, data.x_train[fit], data.y_train[fit])[1]
    test_acc = evaluate(trained.model, data.x_test, data.y_test)[1]
    assert diagnostics.gap.gap == pytest.approx(train_acc - test_acc, abs=1e-12)
    assert diagnostics.history is not None and diagnostics.history.epochs == 3
    assert diagnostics.calibration.n_samples == 150
    assert diagnostics.memorization is None and diagnostics.shuffle is None
    out = json.loads(json.dumps(diagnostics.to_json(), allow_nan=False))
    assert set(out) == {"gap", "history", "calibration", "spectra", "memorization", "shuffle", "summary"}
    assert out["summary"][0] == diagnostics.gap.interpretation
    assert trained.model.training is False


def test_overfitting_diagnostics_with_retraining_tests() -> None:
    data = load_dataset("digits").subset(120, 60)
    trained = train_model("cnn", data, TrainConfig(epochs=2, batch_size=32))
    diagnostics = overfitting_diagnostics(trained.model, data, trained.history, retrain=True,
                                          retrain_config=TrainConfig(epochs=2, batch_size=32))
    assert diagnostics.memorization is not None and diagnostics.shuffle is not None
    assert diagnostics.shuffle.axis == "pixel positions" and len(diagnostics.summary) == 6


def test_learning_curve_is_a_train_fraction_sweep() -> None:
    from xaudit.models._diagnostics import interpret_learning_curve, learning_curve

    result = learning_curve("cnn", "digits", (0.25, 1.0), base=TrainConfig(epochs=2, batch_size=32), n_train=200,
                            n_test=80, backend="sequential")
    assert [p.train_fraction for p in result.points] == [0.25, 1.0]
    assert result.trials[0].n_train < result.trials[1].n_train == 200
    assert "from 25% to 100% of the training data" in interpret_learning_curve(result)
    assert result.recommendation.chosen.point.train_fraction == 1.0


def test_diagnostics_without_a_training_split() -> None:
    data = load_dataset("digits").subset(100, 60)
    trained = train_model("cnn", data, TrainConfig(epochs=1))
    test_only = Dataset("user", "image", data.x_train[:0], data.y_train[:0], data.x_test, data.y_test,
                        data.class_names)
    diagnostics = overfitting_diagnostics(trained.model, test_only)
    assert diagnostics.gap.verdict == "unknown" and diagnostics.gap.gap is None and diagnostics.history is None
    assert json.dumps(diagnostics.to_json(), allow_nan=False)


# ---- which training samples the gap is measured on -------------------------------------------------------------

@pytest.fixture(scope="module")
def held_out_run():
    """A cnn trained with 30% of its training split held out for validation (it never fits those)."""
    data = load_dataset("digits").subset(240, 120)
    config = TrainConfig(epochs=4, batch_size=32, lr=3e-3, val_fraction=0.3, seed=3)
    return data, config, train_model("cnn", data, config)


def _correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum())


def test_train_accuracy_is_on_the_samples_the_model_was_fitted_on(held_out_run) -> None:
    data, config, trained = held_out_run
    model = trained.model
    # train_model's split, rebuilt by hand: the first draw of a generator seeded with the config's seed
    fit, val = stratified_split(data.y_train, config.val_fraction, torch.Generator().manual_seed(config.seed))
    assert len(fit) + len(val) == data.n_train and len(val) > 60
    fit_right, all_right = _correct(model, data.x_train[fit], data.y_train[fit]), _correct(model, data.x_train,
                                                                                            data.y_train)
    test_right = _correct(model, data.x_test, data.y_test)
    assert fit_right / len(fit) == trained.history[-1].train_accuracy  # what training itself recorded
    assert fit_right / len(fit) != all_right / data.n_train  # the held-out samples change the number
    gap = overfitting_diagnostics(model, data, trained).gap
    assert gap.train_split == "fit" and gap.n_train == len(fit)
    assert gap.train_accuracy == fit_right / len(fit) and gap.test_accuracy == test_right / data.n_test
    assert gap.gap == pytest.approx(fit_right / len(fit) - test_right / data.n_test, abs=1e-12)
    assert f"the {len(fit)} samples the model was fitted on (the {len(val)} held out" in gap.train_samples
    # a history and the config (what a report's subject carries) rebuild the same split
    same = overfitting_diagnostics(model, data, trained.history, train_config=config).gap
    assert (same.train_split, same.train_accuracy) == ("fit", gap.train_accuracy)
    # a history alone: the split is unknown, so the whole training split, and the text says so
    whole = overfitting_diagnostics(model, data, trained.history).gap
    assert whole.train_split == "all" and whole.train_accuracy == all_right / data.n_train
    assert "whole training split" in whole.interpretation and "not known" in whole.train_samples
    out = json.loads(json.dumps(overfitting_diagnostics(model, data, trained).to_json(), allow_nan=False))
    assert out["gap"]["train_split"] == "fit" and out["gap"]["n_train"] == len(fit)


def test_a_history_of_other_data_does_not_pass_for_the_fitted_split(held_out_run) -> None:
    data, config, trained = held_out_run
    # the same samples in another order: the split rebuilt from the config picks other samples than training did
    flipped = Dataset(data.name, data.kind, data.x_train.flip(0), data.y_train.flip(0), data.x_test, data.y_test,
                      data.class_names)
    gap = overfitting_diagnostics(trained.model, flipped, trained).gap
    assert gap.train_split == "all" and "not those of that run" in gap.train_samples
    assert gap.train_accuracy == _correct(trained.model, data.x_train, data.y_train) / data.n_train
    with pytest.raises(XauditError, match="train_config differs"):
        overfitting_diagnostics(trained.model, data, trained, train_config=TrainConfig(epochs=1))


def test_diagnostics_bad_input_is_one_line_before_any_pass() -> None:
    data = load_dataset("digits").subset(60, 40)
    three = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))  # 3 outputs, 10 classes
    cases = [(("cnn", data), ["'cnn'", "train_model('cnn', dataset)"]),
             ((three, "digits"), ["needs a Dataset", "load_dataset('digits')"]),
             ((three, data), ["outputs 3 class scores", "go up to 9 (10 classes)"])]
    for args, fragments in cases:
        with pytest.raises(XauditError) as info:
            overfitting_diagnostics(*args)
        assert "\n" not in str(info.value) and all(f in str(info.value) for f in fragments), str(info.value)


def test_memorization_names_the_labels_of_its_first_run() -> None:
    # label_noise=(0.5, 1.0): the first run is not on true labels, and the text must not say it is
    runs = (MemorizationRun(0.5, (0.2, 0.3), None, 0.5), MemorizationRun(1.0, (0.15, 0.2), None, 0.1))
    text = MemorizationResult(runs, 0.95, 40, 10, 2).interpretation
    assert "true labels" not in text and "labels 50% randomized: 30.0%" in text
    fitted = (MemorizationRun(0.5, (0.5, 0.96), 2, 0.5), MemorizationRun(1.0, (0.5, 0.7, 0.97), 3, 0.1))
    result = MemorizationResult(fitted, 0.95, 40, 10, 3)
    assert result.slowdown == 1.5 and "1.5× the 2 epochs labels 50% randomized took" in result.interpretation
    clean = (MemorizationRun(0.0, (0.9, 0.99), 2, 0.8), MemorizationRun(1.0, (0.2, 0.3), None, 0.1))
    assert "true labels: 99.0%" in MemorizationResult(clean, 0.95, 40, 10, 2).interpretation
    assert MemorizationResult(clean[1:], 0.95, 40, 10, 2).slowdown is None  # one run: nothing to compare with
    with pytest.raises(XauditError, match="reach above 0"):
        memorization_test("cnn", load_dataset("digits").subset(40, 20), label_noise=(0.0,))
    with pytest.raises(XauditError, match=r"in \[0, 1\], got 1.5"):
        memorization_test("cnn", load_dataset("digits").subset(40, 20), label_noise=(0.0, 1.5))
