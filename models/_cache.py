"""A disk cache of trained built-in models, keyed by everything that determines the trained weights."""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ._data import Dataset
from ._errors import XauditError, XauditWarning
from ._io import LoadedModel, load_model, save_model, xaudit_version
from ._train import EpochRecord, TrainConfig, train_model


def default_cache_dir() -> Path:
    """``$XAUDIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/xaudit``, else ``~/.cache/xaudit``."""
    if os.environ.get("XAUDIT_CACHE_DIR"):
        return Path(os.environ["XAUDIT_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "xaudit"
    return Path.home() / ".cache" / "xaudit"


def cache_key(model_name: str, dataset: Dataset, config: TrainConfig) -> str:
    """Hex digest of (xaudit version, model, dataset name, shapes and contents, training config).

    The data's bytes are hashed too: two different ``.npz`` files may share a name and shapes, and a
    cached model trained on the wrong one would be silently wrong. Hashing is cheap next to training.
    """
    content = hashlib.sha256()
    for t in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        content.update(t.detach().cpu().contiguous().numpy().tobytes())
    key = {
        "xaudit_version": xaudit_version(),
        "torch_version": torch.__version__.split("+")[0],
        "model": model_name,
        "dataset": dataset.name,
        "kind": dataset.kind,
        "shapes": [list(t.shape) for t in (dataset.x_train, dataset.x_test)],
        "class_names": list(dataset.class_names),
        "data_sha256": content.hexdigest(),
        "config": config.to_dict(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def cached_train(
    model_name: str,
    dataset: Dataset,
    config: TrainConfig,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int, EpochRecord], None] | None = None,
) -> LoadedModel:
    """Train built-in ``model_name`` on ``dataset`` with ``config``, or load the same training from the cache.

    Hits are loaded with the safe :func:`load_model` path. A cache entry that can't be loaded (truncated,
    corrupt, or not written by xaudit) is retrained and replaced rather than reported.
    """
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(dataset.name).stem)[:40]
    path = directory / f"{model_name}-{slug}-{cache_key(model_name, dataset, config)[:24]}.pt"
    hit = _load_entry(path, model_name, dataset, config)
    if hit is not None:
        return hit

    result = train_model(model_name, dataset, config, progress=progress)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        save_model(result.model, path, dataset=dataset.name, train_config=config, history=result.history)
    except (OSError, XauditError) as exc:
        # the trained model is still good; a read-only or full cache should not cost the user the run
        warnings.warn(f"could not write the model cache {str(path)!r}: {exc}", XauditWarning, stacklevel=2)
    return LoadedModel(result.model, str(path), model_name, dataset.name, config, result.history)


def _load_entry(path: Path, model_name: str, dataset: Dataset, config: TrainConfig) -> LoadedModel | None:
    """The cached model at ``path``, or ``None`` if there is none or it can't be trusted to be the right one:
    a valid model file of another training (another dataset, class count, input shape or recipe) copied or
    left under this key is retrained over, like a corrupt one, not reused (it gave a 100-class model and a
    test accuracy of 0 on digits)."""
    if not path.is_file():
        return None
    try:
        hit = load_model(path)
    except XauditError:
        return None  # truncated, corrupt or foreign: the caller retrains and overwrites it
    spec = getattr(hit.model, "spec", None)
    if hit.name != model_name or spec is None:
        return None
    same = (hit.dataset == dataset.name and tuple(spec.input_shape) == tuple(dataset.input_shape)
            and spec.n_classes == dataset.n_classes and hit.train_config is not None
            and hit.train_config.to_dict() == config.to_dict())
    return hit if same else None
