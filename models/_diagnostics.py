"""Overfitting diagnostics of one model: the generalization gap read against its sampling error, what the
training curves say, calibration and the weight spectra — plus the two retraining tests (random-label
memorization and the spatial shuffle), which live in :mod:`._memorization`.

Thresholds that turn numbers into words are heuristics; each is named here and echoed in the JSON.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._calibration import Calibration, check_binning, model_calibration
from ._data import Dataset, check_seed
from ._errors import XauditError, did_you_mean
from ._fitted import _check_model_fits, _check_subject, _history_of, _measure_train, _training_run
from ._memorization import MemorizationResult, ShuffleResult, memorization_test, spatial_shuffle_test
from ._modes import eval_mode
from ._spectra import WeightSpectra, weight_spectra
from ._sweep import run_sweep
from ._sweep_result import SweepResult, accuracy_difference
from ._train import EpochRecord, TrainConfig, TrainResult, evaluate

#: Gap (train − test accuracy) above which overfitting is "mild", "clear" and "severe". A gap exactly at a
#: level takes the milder verdict: gaps are rounded to 12 decimals (:func:`._sweep_result.accuracy_difference`),
#: so 100% train against 950 of 1000 test samples is a gap of exactly 0.05, "mild".
GAP_LEVELS = (0.02, 0.05, 0.15)
#: Below this many test samples the gap's reading carries a warning.
FEW_TEST_SAMPLES = 30
#: Train accuracy below this reads as underfitting, unless the gap is significant (beyond the test set's
#: sampling error) and above the "clear" level GAP_LEVELS[1]. A model that misses this much of its own training
#: data needs capacity, epochs or less regularization first, and a mild gap next to it (70% train, 66% test) is
#: not what holds it back: reading it as "mild" would name regularization, which lowers train accuracy further.
#: A clear, measured gap (70% against 60%) is overfitting whatever the train accuracy, and is read as such.
UNDERFIT_TRAIN_ACCURACY = 0.8
#: Which training samples a train accuracy is measured on: those the model was fitted on (the part held out
#: for validation excluded), or the whole training split, which includes any samples held out for validation.
TRAIN_SPLITS: tuple[str, ...] = ("fit", "all")


@dataclass(frozen=True)
class GapDiagnosis:
    """The generalization gap (train − test accuracy) with its standard error and a verdict in words.

    ``gap_se`` is the binomial standard error of the test accuracy, √(p(1 − p)/n_test). A gap within the
    Wilson interval's half-width (``gap_margin`` in JSON, :func:`sampling_margin`; about 2 · ``gap_se`` on a
    large test set, and not 0 at an accuracy of 0 or 1 on a few samples) cannot be told from zero.

    ``train_split`` says which training samples ``train_accuracy`` is on (:data:`TRAIN_SPLITS`): ``"fit"``, the
    ``n_train`` samples the model was fitted on, or ``"all"``, the whole training split when the split the
    model was fitted on is not known; ``train_samples`` says it in words.
    """

    train_accuracy: float | None
    test_accuracy: float
    train_loss: float | None
    test_loss: float | None
    n_test: int
    verdict: str
    interpretation: str
    train_split: str | None = "fit"
    n_train: int | None = None
    train_samples: str = ""

    @property
    def gap(self) -> float | None:
        return None if self.train_accuracy is None else accuracy_difference(self.train_accuracy, self.test_accuracy)

    @property
    def gap_se(self) -> float:
        p = self.test_accuracy
        return math.sqrt(max(p * (1 - p), 0.0) / max(self.n_test, 1))

    @property
    def loss_gap(self) -> float | None:
        return None if self.train_loss is None or self.test_loss is None else self.test_loss - self.train_loss

    def to_json(self) -> dict[str, Any]:
        return {"train_accuracy": self.train_accuracy, "test_accuracy": self.test_accuracy, "gap": self.gap,
                "gap_se": self.gap_se, "gap_margin": sampling_margin(self.test_accuracy, self.n_test),
                "train_loss": self.train_loss, "test_loss": self.test_loss,
                "loss_gap": self.loss_gap, "n_test": self.n_test, "train_split": self.train_split,
                "n_train": self.n_train, "train_samples": self.train_samples, "verdict": self.verdict,
                "interpretation": self.interpretation,
                "thresholds": {"gap_levels": list(GAP_LEVELS), "underfit_train_accuracy": UNDERFIT_TRAIN_ACCURACY}}


def _count(value: Any, name: str, fix: str) -> int:
    """``value`` as a whole number ≥ 1 (numpy integers too), else a one-line error ending in ``fix``."""
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < 1:
        raise XauditError(f"{name} must be the number of samples the accuracy was measured on (a whole number "
                          f"≥ 1), got {value!r}: {fix}")
    return number


def generalization_gap(train_accuracy: float, test_accuracy: float, *, n_test: int,
                       train_loss: float | None = None, test_loss: float | None = None,
                       train_split: str = "fit", n_train: int | None = None) -> GapDiagnosis:
    """Read a train/test accuracy pair: underfitting, no measurable gap, mild, clear or severe overfitting.

    ``train_split`` says which training samples ``train_accuracy`` was measured on (:data:`TRAIN_SPLITS`):
    ``"fit"`` (the samples the model was fitted on) or ``"all"`` (the whole training split, which may include
    samples held out for validation); the words of the verdict follow it. ``n_train``, if given, is that
    number of samples. The verdict ladder is described at :data:`GAP_LEVELS` and :data:`UNDERFIT_TRAIN_ACCURACY`.
    """
    n_test = _count(n_test, "n_test", "pass e.g. n_test=len(y_test)")
    if train_split not in TRAIN_SPLITS:
        raise did_you_mean("train split", train_split, TRAIN_SPLITS)
    if not (0 <= train_accuracy <= 1 and 0 <= test_accuracy <= 1):
        raise XauditError(f"accuracies must be in [0, 1], got train {train_accuracy} and test {test_accuracy}")
    if n_train is not None:
        n_train = _count(n_train, "n_train", "pass e.g. n_train=len(y_fit), or leave it out")
    gap = accuracy_difference(train_accuracy, test_accuracy)
    margin = sampling_margin(test_accuracy, n_test)
    significant = gap > margin
    mild, clear, severe = GAP_LEVELS
    fitted = train_split == "fit"
    own = "its own training data" if fitted else "its training split"
    if train_accuracy < UNDERFIT_TRAIN_ACCURACY and not (significant and gap > clear):
        verdict = "underfitting"
        text = (f"underfitting: the model reaches only {train_accuracy:.1%} on {own} (test {test_accuracy:.1%}); "
                "more capacity, more epochs or less regularization come before any fight against overfitting")
    elif not significant or gap <= mild:
        verdict = "no_overfitting"
        text = (f"no measurable overfitting: the gap of {gap:+.1%} is within the test set's sampling error "
                f"(±{margin:.1%}) or at most {mild:.0%}")
    elif gap <= clear:
        verdict = "mild"
        text = f"mild overfitting: train accuracy exceeds test accuracy by {gap:.1%}"
    elif gap <= severe:
        verdict = "overfitting"
        text = (f"overfitting: a {gap:.1%} gap between train ({train_accuracy:.1%}) and test ({test_accuracy:.1%}); "
                "a sweep over regularization and augmentation shows which knob narrows it")
    else:
        verdict = "severe"
        text = (f"severe overfitting: the model scores far better on {own} ({train_accuracy:.1%}) than on "
                f"unseen data ({test_accuracy:.1%}); it memorizes — more data or augmentation is the usual cure")
    if n_test < FEW_TEST_SAMPLES:
        text += f" (only {n_test} test sample{'s' if n_test != 1 else ''}: any reading of the gap is weak)"
    if not fitted:
        text += ("; train accuracy is on the whole training split, which includes any samples held out for "
                 "validation (never fitted, so the gap is usually understated)")
    return GapDiagnosis(train_accuracy, test_accuracy, train_loss, test_loss, n_test, verdict, text,
                        train_split, n_train)


def sampling_margin(accuracy: float, n: int) -> float:
    """Half-width of the Wilson score interval (z = 2) around an accuracy measured on ``n`` samples: the gap a
    finite test set cannot tell from zero. Close to two binomial standard errors for a large ``n``, but not 0 when
    the accuracy is 0 or 1 on a handful of samples (1 of 1 right: ±40%, where 2·SE said ±0%)."""
    n = max(int(n), 1)
    z2 = 4.0
    spread = accuracy * (1 - accuracy) / n + z2 / (4 * n * n)
    return 2.0 * math.sqrt(max(spread, 0.0)) / (1 + z2 / n)


@dataclass(frozen=True)
class HistoryDiagnosis:
    """What the training curves say: the epoch of lowest validation loss and how far it rose afterwards."""

    epochs: int
    best_val_epoch: int | None
    best_val_loss: float | None
    final_val_loss: float | None
    final_train_accuracy: float
    interpretation: str

    @property
    def val_loss_rise(self) -> float | None:
        if self.best_val_loss is None or self.final_val_loss is None:
            return None
        return self.final_val_loss - self.best_val_loss

    def to_json(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "best_val_epoch": self.best_val_epoch, "best_val_loss": self.best_val_loss,
                "final_val_loss": self.final_val_loss, "val_loss_rise": self.val_loss_rise,
                "final_train_accuracy": self.final_train_accuracy, "interpretation": self.interpretation}


def diagnose_history(history: Sequence[EpochRecord]) -> HistoryDiagnosis | None:
    """Read per-epoch records: did validation loss turn up while training went on (the classic overfitting sign)?"""
    if not history:
        return None
    last = history[-1]
    with_val = [r for r in history if r.val_loss is not None]
    if not with_val:
        return HistoryDiagnosis(len(history), None, None, None, last.train_accuracy,
                                "no validation split was held out, so the curves cannot show when overfitting began")
    best = min(with_val, key=lambda r: r.val_loss)  # type: ignore[arg-type, return-value]
    final = with_val[-1]
    assert best.val_loss is not None and final.val_loss is not None
    rise = final.val_loss - best.val_loss
    if best.epoch == final.epoch:
        text = "validation loss was still falling at the last epoch: longer training may help"
    elif rise > 0.1 * best.val_loss:
        text = (f"validation loss bottomed out at epoch {best.epoch} ({best.val_loss:.3f}) and rose {rise:.3f} by "
                f"epoch {final.epoch} while training continued: overfitting set in; early stopping with patience "
                f"≈ {max(1, (final.epoch - best.epoch) // 3)} would have kept epoch {best.epoch}")
    else:
        text = (f"validation loss flattened after epoch {best.epoch} (within {rise:.3f} of its best): "
                "training converged without a clear turn to overfitting")
    return HistoryDiagnosis(len(history), best.epoch, best.val_loss, final.val_loss, last.train_accuracy, text)


@dataclass(frozen=True)
class Diagnostics:
    """Every overfitting diagnostic of one model; ``to_json()`` is report.json's ``diagnostics`` entry."""

    gap: GapDiagnosis
    history: HistoryDiagnosis | None
    calibration: Calibration
    spectra: WeightSpectra
    memorization: MemorizationResult | None = None
    shuffle: ShuffleResult | None = None

    @property
    def summary(self) -> tuple[str, ...]:
        """One sentence per diagnostic, in reading order."""
        lines = [self.gap.interpretation]
        if self.history is not None:
            lines.append(self.history.interpretation)
        lines.append(f"calibration: {self.calibration.interpretation}")
        lines.append(f"weight spectra: {self.spectra.interpretation}")
        for test in (self.memorization, self.shuffle):
            if test is not None:
                lines.append(test.interpretation)
        return tuple(lines)

    def to_json(self) -> dict[str, Any]:
        return {"gap": self.gap.to_json(), "history": None if self.history is None else self.history.to_json(),
                "calibration": self.calibration.to_json(), "spectra": self.spectra.to_json(),
                "memorization": None if self.memorization is None else self.memorization.to_json(),
                "shuffle": None if self.shuffle is None else self.shuffle.to_json(),
                "summary": list(self.summary)}

    def _repr_html_(self) -> str:
        # imported on demand: models/ must not import reports/ at module level (models → explain → reports)
        from xaudit.reports._notebook import diagnostics_html

        return diagnostics_html(self)


