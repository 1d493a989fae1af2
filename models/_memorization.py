"""Two retraining tests of what a model can fit and what it relies on.

Memorization (Zhang, Bengio, Hardt, Recht & Vinyals 2017, §2): train the same architecture on labels of
which a fraction is replaced by uniformly random classes; how fast it still fits them measures its capacity
to memorize. Spatial shuffle (Greydanus 2020, MNIST-1D §3, after Zhang et al.'s "shuffled pixels"): permute
the time steps (sequences) or pixel positions (images) with ONE fixed permutation for train and test; a
model that uses locality (a CNN) loses accuracy — the MNIST-1D CNN drops from 94% to 56% — while the
information in the data is unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._data import Dataset
from ._errors import XauditError
from ._nets import build_model
from ._train import TrainConfig, evaluate, train_model


def _prepare(dataset: Dataset, config: TrainConfig, n_train: int | None) -> tuple[Dataset, TrainConfig]:
    if n_train is not None and n_train < 2:
        raise XauditError(f"n_train must be at least 2, got {n_train}")
    data = dataset.subset(n_train, None) if n_train is not None else dataset
    if data.n_train < 2 or data.n_test < 1:
        raise XauditError(f"dataset {dataset.name!r} needs training and test samples for a retraining test")
    # both tests are about fitting the whole training split: no held-out part, no stopping on it
    return data, dataclasses.replace(config, val_fraction=0.0, early_stopping=None)


def _train(model: str, data: Dataset, config: TrainConfig, hidden: int | None) -> tuple[Any, float]:
    net = build_model(model, data.input_shape, data.n_classes, dropout=config.dropout, seed=config.seed, hidden=hidden)
    result = train_model(net, data, config)
    return result, evaluate(result.model, data.x_test, data.y_test)[1]


@dataclass(frozen=True)
class MemorizationRun:
    """Training on labels of which ``label_noise`` were randomized: train accuracy per epoch (against the labels
    it was given), the first epoch reaching the threshold (None: never), and the test accuracy (true labels)."""

    label_noise: float
    train_accuracy: tuple[float, ...]
    epochs_to_fit: int | None
    test_accuracy: float

    @property
    def final_train_accuracy(self) -> float:
        return self.train_accuracy[-1]


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


def _labels_words(noise: float) -> str:
    """How the text names a run's labels: "true labels", or "labels 50% randomized"."""
    return "true labels" if noise == 0 else f"labels {_percent(noise)} randomized"


@dataclass(frozen=True)
class MemorizationResult:
    """Runs at increasing label noise. ``slowdown`` is the epochs the noisiest run took to reach the threshold ÷
    the epochs the least noisy run took (its labels are the true ones when ``label_noise`` starts at 0); None
    with one run, or when either never reached it."""

    runs: tuple[MemorizationRun, ...]
    threshold: float
    n_train: int
    n_classes: int
    epochs: int

    @property
    def slowdown(self) -> float | None:
        base, noisy = self.runs[0], self.runs[-1]
        if len(self.runs) < 2 or base.epochs_to_fit is None or noisy.epochs_to_fit is None:
            return None
        return noisy.epochs_to_fit / base.epochs_to_fit

    @property
    def interpretation(self) -> str:
        base, noisy = self.runs[0], self.runs[-1]
        compared = len(self.runs) > 1
        baseline = _labels_words(base.label_noise)
        head = f"memorization ({_percent(noisy.label_noise)} random labels, {self.n_train} samples): "
        if noisy.epochs_to_fit is not None:
            pace = ""
            if compared:
                pace = (f" ({self.slowdown:.1f}× the {base.epochs_to_fit} epochs {baseline} took)" if self.slowdown
                        else f" (while {baseline} never reached it)")
            return (head + f"fits them to {self.threshold:.0%} in {noisy.epochs_to_fit} epochs{pace}; the "
                    "architecture can memorize this training set, so its generalization comes from the data and "
                    "the training recipe, not from a lack of capacity (Zhang et al. 2017)")
        against = f"; {baseline}: {base.final_train_accuracy:.1%}" if compared else ""
        structure = ", so what it fits on true labels is mostly structure" if compared and base.label_noise == 0 else ""
        return (head + f"reaches only {noisy.final_train_accuracy:.1%} train accuracy in {self.epochs} epochs "
                f"(chance {1 / self.n_classes:.0%}{against}): with this budget it cannot memorize{structure}")

    def to_json(self) -> dict[str, Any]:
        return {"runs": [{**vars(r), "train_accuracy": list(r.train_accuracy),
                          "final_train_accuracy": r.final_train_accuracy} for r in self.runs],
                "threshold": self.threshold, "n_train": self.n_train, "n_classes": self.n_classes,
                "epochs": self.epochs, "slowdown": self.slowdown, "interpretation": self.interpretation,
                "paper": "Zhang, Bengio, Hardt, Recht & Vinyals 2017, §2"}


