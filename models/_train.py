"""Training with the regularization and augmentation knobs the overfitting diagnostics sweep, plus evaluation."""

from __future__ import annotations

import copy
import math
import time
import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from ._augment import AUGMENTATIONS
from ._data import Dataset
from ._errors import XauditError, did_you_mean
from ._modes import eval_mode
from ._nets import build_model
from ._outputs import PROBABILITIES, note_outputs, to_probabilities

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """How to train a model: optimisation, regularization and augmentation settings.

    ``weight_decay`` is the optimizer's own (coupled L2 for adam/sgd, decoupled for adamw, Loshchilov &
    Hutter 2019); ``l1`` adds ``l1 × Σ|w|`` over weight matrices and kernels (not biases) to the loss.
    ``early_stopping`` is a patience in epochs on validation loss; the best weights are restored.
    ``augment`` names entries of ``AUGMENTATIONS``, applied in order to every training batch.
    ``lr_schedule`` ``"cosine"`` anneals the learning rate to 0 over all steps (Loshchilov & Hutter 2017),
    which settles the final weights instead of leaving them bouncing at the full rate.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    seed: int = 0
    weight_decay: float = 0.0
    l1: float = 0.0
    dropout: float = 0.0
    early_stopping: int | None = None
    val_fraction: float = 0.1
    augment: tuple[str, ...] = ()
    augment_strength: float = 1.0
    lr_schedule: str = "constant"

    def __post_init__(self) -> None:
        if isinstance(self.augment, str):
            object.__setattr__(self, "augment", (self.augment,))  # "noise" would otherwise iterate letters
        object.__setattr__(self, "augment", tuple(self.augment))
        checks = [
            (self.epochs >= 1, f"epochs must be ≥ 1, got {self.epochs}: pass e.g. epochs=30"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}: pass e.g. batch_size=64"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}: pass e.g. lr=1e-3"),
            (
                self.weight_decay >= 0,
                f"weight_decay must be ≥ 0, got {self.weight_decay}: pass e.g. weight_decay=1e-4",
            ),
            (self.l1 >= 0, f"l1 must be ≥ 0, got {self.l1}: pass e.g. l1=1e-5"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}: pass e.g. dropout=0.2"),
            (0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}: pass e.g. 0.1"),
            (
                self.augment_strength >= 0,
                f"augment_strength must be ≥ 0, got {self.augment_strength}: pass e.g. augment_strength=1.0",
            ),
            (
                self.early_stopping is None or self.early_stopping >= 1,
                f"early_stopping is a patience in epochs and must be ≥ 1, got {self.early_stopping}: pass e.g. 5",
            ),
            (
                self.early_stopping is None or self.val_fraction > 0,
                "early_stopping needs validation data but val_fraction is 0: set val_fraction to e.g. 0.1",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise XauditError(message)
        if self.optimizer not in OPTIMIZERS:
            raise did_you_mean("optimizer", self.optimizer, OPTIMIZERS)
        if self.lr_schedule not in LR_SCHEDULES:
            raise did_you_mean("learning-rate schedule", self.lr_schedule, LR_SCHEDULES)
        for name in self.augment:
            if name not in AUGMENTATIONS:
                raise did_you_mean("augmentation", name, AUGMENTATIONS)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/weights_only-safe values (``augment`` as a list)."""
        d = asdict(self)
        d["augment"] = list(self.augment)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (with a suggestion), missing ones default."""
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise did_you_mean("training setting", key, known)
        values = dict(d)
        if "augment" in values and not isinstance(values["augment"], str):
            values["augment"] = tuple(values["augment"])
        return cls(**values)


@dataclass(frozen=True)
class EpochRecord:
    """Metrics at the end of one epoch (1-based); train metrics are on the un-augmented train split, eval mode."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None


@dataclass(frozen=True, eq=False)
class TrainResult:
    """A trained model (in eval mode) with its history.

    ``best_epoch`` is the epoch whose weights the model holds: the lowest validation loss with early
    stopping, otherwise the last epoch.
    """

    model: nn.Module
    config: TrainConfig
    history: tuple[EpochRecord, ...]
    best_epoch: int
    stopped_early: bool
    fit_time_s: float