def overfitting_diagnostics(
    model: nn.Module,
    dataset: Dataset,
    train_result_or_history: TrainResult | Sequence[EpochRecord] | None = None,
    *,
    train_config: TrainConfig | None = None,
    n_bins: int = 15,
    retrain: bool = False,
    retrain_n_train: int | None = 500,
    retrain_config: TrainConfig | None = None,
    seed: int = 0,
) -> Diagnostics:
    """Diagnose ``model`` on ``dataset``: gap (train vs test), training curves, calibration on the test split,
    and weight spectra — no training, so it costs a few forward passes.

    Train accuracy, and so the gap, is measured on the samples the model was fitted on when the split it was
    fitted on is known: from the config of a :class:`TrainResult` passed as ``train_result_or_history``, or
    from ``train_config`` (``train_model`` holds out ``stratified_split(y_train, val_fraction, seed)``, which the
    same call rebuilds). A history of that run is checked against the model: when the fit split's loss and
    accuracy are not the ones recorded at the epoch the model holds, the model or data are not that run's,
    and the whole training split is used, as when no config is given. ``gap.train_split`` and
    ``gap.train_samples`` say which.

    ``retrain=True`` also runs the random-label memorization test and the spatial shuffle test, which train
    fresh copies of a built-in architecture on ``retrain_n_train`` training samples with ``retrain_config``
    (default: the model's own training config if known, else ``TrainConfig()``).
    """
    _check_subject(model, dataset)
    history = _history_of(train_result_or_history)
    config, held = _training_run(train_result_or_history, train_config, history)
    check_binning(n_bins)
    if dataset.n_test == 0:
        raise XauditError(f"dataset {dataset.name!r} has no test samples: the diagnostics compare train with test")
    spec = getattr(model, "spec", None)
    if retrain:
        if spec is None:
            raise XauditError("the memorization and shuffle tests retrain the architecture, which only works for the "
                              "built-in models: pass retrain=False for other models")
        check_seed(seed)
    _check_model_fits(model, dataset)
    with eval_mode(model):  # one switch for the passes (each would restore its own)
        test_loss, test_acc = evaluate(model, dataset.x_test, dataset.y_test)
        train = _measure_train(model, dataset, config, held) if dataset.n_train else None
        calibration = model_calibration(model, dataset.x_test, dataset.y_test, n_bins=n_bins)
    if train is None:  # a user file with test data only
        gap = GapDiagnosis(None, test_acc, None, test_loss, dataset.n_test, "unknown",
                           "the data has no training split, so the generalization gap cannot be measured",
                           train_split=None, n_train=0, train_samples="none: the data has no training split")
    else:
        gap = generalization_gap(train.accuracy, test_acc, n_test=dataset.n_test, train_loss=train.loss,
                                 test_loss=test_loss, train_split=train.split, n_train=train.n)
        gap = dataclasses.replace(gap, train_samples=train.words)
    memorization = shuffle = None
    if retrain:
        assert spec is not None
        retrain_with = retrain_config or config or TrainConfig()
        with torch.random.fork_rng(devices=[]):
            memorization = memorization_test(spec.name, dataset, retrain_with, n_train=retrain_n_train, seed=seed,
                                             hidden=spec.hidden)
            shuffle = spatial_shuffle_test(spec.name, dataset, retrain_with, n_train=retrain_n_train, seed=seed,
                                           hidden=spec.hidden)
    return Diagnostics(gap=gap, history=diagnose_history(history), calibration=calibration,
                       spectra=weight_spectra(model), memorization=memorization, shuffle=shuffle)