def corrupt_labels(y: torch.Tensor, fraction: float, n_classes: int, seed: int) -> torch.Tensor:
    """Replace each label, independently with probability ``fraction``, by a uniformly random class (Zhang §2)."""
    if not 0 <= fraction <= 1:
        raise XauditError(f"label noise must be in [0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    hit = torch.rand(len(y), generator=g) < fraction
    random = torch.randint(0, n_classes, (len(y),), generator=g)
    return torch.where(hit, random, y)


def memorization_test(model: str, dataset: Dataset, config: TrainConfig | None = None, *,
                      label_noise: Sequence[float] = (0.0, 1.0), threshold: float = 0.95,
                      n_train: int | None = None, seed: int = 0, hidden: int | None = None) -> MemorizationResult:
    """Train ``model`` on true and on randomized labels and measure how fast each is fitted (Zhang et al. 2017)."""
    levels = [float(v) for v in label_noise]
    if not levels or levels != sorted(levels):
        raise XauditError(f"label_noise must be increasing fractions, e.g. (0.0, 1.0), got {tuple(label_noise)}")
    outside = [v for v in levels if not 0 <= v <= 1]
    if outside:  # checked here, not only in corrupt_labels, so no run trains before the error
        raise XauditError(f"label noise must be in [0, 1], got {outside[0]}: pass fractions such as (0.0, 1.0)")
    if levels[-1] == 0:
        raise XauditError(f"label_noise must reach above 0 (the test measures how fast random labels are fitted), "
                          f"got {tuple(label_noise)}: pass e.g. (0.0, 1.0)")
    if not 0 < threshold <= 1:
        raise XauditError(f"threshold must be in (0, 1], got {threshold}")
    data, cfg = _prepare(dataset, config or TrainConfig(), n_train)
    cfg = dataclasses.replace(cfg, seed=seed)
    runs = []
    for level in levels:
        noisy = dataclasses.replace(data, y_train=corrupt_labels(data.y_train, level, data.n_classes, seed))
        result, test_acc = _train(model, noisy, cfg, hidden)
        curve = tuple(r.train_accuracy for r in result.history)
        reached = next((i + 1 for i, a in enumerate(curve) if a >= threshold), None)
        runs.append(MemorizationRun(level, curve, reached, test_acc))
    return MemorizationResult(tuple(runs), float(threshold), data.n_train, data.n_classes, cfg.epochs)


def shuffle_dataset(dataset: Dataset, seed: int = 0) -> tuple[Dataset, torch.Tensor]:
    """The dataset with one fixed random permutation of time steps (N×T×F) or pixel positions (N×C×H×W),
    applied to train and test alike; returns it and the permutation (over T, or over H·W positions)."""
    g = torch.Generator().manual_seed(seed)
    if dataset.kind == "sequence":
        perm = torch.randperm(dataset.input_shape[0], generator=g)

        def apply(x: torch.Tensor) -> torch.Tensor:
            return x[:, perm]
    else:
        _, h, w = dataset.input_shape
        perm = torch.randperm(h * w, generator=g)

        def apply(x: torch.Tensor) -> torch.Tensor:
            return x.flatten(2)[:, :, perm].reshape(x.shape)  # channels of a pixel move together
    shuffled = dataclasses.replace(dataset, name=f"{dataset.name} (shuffled)", x_train=apply(dataset.x_train),
                                   x_test=apply(dataset.x_test))
    return shuffled, perm


@dataclass(frozen=True)
class ShuffleResult:
    """Test (and train) accuracy of the same recipe on the original and on the spatially shuffled data."""

    axis: str
    original_train_accuracy: float
    original_test_accuracy: float
    shuffled_train_accuracy: float
    shuffled_test_accuracy: float
    n_train: int
    seed: int

    @property
    def drop(self) -> float:
        return self.original_test_accuracy - self.shuffled_test_accuracy

    @property
    def interpretation(self) -> str:
        head = (f"spatial shuffle: permuting {self.axis} moves test accuracy from {self.original_test_accuracy:.1%} "
                f"to {self.shuffled_test_accuracy:.1%}")
        if self.drop > 0.05:
            return head + ("; the model relies on local structure (its inductive bias), not only on which values "
                           "occur (Greydanus 2020: the MNIST-1D CNN drops from 94% to 56%)")
        return head + "; the model barely uses the order of its inputs, so locality is not what it learned"

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "drop": self.drop, "interpretation": self.interpretation,
                "paper": "Greydanus 2020 (MNIST-1D), after Zhang et al. 2017"}


def spatial_shuffle_test(model: str, dataset: Dataset, config: TrainConfig | None = None, *,
                         n_train: int | None = None, seed: int = 0, hidden: int | None = None) -> ShuffleResult:
    """Train ``model`` on the data and on its spatially shuffled copy with the same recipe; compare test accuracy."""
    data, cfg = _prepare(dataset, config or TrainConfig(), n_train)
    cfg = dataclasses.replace(cfg, seed=seed)
    if cfg.augment:
        # shifts and warps assume neighbouring steps belong together, which the shuffle destroys
        cfg = dataclasses.replace(cfg, augment=())
    shuffled, _ = shuffle_dataset(data, seed)
    original, original_test = _train(model, data, cfg, hidden)
    permuted, shuffled_test = _train(model, shuffled, cfg, hidden)
    return ShuffleResult(axis="time steps" if data.kind == "sequence" else "pixel positions",
                         original_train_accuracy=original.history[-1].train_accuracy,
                         original_test_accuracy=original_test,
                         shuffled_train_accuracy=permuted.history[-1].train_accuracy,
                         shuffled_test_accuracy=shuffled_test, n_train=data.n_train, seed=seed)
