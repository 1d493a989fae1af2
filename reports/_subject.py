"""What a report or a CLI command is about: a model with its provenance, and the data it is judged on.

Strings from the command line or a notebook become objects here, once, with one-line errors: a built-in
model name is trained (or taken from the training cache), anything else is loaded safely by
:func:`xaudit.models.load_model`, and the data is checked against the model before any long work starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

import torch
from torch import nn

from xaudit.models._data import DATASETS, Dataset, load_dataset
from xaudit.models._nets import MODELS, build_model, count_parameters, model_kind
from xaudit.models._recipes import default_data
from xaudit.models._train import EpochRecord, TrainConfig, TrainResult, train_model
from xaudit.models._errors import XauditError, did_you_mean
from xaudit.models._validate import model_dtype

if TYPE_CHECKING:
    from xaudit.models import LoadedModel

ModelSource: TypeAlias = "nn.Module | LoadedModel | TrainResult | str | os.PathLike[str]"
Progress = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class Subject:
    """A model ready to explain, where it came from, and the dataset it is evaluated on.

    ``class_names`` has one entry per model output (the data's names, padded with indices when the model
    has more classes than the data's labels reach).
    """

    model: nn.Module
    name: str
    source: str
    dataset: Dataset
    class_names: tuple[str, ...]
    n_classes: int
    train_config: TrainConfig | None = None
    history: tuple[EpochRecord, ...] = ()
    #: How the user's 3-D data was laid out: ``TIME_FEATURES``, or ``CHANNELS_FIRST`` when the model is a
    #: :class:`~xaudit.models._layout.ChannelsFirst` wrapper and ``dataset`` holds the data transposed.
    input_layout: str | None = None
    #: earlier training runs the weights went through before ``train_config`` (a model file's record)
    warm_start: tuple[str, ...] = ()


def training_config(model_name: str, dataset: Dataset, *, seed: int = 0, epochs: int | None = None) -> TrainConfig:
    """The reference recipe for ``model_name`` on ``dataset``, with the seed and an optional epoch override."""
    from xaudit.models import reference_config

    config = reference_config(model_name, dataset.name)
    changes: dict[str, Any] = {"seed": int(seed)}
    if epochs is not None:
        changes["epochs"] = int(epochs)
    return dataclasses.replace(config, **changes)


def _looks_like_name(text: str) -> bool:
    """A bare word (no path separator, suffix or ``module:callable`` colon) that is not an existing file."""
    return not (":" in text or "/" in text or os.sep in text or Path(text).suffix or Path(text).exists())


def epoch_printer(progress: Progress | None, label: str) -> Callable[[int, int, EpochRecord], None] | None:
    """Adapt a one-line ``progress`` callback to ``train_model``'s per-epoch callback."""
    if progress is None:
        return None

    def report_epoch(epoch: int, epochs: int, record: EpochRecord) -> None:
        val = ""
        if record.val_loss is not None and record.val_accuracy is not None:
            val = f", val loss {record.val_loss:.4f} acc {record.val_accuracy:.2%}"
        progress(f"training {label}: epoch {epoch}/{epochs}: train loss {record.train_loss:.4f} "
                 f"acc {record.train_accuracy:.2%}{val}")

    return report_epoch


def load_data(data: Dataset | str | os.PathLike[str], *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Dataset:
    """A :class:`Dataset` as given, or loaded by built-in name / ``.npz`` path, with x in ``dtype`` (the model's)."""
    if isinstance(data, Dataset):
        return data.with_dtype(dtype)
    return load_dataset(data, seed=seed, dtype=dtype)


class _Loaded(NamedTuple):
    model: nn.Module
    name: str
    source: str
    train_config: TrainConfig | None
    history: tuple[EpochRecord, ...]
    dataset: str | None  # the built-in dataset a saved model file records, if any
    trained_on: str | None = None  # the dataset it records when that is not built in (a user's .npz)
    warm_start: tuple[str, ...] = ()


def _from_loaded(loaded: Any) -> _Loaded:
    recorded = loaded.dataset if isinstance(loaded.dataset, str) else getattr(loaded.dataset, "name", None)
    return _Loaded(loaded.model, loaded.name, loaded.source, loaded.train_config, tuple(loaded.history),
                   recorded if recorded in DATASETS else None,
                   recorded if recorded and recorded not in DATASETS else None, tuple(loaded.warm_start))


def _load(model: ModelSource, *, state_dict: str | os.PathLike[str] | None, trust_pickle: bool) -> _Loaded:
    # model I/O is imported on use so that importing xaudit.reports needs only the core of xaudit.models
    from xaudit.models import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        return _from_loaded(model)
    if isinstance(model, TrainResult):
        return _Loaded(model.model, type(model.model).__name__, "in-memory TrainResult", model.config,
                       tuple(model.history), None)
    if isinstance(model, nn.Module) and state_dict is None:
        return _Loaded(model, type(model).__name__, "in-memory module", None, (), None)
    text = os.fspath(model) if not isinstance(model, nn.Module) else ""
    if text and _looks_like_name(text):
        hint = did_you_mean("model", text, MODELS)
        raise XauditError(f"{hint}, a model file, or a module:callable factory")
    return _from_loaded(load_model(model, state_dict=state_dict, trust_pickle=trust_pickle))


def resolve_subject(
    model: ModelSource = "cnn",
    data: Dataset | str | os.PathLike[str] | None = None,
    *,
    state_dict: str | os.PathLike[str] | None = None,
    trust_pickle: bool = False,
    seed: int = 0,
    epochs: int | None = None,
    use_cache: bool = True,
    progress: Progress | None = None,
) -> Subject:
    """Resolve ``model`` and ``data`` into a :class:`Subject`, training a built-in model if named.

    Everything that can be checked cheaply (names, files, shapes, labels) is checked before training.
    ``data=None`` means the built-in dataset a saved model file records (a file recording a dataset of the
    user's is refused: its data must be named), else the model's own default
    (:data:`xaudit.models.DEFAULT_DATA`: ``digits`` for ``cnn``, ``digits-seq`` for ``gru`` and ``lstm``).
    """
    builtin = isinstance(model, str) and model in MODELS
    if builtin:
        assert isinstance(model, str)
        dataset = load_data(data if data is not None else default_data(model), seed=seed)
        # building is cheap and raises the shape error (e.g. a GRU on images) before any training
        fresh = build_model(model, dataset.input_shape, dataset.n_classes)
        if state_dict is None:
            return _trained(model, dataset, seed=seed, epochs=epochs, use_cache=use_cache, progress=progress)
        loaded = _load(fresh, state_dict=state_dict, trust_pickle=trust_pickle)
        loaded = loaded._replace(name=model, source=f"built-in {model} with weights from {os.fspath(state_dict)}")
    else:
        loaded = _load(model, state_dict=state_dict, trust_pickle=trust_pickle)
        if state_dict is not None and isinstance(model, (str, os.PathLike)):
            # the file's recipe, history and data record describe its own weights, not these
            loaded = loaded._replace(source=f"{loaded.source} with weights from {os.fspath(state_dict)}",
                                     train_config=None, history=(), warm_start=())
        if data is None and loaded.trained_on is not None:
            # evaluating on the built-in digits instead gave a report of a model on data it never saw
            raise XauditError(f"{loaded.source} was trained on {loaded.trained_on!r}, which is not a built-in "
                              "dataset: pass that file with --data (data= in Python)")
        dataset = load_data(data if data is not None else (loaded.dataset or default_data(loaded.name)), seed=seed,
                            dtype=model_dtype(loaded.model))
    subject = _checked_subject(loaded.model, loaded.name, loaded.source, dataset, loaded.train_config,
                               loaded.history)
    subject = dataclasses.replace(subject, warm_start=loaded.warm_start)
    if epochs is not None:  # after the model and data checks, whose errors say more
        what = f"the built-in {model} with weights from a file" if builtin else "a model you supply"
        raise XauditError(f"--epochs sets how long a built-in model trains, but {what} is used as it is: drop "
                          "--epochs, or name a built-in model (cnn, gru, lstm) without --state-dict to train one "
                          "(xaudit train trains a supplied model)")
    return subject


def _trained(name: str, dataset: Dataset, *, seed: int, epochs: int | None, use_cache: bool,
             progress: Progress | None) -> Subject:
    from xaudit.models import cached_train

    config = training_config(name, dataset, seed=seed, epochs=epochs)
    label = f"{name} on {dataset.name}"
    if progress is not None:
        progress(f"training {label} ({config.epochs} epochs{', cached' if use_cache else ''})")
    printer = epoch_printer(progress, label)
    if use_cache:
        epochs_run: list[int] = []

        def count_epochs(epoch: int, total: int, record: EpochRecord) -> None:
            epochs_run.append(epoch)
            if printer is not None:
                printer(epoch, total, record)

        loaded = cached_train(name, dataset, config, progress=count_epochs)
        net, source, history = loaded.model, loaded.source, tuple(loaded.history)
        if progress is not None and not epochs_run:
            progress(f"reused the cached model {source}")
    else:
        result = train_model(name, dataset, config, progress=printer)
        net, source, history = result.model, f"trained in this run ({result.fit_time_s:.1f} s)", result.history
    return _checked_subject(net, name, source, dataset, config, history)


def _checked_subject(model: nn.Module, name: str, source: str, dataset: Dataset, config: TrainConfig | None,
                     history: tuple[EpochRecord, ...]) -> Subject:
    from xaudit.models import check_inputs

    from xaudit.models._layout import CHANNELS_FIRST, TIME_FEATURES, ChannelsFirst, takes_channels_first

    n_classes = check_inputs(model, dataset.x_test, dataset.y_test, what=f"test data of {dataset.name!r}")
    if dataset.n_train:
        check_inputs(model, dataset.x_train, dataset.y_train, what=f"training data of {dataset.name!r}")
    names = tuple(dataset.class_names[:n_classes]) + tuple(str(i) for i in range(len(dataset.class_names), n_classes))
    layout = None
    if dataset.kind == "sequence":
        layout = TIME_FEATURES
        if takes_channels_first(model, dataset.x_test):
            # a 1-D CNN on N×C×L: explain and diagnose it over time steps, not over its channels
            model, layout = ChannelsFirst(model), CHANNELS_FIRST
            dataset = dataclasses.replace(dataset, x_train=dataset.x_train.transpose(1, 2).contiguous(),
                                          x_test=dataset.x_test.transpose(1, 2).contiguous())
    return Subject(model=model, name=name, source=source, dataset=dataset, class_names=names,
                   n_classes=int(n_classes), train_config=config, history=tuple(history), input_layout=layout)


def describe_subject(subject: Subject) -> dict[str, dict[str, Any]]:
    """report.json's ``model`` and ``data`` objects for ``subject``."""
    from xaudit.models._layout import ChannelsFirst

    model, dataset = subject.model, subject.dataset
    config = subject.train_config.to_dict() if subject.train_config is not None else None
    architecture = type(model.model if isinstance(model, ChannelsFirst) else model).__name__
    return {
        "model": {
            "name": subject.name, "kind": model_kind(model), "n_params": count_parameters(model),
            "n_trainable_params": count_parameters(model, trainable_only=True),
            "architecture": architecture, "input_shape": list(dataset.input_shape),
            "n_classes": subject.n_classes, "class_names": list(subject.class_names),
            "source": subject.source, "train_config": config,
        },
        "data": {"name": dataset.name, "kind": dataset.kind, "n_train": dataset.n_train,
                 "n_test": dataset.n_test, "input_shape": list(dataset.input_shape),
                 "input_layout": subject.input_layout},
    }
