"""Overfitting diagnostics of one model: the generalization gap read against its sampling error, what the
training curves say, calibration and the weight spectra — plus the two retraining tests (random-label
memorization and the spatial shuffle), which live in :mod:`._memorization`.

Thresholds that turn numbers into words are heuristics; each is named here and echoed in the JSON.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._calibration import Calibration, check_binning, model_calibration
from ._data import Dataset, check_seed
from ._errors import XauditError, did_you_mean
from ._memorization import MemorizationResult, ShuffleResult, memorization_test, spatial_shuffle_test
from ._modes import eval_mode
from ._nets import MODELS
from ._spectra import WeightSpectra, weight_spectra
from ._sweep import run_sweep
from ._sweep_result import SweepResult, accuracy_difference
from ._train import EpochRecord, TrainConfig, TrainResult, evaluate, stratified_split
from ._validate import check_inputs

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


def _history_of(source: TrainResult | Sequence[EpochRecord] | None) -> tuple[EpochRecord, ...]:
    if source is None:
        return ()
    if isinstance(source, TrainResult):
        return source.history
    if isinstance(source, (str, bytes)) or not isinstance(source, Iterable):
        raise XauditError(f"train_result_or_history must be a TrainResult or a sequence of EpochRecord, got "
                          f"{type(source).__name__}: pass the result of train_model, or leave it out")
    records = tuple(source)
    if not all(isinstance(r, EpochRecord) for r in records):
        raise XauditError("train_result_or_history must be a TrainResult or a sequence of EpochRecord")
    return records


def _check_subject(model: Any, dataset: Any) -> None:
    """One-line errors for a model or data of the wrong type, before any forward pass."""
    if not isinstance(model, nn.Module):
        if isinstance(model, TrainResult):
            fix = "pass its model and the result itself: overfitting_diagnostics(result.model, dataset, result)"
        elif isinstance(model, str) and model in MODELS:
            fix = (f"train it first: result = train_model({model!r}, dataset), then "
                   "overfitting_diagnostics(result.model, dataset, result)")
        else:
            fix = "pass the trained torch.nn.Module (a TrainResult's or LoadedModel's .model)"
        shown = repr(model) if isinstance(model, str) else type(model).__name__
        raise XauditError(f"overfitting_diagnostics needs a trained torch.nn.Module, got {shown}: {fix}")
    if not isinstance(dataset, Dataset):
        if isinstance(dataset, (str, os.PathLike)):
            name = os.fspath(dataset)
            raise XauditError(f"overfitting_diagnostics needs a Dataset, got {name!r}: load it first, e.g. "
                              f"load_dataset({name!r}) (the data the model was trained on)")
        raise XauditError(f"overfitting_diagnostics needs a Dataset, got {type(dataset).__name__}: build one with "
                          "load_dataset(name or .npz path) or Dataset(...)")


def _check_model_fits(model: nn.Module, dataset: Dataset) -> None:
    """The model takes the data and has an output for every class its labels name (forwards of two samples)."""
    n_outputs = check_inputs(model, dataset.x_test, what=f"test data of {dataset.name!r}")
    labels = [y for y in (dataset.y_test, dataset.y_train) if len(y) and not y.is_floating_point()]
    top = max((int(y.max()) for y in labels), default=-1)
    if top >= n_outputs:
        raise XauditError(f"the model outputs {n_outputs} class scores but the labels of dataset {dataset.name!r} go "
                          f"up to {top} ({top + 1} classes): pass a model with one output per class of this data "
                          "(the data it was trained on)")
    check_inputs(model, dataset.x_test, dataset.y_test, what=f"test data of {dataset.name!r}")
    if dataset.n_train:
        check_inputs(model, dataset.x_train, dataset.y_train, what=f"training data of {dataset.name!r}")


def _training_run(source: TrainResult | Sequence[EpochRecord] | None, train_config: TrainConfig | None,
                  history: tuple[EpochRecord, ...]) -> tuple[TrainConfig | None, EpochRecord | None]:
    """The config the model was trained with (if known) and the history record of the epoch whose weights it
    holds (if a history was given): the best epoch under early stopping, otherwise the last."""
    config = source.config if isinstance(source, TrainResult) else None
    if train_config is not None:
        if not isinstance(train_config, TrainConfig):
            raise XauditError(f"train_config must be a TrainConfig, got {type(train_config).__name__}: pass the "
                              "config the model was trained with, e.g. TrainConfig(epochs=30, val_fraction=0.1)")
        if config is not None and config != train_config:
            raise XauditError("train_config differs from the config of the TrainResult given: pass only the "
                              "TrainResult (it records the config it was trained with)")
        config = train_config
    if config is None or not history:
        return config, None
    if isinstance(source, TrainResult) and 1 <= source.best_epoch <= len(history):
        return config, history[source.best_epoch - 1]
    scored = [r for r in history if r.val_loss is not None and math.isfinite(r.val_loss)]
    if config.early_stopping is not None and scored:
        # train_model keeps the first epoch with the lowest validation loss (it replaces only on a strict drop)
        return config, min(scored, key=lambda r: r.val_loss)  # type: ignore[arg-type, return-value]
    return config, history[-1]


def _matches(record: EpochRecord, loss: float, accuracy: float, n: int) -> bool:
    """Whether the train loss and accuracy ``record`` holds are the ones measured now on ``n`` samples: the same
    accuracy to the sample and the same loss up to the reduction order of another device or thread count."""
    same_loss = (math.isnan(loss) and math.isnan(record.train_loss)) or math.isclose(
        loss, record.train_loss, rel_tol=1e-3, abs_tol=1e-6)
    return abs(accuracy - record.train_accuracy) * n < 0.5 and same_loss


@dataclass(frozen=True)
class _TrainMeasure:
    loss: float
    accuracy: float
    split: str
    n: int
    words: str


def _measure_train(model: nn.Module, dataset: Dataset, config: TrainConfig | None,
                   held: EpochRecord | None) -> _TrainMeasure:
    """Train loss and accuracy on the samples the model was fitted on when that split is known, else on the whole
    training split, with words saying which."""
    x, y, n = dataset.x_train, dataset.y_train, dataset.n_train
    if config is None:
        loss, accuracy = evaluate(model, x, y)
        return _TrainMeasure(loss, accuracy, "all", n,
                             f"all {n} samples of the training split: the split the model was fitted on is not known "
                             "(pass the TrainResult, or train_config), so samples held out for validation, if any, "
                             "are included")
    # train_model's own split: the first draw of a generator seeded with config.seed
    fit, val = stratified_split(y, config.val_fraction, torch.Generator().manual_seed(config.seed))
    fit_loss, fit_accuracy = evaluate(model, x[fit], y[fit])
    if held is None or _matches(held, fit_loss, fit_accuracy, len(fit)):
        words = (f"the {len(fit)} samples the model was fitted on (the {len(val)} held out for validation excluded)"
                 if len(val) else f"all {n} training samples, the ones the model was fitted on (none held out for "
                                  "validation)")
        return _TrainMeasure(fit_loss, fit_accuracy, "fit", len(fit), words)
    loss, accuracy = fit_loss, fit_accuracy
    if len(val):
        val_loss, val_accuracy = evaluate(model, x[val], y[val])
        correct = round(fit_accuracy * len(fit)) + round(val_accuracy * len(val))
        loss, accuracy = (fit_loss * len(fit) + val_loss * len(val)) / n, correct / n
    return _TrainMeasure(loss, accuracy, "all", n,
                         f"all {n} samples of the training split: the training history records train loss "
                         f"{held.train_loss:.4g} and accuracy {held.train_accuracy:.1%} at epoch {held.epoch}, but "
                         f"this model scores {fit_loss:.4g} and {fit_accuracy:.1%} on the split rebuilt from its "
                         "config, so the model or the data are not those of that run and the samples it was fitted "
                         "on are not known")


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
