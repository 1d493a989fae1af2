"""What overfitting diagnostics are measured on: the model and data checked before any pass, the training run
a model came from (its config and the history record of the epoch it holds), and the train loss and accuracy on
the samples it was fitted on — ``train_model``'s own split rebuilt from the config — where that is known."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._data import Dataset
from ._errors import XauditError
from ._nets import MODELS
from ._train import EpochRecord, TrainConfig, TrainResult, evaluate, stratified_split
from ._validate import check_inputs


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
