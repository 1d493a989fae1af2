"""Model-card facts for the report's model section: layers, input layout, splits, training recipe, provenance,
and what the model (and this report) can and cannot be used for.

Model cards: Mitchell et al. 2019, "Model Cards for Model Reporting". Only facts xaudit knows are written;
what it cannot know (a user model's intended use) is said to be unknown rather than guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from torch import nn

from xaudit.models._nets import MODELS
from xaudit.models._layout import CHANNELS_FIRST
from xaudit.models._outputs import LOGITS, PROBABILITIES, output_kind
from xaudit.models._train import EpochRecord, TrainConfig

from ._subject import Subject

#: What each axis of an input means, per dataset kind.
INPUT_LAYOUTS = {"image": "channels × height × width", "sequence": "time steps × features"}
#: A 1-D CNN's N×C×L data (see ``xaudit.models._layout``).
CHANNELS_FIRST_CARD = ("channels × length in the data, as the model's first nn.Conv1d takes it; read here as "
                       "time steps × channels (maps, LIME's time windows, occlusion and the shuffle test run over "
                       "the length)")

#: How the model's outputs are read, by :func:`~xaudit.models._outputs.output_kind`.
OUTPUT_DESCRIPTIONS = {PROBABILITIES: "probabilities (softmax in the model)",
                       LOGITS: "logits"}


def layer_summary(model: nn.Module) -> list[dict[str, Any]]:
    """Leaf module types in order of first appearance with their counts (``[{"type": "Conv2d", "count": 2}]``)."""
    counts = Counter(type(m).__name__ for m in model.modules() if not list(m.children()))
    return [{"type": name, "count": n} for name, n in counts.items()]


def recipe_text(config: TrainConfig) -> str:
    """The optimizer settings of a recipe in words (the card's ``recipe``)."""
    return (f"{config.optimizer}, learning rate {config.lr} ({config.lr_schedule} schedule), "
            f"batch {config.batch_size}, seed {config.seed}")


def describe_run(source: str, config: TrainConfig | None, history: Sequence[EpochRecord]) -> str:
    """One line for a training run whose weights a later run started from (a model file's ``warm_start``)."""
    if config is None:
        return f"{source}: {len(history)} epochs, recipe not recorded" if history else f"{source}: recipe not recorded"
    return (f"{source}: {len(history) or config.epochs} epochs; {recipe_text(config)}; augmentation: "
            f"{', '.join(config.augment) or 'none'}")


def model_card(subject: Subject, n_explained: int) -> dict[str, Any]:
    """report.json's ``model_card``: facts about the audited model beyond the ``model``/``data`` objects."""
    dataset, config = subject.dataset, subject.train_config
    epochs_run = len(subject.history)
    built_in = subject.name in MODELS and config is not None
    val_fraction = config.val_fraction if config is not None else None
    n_val = round(val_fraction * dataset.n_train) if val_fraction else 0
    training = None
    if config is not None:
        regularization = [f"{k} {v}" for k, v in (("weight decay", config.weight_decay), ("L1", config.l1),
                                                  ("dropout", config.dropout)) if v]
        training = {
            "epochs_configured": config.epochs, "epochs_run": epochs_run or None,
            "recipe": recipe_text(config),
            "regularization": ", ".join(regularization) or "none",
            "augmentation": ", ".join(config.augment) or "none",
            "early_stopping": config.early_stopping,
            # the runs the weights went through before this one (xaudit train on a saved model)
            "warm_started_from": list(subject.warm_start),
        }
    if built_in:
        intended_use = (f"xaudit's built-in reference {subject.name} for {dataset.name}: an object of study for "
                        "comparing explanation methods and overfitting diagnostics, not a production classifier.")
    else:
        intended_use = ("Supplied by the user; xaudit does not know what it is meant for. This report only "
                        f"describes how it behaves on {dataset.name}.")
    limitations = [
        f"Accuracy, calibration and explanations are measured on the {dataset.n_test} test samples of "
        f"{dataset.name} only; data from another distribution may behave differently.",
        f"Explanations were computed for {n_explained} test samples, each for the class the model predicts: they "
        "show what this model relies on, not what causes the label in the data.",
    ]
    if config is None:
        limitations.append("No training recipe is recorded, so the training curves and the gap cannot be tied "
                           "to how the weights were obtained.")
    elif epochs_run and epochs_run < config.epochs:
        why = " (early stopping)" if config.early_stopping else ""
        limitations.append(f"Training ran {epochs_run} of the recipe's {config.epochs} epochs{why}.")
    return {"model_card": {
        "layers": layer_summary(subject.model),
        "input_layout": (CHANNELS_FIRST_CARD if subject.input_layout == CHANNELS_FIRST
                         else INPUT_LAYOUTS.get(dataset.kind, dataset.kind)),
        "outputs": OUTPUT_DESCRIPTIONS[output_kind(subject.model, dataset.x_test[:2])],
        "splits": {"train": dataset.n_train - n_val, "validation": n_val, "test": dataset.n_test,
                   "validation_fraction": val_fraction},
        "training": training,
        "weights": subject.source,
        "intended_use": intended_use,
        "limitations": limitations,
        "reference": "Mitchell et al. 2019, Model Cards for Model Reporting",
    }}
