"""Calibration (ECE, reliability bins), the heavy-tail exponent of weight spectra, gap and history readings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from xaudit.models._calibration import calibration_from_proba, model_calibration
from xaudit.models._diagnostics import diagnose_history, generalization_gap, sampling_margin
from xaudit.models._errors import XauditError
from xaudit.models._spectra import FLAT, NON_FINITE, esd, fit_power_law, weight_spectra
from xaudit.models._train import EpochRecord


def test_ece_by_hand() -> None:
    # 4 predictions; bins of width 0.5: confidences 0.9, 0.8 (one right) and 0.6, 0.3→0.7 top class
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.7, 0.3]])
    labels = np.array([0, 1, 1, 0])  # right, wrong, right, right
    cal = calibration_from_proba(proba, labels, n_bins=2)
    # one bin [0.5, 1]: accuracy 3/4, mean confidence (0.9 + 0.8 + 0.6 + 0.7) / 4 = 0.75 → ECE 0
    assert len(cal.bins) == 1 and cal.bins[0].count == 4
    assert cal.ece == pytest.approx(0.0, abs=1e-12)
    cal = calibration_from_proba(proba, labels, n_bins=10)
    # bins 0.6, 0.7, 0.8, 0.9 hold one prediction each: |1 − .6|, |1 − .7|, |0 − .8|, |1 − .9| → mean 0.4
    assert [b.count for b in cal.bins] == [1, 1, 1, 1]
    assert cal.ece == pytest.approx((0.4 + 0.3 + 0.8 + 0.1) / 4)
    assert cal.mce == pytest.approx(0.8)
    assert cal.accuracy == 0.75 and cal.mean_confidence == pytest.approx(0.75)


def test_calibrated_and_overconfident_predictions() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.5, 1.0, 20000)
    correct = rng.uniform(size=20000) < confidence  # right exactly as often as claimed
    proba = np.stack([confidence, 1 - confidence], 1)
    labels = np.where(correct, 0, 1)
    calibrated = calibration_from_proba(proba, labels)
    assert calibrated.ece < 0.02 and "well calibrated" in calibrated.interpretation
    sharpened = np.stack([np.full(20000, 0.99), np.full(20000, 0.01)], 1)
    over = calibration_from_proba(sharpened, labels)
    assert over.ece == pytest.approx(0.99 - calibrated.accuracy, abs=1e-9)
    assert over.overconfidence > 0.2 and over.interpretation.startswith("overconfident")
    assert sum(b.count for b in calibrated.bins) == 20000


def test_calibration_rejects_bad_input() -> None:
    with pytest.raises(XauditError, match="class indices"):
        calibration_from_proba(np.full((3, 2), 0.5), np.array([0, 1, 2]))
    with pytest.raises(XauditError, match="did you mean 'quantile'"):
        calibration_from_proba(np.full((3, 2), 0.5), np.array([0, 1, 1]), strategy="quantil")


@pytest.mark.parametrize("alpha", [2.5, 3.0, 4.0])
def test_hill_estimator_recovers_a_pareto_exponent(alpha: float) -> None:
    rng = np.random.default_rng(1)
    sample = (rng.pareto(alpha - 1.0, 4000) + 1.0) * 0.3  # density ∝ x^(−alpha) above 0.3
    fit = fit_power_law(sample)
    assert fit.alpha == pytest.approx(alpha, abs=4 * fit.alpha_se + 0.05)
    assert fit.xmin == pytest.approx(0.3, rel=0.1)


def test_ks_chooses_where_the_tail_starts() -> None:
    rng = np.random.default_rng(2)
    bulk = rng.uniform(0.05, 1.0, 3000)
    tail = (rng.pareto(2.0, 600) + 1.0) * 1.0  # alpha = 3 above 1.0
    fit = fit_power_law(np.concatenate([bulk, tail]))
    assert 0.8 < fit.xmin < 1.5 and fit.alpha == pytest.approx(3.0, abs=0.4)


def test_esd_is_squared_singular_values_over_n_and_kernels_are_reshaped() -> None:
    u, _ = torch.linalg.qr(torch.randn(50, 50, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64))
    s = torch.linspace(1, 4, 20, dtype=torch.float64)
    w = u[:, :20] @ torch.diag(s) @ v.T
    assert np.allclose(esd(w), np.sort((s**2 / 50).numpy()))
    conv = nn.Conv1d(3, 16, 5)
    assert len(esd(conv.weight)) == 15  # 16 × (3·5) matrix: min(16, 15) eigenvalues


def test_weight_spectra_of_a_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 64), nn.ReLU(),
                          nn.Linear(64, 3))
    spectra = weight_spectra(model)
    assert [layer.layer for layer in spectra.layers] == ["0.weight", "3.weight", "5.weight"]
    conv, dense, head = spectra.layers
    assert conv.matrix_shape == (4, 9) and conv.alpha is None and "too few" in conv.note
    assert dense.n_eigenvalues == 64 and dense.alpha is not None and dense.fit.n_tail >= 5
    assert head.alpha is None  # 3 eigenvalues
    # an untrained 64-eigenvalue layer: fitted, but no heavier-tailed than its own weights shuffled
    assert dense.shuffled_alpha is not None and not dense.readable and "shuffled" in dense.note
    assert spectra.mean_alpha is None and "say nothing about training" in spectra.interpretation
    assert set(spectra.to_json()) >= {"layers", "mean_alpha", "interpretation"}


def test_untrained_layers_are_not_read_as_well_trained() -> None:
    # a small random layer's tail fit lands in the 2-6 band most of the time (27 of these 40 did before the
    # shuffled-weights null); against the null, a layer without structure passes about 1 time in 20
    called = 0
    for seed in range(20):
        torch.manual_seed(seed)
        for layer in weight_spectra(nn.Sequential(nn.Conv2d(8, 16, 3), nn.Linear(256, 32))).layers:
            assert layer.alpha is not None and layer.shuffled_alpha is not None
            called += layer.readable
            assert ("shuffled" in layer.note) is not layer.readable
    assert called <= 4


def _planted(seed: int) -> nn.Linear:
    """A 64×256 layer whose singular values fall as a power law (s_i ∝ i^-0.3, so α ≈ 2.8) plus noise."""
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(64, 64, generator=g))
    v, _ = torch.linalg.qr(torch.randn(256, 64, generator=g))
    s = 3 * torch.arange(1, 65, dtype=torch.float32) ** -0.3
    layer = nn.Linear(256, 64)
    with torch.no_grad():
        layer.weight.copy_(u @ torch.diag(s) @ v.T + 0.01 * torch.randn(64, 256, generator=g))
    return layer


def test_a_planted_heavy_tail_is_heavier_than_the_shuffled_weights() -> None:
    read = [weight_spectra(nn.Sequential(_planted(seed))).layers[0] for seed in range(5)]
    assert all(2 <= layer.alpha <= 4 for layer in read if layer.alpha is not None)
    assert sum(layer.readable for layer in read) >= 4  # shuffling destroys the structure the tail comes from
    spectra = weight_spectra(nn.Sequential(_planted(0)))
    assert spectra.mean_alpha == pytest.approx(spectra.layers[0].alpha)
    assert "typical of a well-trained layer" in spectra.interpretation


@pytest.mark.parametrize(("train", "test", "n", "verdict"), [
    (0.55, 0.53, 1000, "underfitting"),
    (0.95, 0.94, 1000, "no_overfitting"),
    (0.98, 0.90, 100, "overfitting"),      # 8 pp with SE 3 pp: significant
    (0.99, 0.96, 10000, "mild"),
    (1.00, 0.70, 1000, "severe"),
    (0.96, 0.93, 50, "no_overfitting"),    # 3 pp but 50 test samples: within the sampling error
])
def test_gap_verdicts(train: float, test: float, n: int, verdict: str) -> None:
    gap = generalization_gap(train, test, n_test=n)
    assert gap.verdict == verdict, gap.interpretation
    assert gap.gap == pytest.approx(train - test)


def test_a_gap_on_a_handful_of_samples_is_never_significant_by_a_zero_error_bar() -> None:
    # 1 of 1 test samples right: the binomial SE is 0, so "within ±0.0%" read any gap as measured
    one = generalization_gap(1.0, 1.0, n_test=1)
    assert sampling_margin(1.0, 1) == pytest.approx(0.4)
    assert "±40.0%" in one.interpretation and "only 1 test sample" in one.interpretation
    # 10 of 10 right and a 15-point gap: within the Wilson margin (±24%), not "severe"
    assert generalization_gap(0.85, 1.0, n_test=10).verdict != "severe"
    # a large test set: about two binomial standard errors
    assert sampling_margin(0.9, 10_000) == pytest.approx(2 * (0.9 * 0.1 / 10_000) ** 0.5, rel=0.01)
    assert "test sample" not in generalization_gap(0.95, 0.94, n_test=1000).interpretation


def test_history_reading() -> None:
    losses = [1.0, 0.6, 0.5, 0.55, 0.7, 0.9]
    rising = [EpochRecord(i + 1, 0.1, 0.99, v, 0.9) for i, v in enumerate(losses)]
    reading = diagnose_history(rising)
    assert reading.best_val_epoch == 3 and reading.val_loss_rise == pytest.approx(0.4)
    assert "overfitting set in" in reading.interpretation
    falling = [EpochRecord(i + 1, 0.1, 0.9, 1.0 - 0.1 * i, 0.9) for i in range(4)]
    assert "still falling" in diagnose_history(falling).interpretation
    no_val = [EpochRecord(1, 0.1, 0.9, None, None)]
    assert diagnose_history(no_val).best_val_epoch is None and diagnose_history(()) is None


# ---- exact boundaries, the underfitting rule, bad input ------------------------------------------------------

@pytest.mark.parametrize(("train", "test", "n", "level", "verdict"), [
    (1.0, 950 / 1000, 1000, 0.05, "mild"),              # 1.0 − 0.95 is 0.050000000000000044 in floats
    (1.0, 850 / 1000, 1000, 0.15, "overfitting"),       # … 0.15000000000000002
    (0.99, 97000 / 100000, 100000, 0.02, "no_overfitting"),  # … 0.020000000000000018
    (0.98, 96000 / 100000, 100000, 0.02, "no_overfitting"),
])
def test_a_gap_exactly_at_a_level_takes_the_milder_verdict(train: float, test: float, n: int, level: float,
                                                           verdict: str) -> None:
    # GAP_LEVELS are "above which": a gap of exactly 5 points (950 of 1000 right against 100%) is mild
    gap = generalization_gap(train, test, n_test=n)
    assert gap.gap == level and gap.to_json()["gap"] == level
    assert gap.verdict == verdict, gap.interpretation


def test_underfitting_unless_a_clear_gap_is_measured() -> None:
    # the documented rule (UNDERFIT_TRAIN_ACCURACY): below 80% train accuracy it is underfitting, unless the gap
    # is significant AND above the clear level (5 points); a significant mild gap does not make it "mild"
    significant_mild = generalization_gap(0.70, 0.66, n_test=10_000)
    assert significant_mild.gap > sampling_margin(0.66, 10_000)  # measured: 4.0 pp against ±0.95 pp
    assert significant_mild.verdict == "underfitting"
    assert "70.0% on its own training data (test 66.0%)" in significant_mild.interpretation
    assert generalization_gap(0.70, 0.60, n_test=10_000).verdict == "overfitting"   # significant and clear
    assert generalization_gap(0.70, 0.60, n_test=20).verdict == "underfitting"     # clear but not significant


@pytest.mark.parametrize("n_test", [0, -5, 2.5, True, None])
def test_gap_needs_a_positive_number_of_test_samples(n_test: object) -> None:
    with pytest.raises(XauditError, match="n_test must be the number of samples"):
        generalization_gap(0.9, 0.8, n_test=n_test)  # type: ignore[arg-type]


def test_the_gap_text_says_when_train_accuracy_includes_held_out_samples() -> None:
    whole = generalization_gap(1.0, 0.70, n_test=1000, train_split="all")
    assert whole.train_split == "all" and "own training data" not in whole.interpretation
    assert "whole training split" in whole.interpretation and "understated" in whole.interpretation
    low = generalization_gap(0.6, 0.59, n_test=1000, train_split="all")
    assert "on its training split" in low.interpretation and "own training data" not in low.interpretation
    with pytest.raises(XauditError, match="did you mean 'fit'"):
        generalization_gap(0.9, 0.8, n_test=100, train_split="fitt")


# ---- calibration input --------------------------------------------------------------------------------------

def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize(("transform", "fragments"), [
    (lambda logits: logits, ["got values from", "look like logits", "softmax"]),
    (lambda logits: np.log(_softmax(logits)), ["look like log-probabilities", "softmax"]),
    (lambda logits: _softmax(logits) * 0.9, ["rows that sum to 1", "sums to 0.9", "model_calibration"]),
    (lambda logits: np.where(np.arange(4) == 0, np.nan, _softmax(logits)), ["NaN/Inf", "finite softmax"]),
    (lambda logits: _softmax(logits)[:, :1], ["K ≥ 2", "np.stack([1 - p, p], 1)"]),
])
def test_calibration_refuses_what_is_not_softmax_probabilities(transform, fragments: list[str]) -> None:
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(50, 4)) * 3, rng.integers(0, 4, 50)
    # the oracle: the true softmax is accepted (ECE by Guo eq. 3 is checked above)
    assert calibration_from_proba(_softmax(logits), labels).n_samples == 50
    with pytest.raises(XauditError) as info:
        calibration_from_proba(transform(logits), labels if transform(logits).shape[1] > 1 else labels * 0)
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in fragments), message


@pytest.mark.parametrize(("labels", "fragments"), [
    (np.eye(4)[np.arange(20) % 4], ["shape (20, 4)", "one-hot", "labels.argmax(1)"]),
    ((np.arange(20) % 4)[:, None], ["shape (20, 1)", "labels.ravel()"]),
    (np.arange(20) % 4 + 0.7, ["whole class indices", "0.7 (sample 0)"]),
    (np.arange(20) % 4 - 1, ["0..3", "got -1 (sample 0)"]),
    (np.array(["a"] * 20), ["integer class indices", "<U1"]),
])
def test_calibration_labels_must_be_class_indices(labels: np.ndarray, fragments: list[str]) -> None:
    with pytest.raises(XauditError) as info:
        calibration_from_proba(np.full((20, 4), 0.25), labels)
    assert all(f in str(info.value) for f in fragments), str(info.value)
    with pytest.raises(XauditError, match="whole number"):
        calibration_from_proba(np.full((20, 4), 0.25), np.arange(20) % 4, n_bins=2.5)  # type: ignore[arg-type]


def test_model_calibration_refuses_a_label_column_before_sklearn_sees_it() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4))
    with pytest.raises(XauditError, match=r"shape \(20, 1\): pass labels.ravel\(\)"):
        model_calibration(model, torch.randn(20, 1, 8, 8), (torch.arange(20) % 4)[:, None])


# ---- degenerate spectra ---------------------------------------------------------------------------------------

def test_a_layer_with_a_nan_weight_has_no_exponent_and_the_rest_is_fitted() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 20), _planted(0))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    spectra = weight_spectra(model)
    broken, planted = spectra.layers
    assert broken.alpha is None and broken.reason == NON_FINITE and "diverged" in broken.note
    assert broken.n_eigenvalues is None and broken.lambda_max is None
    assert planted.alpha is not None and planted.readable  # the same fit as on its own
    assert planted.alpha == weight_spectra(nn.Sequential(_planted(0))).layers[0].alpha
    assert "1 layer has non-finite weights (the model diverged)" in spectra.interpretation
    assert json.dumps(spectra.to_json(), allow_nan=False)
    with pytest.raises(XauditError, match="NaN/Inf"):
        esd(model[0].weight)


@pytest.mark.parametrize("hidden", [32, 300])
def test_an_identity_initialised_layer_is_flat_and_does_not_stop_the_others(hidden: int) -> None:
    # an IRNN (Le et al. 2015): weight_hh = I, so every eigenvalue of WᵀW/N is 1/N up to rounding; hidden=300
    # aborted the whole model, hidden=32 fitted the rounding (α ≈ 5.6e14)
    torch.manual_seed(0)
    rnn = nn.RNN(12, hidden, nonlinearity="relu")
    nn.init.eye_(rnn.weight_hh_l0)
    model = nn.ModuleDict({"rnn": rnn, "head": nn.Linear(hidden, 64)})
    layers = {layer.layer: layer for layer in weight_spectra(model).layers}
    flat = layers["rnn.weight_hh_l0"]
    assert flat.fit is None and flat.alpha is None and flat.reason == FLAT and "flat spectrum" in flat.note
    assert flat.n_eigenvalues == hidden and flat.lambda_max == pytest.approx(1 / hidden)
    assert layers["rnn.weight_ih_l0"].alpha is not None and layers["head.weight"].alpha is not None


def test_spectrum_parameters_are_checked() -> None:
    with pytest.raises(XauditError, match="min_eigenvalues must be a whole number ≥ 5, got 3"):
        weight_spectra(nn.Linear(4, 4), min_eigenvalues=3)
    with pytest.raises(XauditError, match="min_tail must be a whole number ≥ 2, got 0"):
        fit_power_law(np.arange(1, 20.0), min_tail=0)
    with pytest.raises(XauditError, match="torch.nn.Module, got Tensor"):
        weight_spectra(torch.randn(20, 20))  # type: ignore[arg-type]
    with pytest.raises(XauditError, match="no tail with a slope"):
        fit_power_law(np.full(20, 0.5))
    # the threshold the JSON states is the one used
    spectra = weight_spectra(nn.Sequential(nn.Linear(6, 6)), min_eigenvalues=5)
    assert spectra.to_json()["min_eigenvalues"] == 5 and spectra.layers[0].alpha is not None