def classification_loss(model: nn.Module, outputs: torch.Tensor, y: torch.Tensor, *,
                        reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``model``'s outputs against labels ``y``: on the logits, or, for a model that returns
    probabilities (ends in ``nn.Softmax``), the negative log of the label's probability. Cross-entropy on
    probabilities would apply a second softmax, whose gradient all but vanishes as the model grows confident."""
    if note_outputs(model, outputs) == PROBABILITIES:
        return nn.functional.nll_loss(torch.log(outputs.clamp_min(1e-12)), y, reduction=reduction)
    return nn.functional.cross_entropy(outputs, y, reduction=reduction)


def train_model(
    model: str | nn.Module,
    dataset: Dataset,
    config: TrainConfig = TrainConfig(),  # frozen, so a shared default is safe
    *,
    progress: Callable[[int, int, EpochRecord], None] | None = None,
) -> TrainResult:
    """Train ``model`` (a built-in name, or a module trained in place) on ``dataset``'s train split.

    A name is built with ``config.dropout`` and ``config.seed``. All randomness — weight init, the
    validation split, shuffling, augmentation, dropout — derives from ``config.seed`` through private
    generators, so the same config gives bit-identical weights and history, and the caller's global RNG
    is left as it was. ``progress(epoch, epochs, record)`` is called after every epoch.
    """
    for name in config.augment:
        aug = AUGMENTATIONS[name]
        if aug.kind not in ("any", dataset.kind):
            raise XauditError(
                f"augmentation {name!r} is for {aug.kind} data but dataset {dataset.name!r} is {dataset.kind} data: "
                f"choose from {', '.join(n for n, a in AUGMENTATIONS.items() if a.kind in ('any', dataset.kind))}"
            )
    if dataset.n_train == 0:
        raise XauditError(f"dataset {dataset.name!r} has no training samples: add x_train and y_train to train a model")
    if isinstance(model, str):
        model = build_model(model, dataset.input_shape, dataset.n_classes, dropout=config.dropout, seed=config.seed)
    elif not isinstance(model, nn.Module):
        raise XauditError(
            f"train_model needs a model name or a torch.nn.Module, got {type(model).__name__}: pass e.g. 'cnn'"
        )

    start = time.perf_counter()
    # dropout draws from the global torch RNG; forking it keeps runs reproducible and the caller's stream intact
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        history, best_epoch, stopped = _fit(model, dataset, config, progress)
    model.eval()
    return TrainResult(model, config, tuple(history), best_epoch, stopped, time.perf_counter() - start)


def _fit(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    progress: Callable[[int, int, EpochRecord], None] | None,
) -> tuple[list[EpochRecord], int, bool]:
    generator = torch.Generator().manual_seed(config.seed)
    device = _device_of(model)
    train_idx, val_idx = stratified_split(dataset.y_train, config.val_fraction, generator)
    x_fit, y_fit = dataset.x_train[train_idx].to(device), dataset.y_train[train_idx].to(device)
    x_val, y_val = dataset.x_train[val_idx].to(device), dataset.y_train[val_idx].to(device)
    augmentations = [AUGMENTATIONS[name] for name in config.augment]
    optimizer = _make_optimizer(model, config)
    scheduler = None
    if config.lr_schedule == "cosine":
        steps = config.epochs * math.ceil(len(x_fit) / config.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    penalized = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2] if config.l1 > 0 else []

    history: list[EpochRecord] = []
    best_loss, best_epoch, best_state, stale = math.inf, config.epochs, None, 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(x_fit), generator=generator).to(device)
        for batch in order.split(config.batch_size):
            xb, yb = x_fit[batch], y_fit[batch]
            for aug in augmentations:
                xb = aug(xb, config.augment_strength, generator)
            loss = classification_loss(model, model(xb), yb)
            if penalized:
                loss = loss + config.l1 * sum(p.abs().sum() for p in penalized)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()

        train_loss, train_acc = evaluate(model, x_fit, y_fit)
        val_loss, val_acc = evaluate(model, x_val, y_val) if len(x_val) else (None, None)
        record = EpochRecord(epoch, train_loss, train_acc, val_loss, val_acc)
        history.append(record)
        if progress is not None:
            progress(epoch, config.epochs, record)
        if config.early_stopping is None or val_loss is None:
            continue
        if val_loss < best_loss:
            best_loss, best_epoch, stale = val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.early_stopping:
                break
    stopped = len(history) < config.epochs
    if best_state is not None and best_epoch != len(history):
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    return history, best_epoch, stopped


def stratified_split(
    y: torch.Tensor, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, validation) with ``fraction`` of every class in validation (rounded, ≥ 1 if possible).

    A class with a single sample stays in train, so tiny data sets keep every class trainable.
    """
    if fraction <= 0 or len(y) < 2:
        return torch.arange(len(y)), torch.arange(0)
    val_parts = []
    for cls in torch.unique(y):
        members = (y == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = min(len(members) - 1, max(1, round(fraction * len(members))))
        val_parts.append(members[:n_val])
    val = torch.cat(val_parts).sort().values
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten(), val


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise XauditError("the model has no trainable parameters: unfreeze some (requires_grad=True) before training")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode without autograd for the block; every module's ``training`` flag is restored afterwards."""
    with eval_mode(model), torch.no_grad():
        yield _device_of(model)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``(x, y)`` in eval mode (every module's ``.training``
    restored).

    The loss is the negative log of the label's probability (:func:`~._outputs.to_probabilities`), so a model
    that returns probabilities is scored on them, not on a softmax of them.
    """
    if len(x) == 0:
        raise XauditError("evaluate got no samples: pass at least one (x, y) pair")
    if len(x) != len(y):
        raise XauditError(f"evaluate got {len(x)} samples but {len(y)} labels: pass one label per sample")
    total_loss, correct = 0.0, 0
    with _eval_mode(model) as device:
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            logits, yb = model(xb.to(device)), yb.to(device)
            total_loss += float(classification_loss(model, logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return total_loss / len(x), correct / len(x)


def predict_proba(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
    """Class probabilities (N×K, on the CPU) in eval mode without autograd (every module's ``.training``
    restored): the softmax of the model's logits, or its own outputs when it returns probabilities (ends in
    ``nn.Softmax``).
    """
    if len(x) == 0:
        raise XauditError("predict_proba got no samples: pass at least one input")
    with _eval_mode(model) as device:
        outputs = torch.cat([model(xb.to(device)).cpu() for xb in x.split(batch_size)])
    bad = int((~torch.isfinite(outputs).all(1)).sum()) if outputs.is_floating_point() else 0
    if bad:
        raise XauditError(f"the model returned NaN/Inf outputs for {bad} of {len(x)} samples: fix its forward "
                          "(e.g. a log or division of values that can be 0 or negative) so every output is finite")
    return to_probabilities(model, outputs)
