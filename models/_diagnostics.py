"""Overfitting diagnostics of one model: the generalization gap read against its sampling error, what the
training curves say, calibration and the weight spectra — plus the two retraining tests (random-label
memorization and the spatial shuffle), which live in :mod:`._memorization`.

Thresholds that turn numbers into words are heuristics; each is named here and echoed in the JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._calibration import Calibration, model_calibration
from ._data import Dataset
from ._errors import XauditError
from ._memorization import MemorizationResult, ShuffleResult, memorization_test, spatial_shuffle_test
from ._modes import eval_mode
from ._spectra import WeightSpectra, weight_spectra
from ._sweep import run_sweep
from ._sweep_result import SweepResult
from ._train import EpochRecord, TrainConfig, TrainResult, evaluate

#: Gap (train − test accuracy) above which overfitting is "mild", "clear" and "severe".
GAP_LEVELS = (0.02, 0.05, 0.15)
#: Below this many test samples the gap's reading carries a warning.
FEW_TEST_SAMPLES = 30
#: Train accuracy below this (and a gap that is not significant) reads as underfitting.
UNDERFIT_TRAIN_ACCURACY = 0.8


@dataclass(frozen=True)
class GapDiagnosis:
    """The generalization gap (train − test accuracy) with its standard error and a verdict in words.

    ``gap_se`` is the binomial standard error of the test accuracy, √(p(1 − p)/n_test). A gap within the
    Wilson interval's half-width (``gap_margin`` in JSON, :func:`sampling_margin`; about 2 · ``gap_se`` on a
    large test set, and not 0 at an accuracy of 0 or 1 on a few samples) cannot be told from zero.
    """

    train_accuracy: float | None
    test_accuracy: float
    train_loss: float | None
    test_loss: float | None
    n_test: int
    verdict: str
    interpretation: str

    @property
    def gap(self) -> float | None:
        return None if self.train_accuracy is None else self.train_accuracy - self.test_accuracy

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
                "loss_gap": self.loss_gap, "n_test": self.n_test, "verdict": self.verdict,
                "interpretation": self.interpretation,
                "thresholds": {"gap_levels": list(GAP_LEVELS), "underfit_train_accuracy": UNDERFIT_TRAIN_ACCURACY}}


def generalization_gap(train_accuracy: float, test_accuracy: float, *, n_test: int,
                       train_loss: float | None = None, test_loss: float | None = None) -> GapDiagnosis:
    """Read a train/test accuracy pair: underfitting, no measurable gap, mild, clear or severe overfitting."""
    if not (0 <= train_accuracy <= 1 and 0 <= test_accuracy <= 1):
        raise XauditError(f"accuracies must be in [0, 1], got train {train_accuracy} and test {test_accuracy}")
    gap = train_accuracy - test_accuracy
    margin = sampling_margin(test_accuracy, n_test)
    significant = gap > margin
    mild, clear, severe = GAP_LEVELS
    if train_accuracy < UNDERFIT_TRAIN_ACCURACY and not (significant and gap > clear):
        verdict = "underfitting"
        text = (f"underfitting: the model reaches only {train_accuracy:.1%} on its own training data; more capacity, "
                "more epochs or less regularization come before any fight against overfitting")
    elif not significant or gap <= mild:
        verdict = "no_overfitting"
        text = (f"no measurable overfitting: the gap of {gap:+.1%} is within the test set's sampling error "
                f"(±{margin:.1%}) or below {mild:.0%}")
    elif gap <= clear:
        verdict = "mild"
        text = f"mild overfitting: train accuracy exceeds test accuracy by {gap:.1%}"
    elif gap <= severe:
        verdict = "overfitting"
        text = (f"overfitting: a {gap:.1%} gap between train ({train_accuracy:.1%}) and test ({test_accuracy:.1%}); "
                "a sweep over regularization and augmentation shows which knob narrows it")
    else:
        verdict = "severe"
        text = (f"severe overfitting: the model fits its training data ({train_accuracy:.1%}) far better than "
                f"unseen data ({test_accuracy:.1%}); it memorizes — more data or augmentation is the usual cure")
    if n_test < FEW_TEST_SAMPLES:
        text += f" (only {n_test} test sample{'s' if n_test != 1 else ''}: any reading of the gap is weak)"
    return GapDiagnosis(train_accuracy, test_accuracy, train_loss, test_loss, int(n_test), verdict, text)


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


def _history_of(source: TrainResult | Sequence[EpochRecord] | None) -> tuple[EpochRecord, ...]:
    if source is None:
        return ()
    if isinstance(source, TrainResult):
        return source.history
    records = tuple(source)
    if not all(isinstance(r, EpochRecord) for r in records):
        raise XauditError("train_result_or_history must be a TrainResult or a sequence of EpochRecord")
    return records


def overfitting_diagnostics(
    model: nn.Module,
    dataset: Dataset,
    train_result_or_history: TrainResult | Sequence[EpochRecord] | None = None,
    *,
    n_bins: int = 15,
    retrain: bool = False,
    retrain_n_train: int | None = 500,
    retrain_config: TrainConfig | None = None,
    seed: int = 0,
) -> Diagnostics:
    """Diagnose ``model`` on ``dataset``: gap (full train split vs test), training curves, calibration on the
    test split, and weight spectra — no training, so it costs a few forward passes.

    ``retrain=True`` also runs the random-label memorization test and the spatial shuffle test, which train
    fresh copies of a built-in architecture on ``retrain_n_train`` training samples with ``retrain_config``
    (default: the model's own training config if known, else ``TrainConfig()``).
    """
    if dataset.n_test == 0:
        raise XauditError(f"dataset {dataset.name!r} has no test samples: the diagnostics compare train with test")
    history = _history_of(train_result_or_history)
    with eval_mode(model):  # one switch for the three passes (each would restore its own)
        test_loss, test_acc = evaluate(model, dataset.x_test, dataset.y_test)
        train = evaluate(model, dataset.x_train, dataset.y_train) if dataset.n_train else None
        calibration = model_calibration(model, dataset.x_test, dataset.y_test, n_bins=n_bins)
    if train is None:  # a user file with test data only
        gap = GapDiagnosis(None, test_acc, None, test_loss, dataset.n_test, "unknown",
                           "the data has no training split, so the generalization gap cannot be measured")
    else:
        gap = generalization_gap(train[1], test_acc, n_test=dataset.n_test, train_loss=train[0], test_loss=test_loss)
    memorization = shuffle = None
    if retrain:
        spec = getattr(model, "spec", None)
        if spec is None:
            raise XauditError("the memorization and shuffle tests retrain the architecture, which only works for the "
                              "built-in models: pass retrain=False for other models")
        config = retrain_config or (train_result_or_history.config
                                    if isinstance(train_result_or_history, TrainResult) else TrainConfig())
        with torch.random.fork_rng(devices=[]):
            memorization = memorization_test(spec.name, dataset, config, n_train=retrain_n_train, seed=seed,
                                             hidden=spec.hidden)
            shuffle = spatial_shuffle_test(spec.name, dataset, config, n_train=retrain_n_train, seed=seed,
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