def learning_curve(model: str, data: str | Dataset, fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
                   **sweep_options: Any) -> SweepResult:
    """The learning curve: a sweep over ``train_fraction`` (nested stratified subsets), returned as a
    :class:`SweepResult` whose ``curve("train_fraction")`` holds train/validation/test accuracy per size.

    ``sweep_options`` go to :func:`run_sweep` (base config, repeats, backend, run_dir, …).
    """
    return run_sweep(model, data, {"train_fraction": list(fractions)}, **sweep_options)


def interpret_learning_curve(result: SweepResult) -> str:
    """Read a learning curve: is test accuracy still rising with more data, and how does the gap close?"""
    curve = result.curve("train_fraction")
    if len(curve) < 2:
        return "a learning curve needs at least two training-set sizes"
    (a, b) = curve[-2], curve[-1]
    rise = b.stats["test_accuracy"].mean - a.stats["test_accuracy"].mean
    gap = b.stats["gap"].mean
    step = f"from {a.value:.0%} to {b.value:.0%} of the training data"
    if rise > 0.01:
        return (f"test accuracy still rises {rise:+.1%} {step} (gap at full data {gap:.1%}): more data, or "
                "augmentation that imitates it, should help")
    return (f"test accuracy has plateaued ({rise:+.1%} {step}; gap at full data {gap:.1%}): more of the same data "
            "will not help much; capacity or the recipe are the levers")
