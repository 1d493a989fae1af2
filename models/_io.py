"""Safe model I/O: xaudit model files, TorchScript, and ``package.module:factory`` strings.

Nothing is unpickled unless the caller opts in: xaudit files and state_dicts are read with
``torch.load(weights_only=True)``, TorchScript with ``torch.jit.load``. A file made with
``torch.save(whole_model)`` can run arbitrary code when loaded, so it needs ``trust_pickle=True``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._atomic import atomic_write
from ._errors import UnsafeModelFileError, XauditError
from ._nets import MODELS, ModelSpec, build_from_spec
from ._train import EpochRecord, TrainConfig

FORMAT = "xaudit-model"
FORMAT_VERSION = 1

# "pkg.mod:make" — a dotted module path, a colon, one attribute name (a Windows "C:\..." path never matches)
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to explain, with where it came from and, for xaudit files, how it was trained."""

    model: nn.Module
    source: str
    name: str
    dataset: str | None = None
    train_config: TrainConfig | None = None
    history: tuple[EpochRecord, ...] = ()


def xaudit_version() -> str:
    """The installed xaudit version, or ``"0+unknown"`` when running from an uninstalled checkout."""
    try:
        return importlib.metadata.version("xaudit")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    train_config: TrainConfig | None = None,
    history: Sequence[EpochRecord] = (),
) -> None:
    """Save a built-in model with its architecture spec and training metadata, atomically.

    The file holds only tensors and plain values, so :func:`load_model` reads it with ``weights_only=True``.
    It is written to a temporary file in the same directory and moved into place, so a crash never
    leaves a half-written file where a reader (or the training cache) would find it.
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise XauditError(
            f"save_model only saves xaudit's built-in models, not a {type(model).__name__}: "
            "save it with torch.jit.save(torch.jit.script(model), path) instead"
        )
    target = Path(path)
    if not target.parent.is_dir():
        raise XauditError(
            f"can't save model to {str(target)!r}: directory {str(target.parent)!r} does not exist, create it first"
        )
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "xaudit_version": xaudit_version(),
        "spec": spec.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "dataset": dataset,
        "train_config": train_config.to_dict() if train_config is not None else None,
        "history": [asdict(record) for record in history],
    }
    atomic_write(target, lambda fh: torch.save(payload, fh))


def load_model(
    source: str | os.PathLike[str] | nn.Module,
    *,
    state_dict: str | os.PathLike[str] | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load a model from a module object, an xaudit model file, a TorchScript file or a factory string.

    ``source`` is one of: an ``nn.Module`` (returned as is); a file written by :func:`save_model`; a
    TorchScript file (``torch.jit.save``); ``"package.module:callable"``, a function called with no
    arguments that returns an ``nn.Module``. ``state_dict`` is a weights file (read with
    ``weights_only=True``) loaded into the model afterwards — typically with a factory. ``trust_pickle``
    allows files saved with ``torch.save(model)``, which unpickle arbitrary code: only for trusted files.
    Models loaded from files are put in eval mode.
    """
    if isinstance(source, nn.Module):
        loaded = LoadedModel(source, "<in-memory module>", _display_name(source))
    elif not isinstance(source, (str, os.PathLike)):
        raise XauditError(
            f"can't load a model from a {type(source).__name__}: "
            "pass an nn.Module, a model file path or 'package.module:factory'"
        )
    else:
        text = os.fspath(source)
        if _FACTORY.match(text) and not Path(text).exists():
            loaded = _from_factory(text)
        else:
            loaded = _from_file(Path(text), trust_pickle)
            loaded.model.eval()
    if state_dict is not None:
        _load_weights(loaded.model, Path(state_dict))
    return loaded


def _display_name(model: nn.Module) -> str:
    spec = getattr(model, "spec", None)
    return spec.name if isinstance(spec, ModelSpec) else type(model).__name__


def _from_factory(text: str) -> LoadedModel:
    module_name, attr = text.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise XauditError(
            f"can't import module {module_name!r} for model factory {text!r} ({exc}): "
            "make it importable (install it, or add its folder to PYTHONPATH)"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        what = "has no attribute" if factory is None else "has a non-callable"
        raise XauditError(
            f"module {module_name!r} {what} {attr!r}: "
            "pass 'package.module:function' naming a function that builds the model"
        )
    try:
        model = factory()
    except Exception as exc:
        raise XauditError(
            f"model factory {text!r} raised {type(exc).__name__}: {_first_line(exc)}: "
            "it must build the model when called with no arguments"
        ) from exc
    if not isinstance(model, nn.Module):
        raise XauditError(
            f"model factory {text!r} returned a {type(model).__name__}, not a torch.nn.Module: make it return the model"
        )
    return LoadedModel(model, text, _display_name(model))


def _from_file(path: Path, trust_pickle: bool) -> LoadedModel:
    label = str(path)
    if not path.is_file():
        hint = (
            f"{label!r} is a built-in model name, not a file: build and train it with train_model({label!r}, dataset)"
            if label in MODELS
            else "check the path"
        )
        raise XauditError(f"model file not found: {label!r}: {hint}")
    fmt = _sniff(path)
    if fmt == "torchscript":
        try:
            # torch ≥ 2.9 deprecates TorchScript, but users' existing files must still load without noise
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                model = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise _unreadable(label, "a broken TorchScript archive", exc) from exc
        return LoadedModel(model, label, getattr(model, "original_name", type(model).__name__))
    if fmt is None:
        raise _unreadable(label, "unknown format", None)

    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if not trust_pickle and "Unsupported global" in str(exc):
            raise UnsafeModelFileError(
                f"model file {label!r} contains pickled Python objects, which can run arbitrary code when loaded: "
                "re-save it with torch.jit.save or xaudit's save_model, "
                "or pass --trust-pickle (trust_pickle=True) if you trust its source"
            ) from exc
        raise _unreadable(label, "corrupt pickle", exc) from exc
    except Exception as exc:
        # a torch.load of a pickled model may fail in the class's own code, e.g. a module that no longer imports
        raise _unreadable(label, "torch.load failed", exc) from exc
    return _interpret(obj, label)


def _sniff(path: Path) -> str | None:
    """``"torchscript"``, ``"torch"`` (torch.save's zip or legacy pickle format) or ``None`` for anything else."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        # a TorchScript archive carries its compiled code; torch.save archives only data.pkl and tensors
        if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "torch" if any(n.endswith("data.pkl") for n in names) else None
    with path.open("rb") as f:
        head = f.read(2)
    # torch.save's legacy (pre-1.6) format is a bare pickle: protocol marker 0x80 then the version byte
    return "torch" if len(head) == 2 and head[0] == 0x80 and head[1] <= 5 else None


def _unreadable(label: str, kind: str, exc: BaseException | None) -> XauditError:
    if exc is None:
        detail = "neither a torch.save nor a TorchScript file"
    else:
        detail = f"{type(exc).__name__}: {_first_line(exc)}"
    return XauditError(
        f"model file {label!r} is not a readable PyTorch/TorchScript file ({kind}): {detail}; "
        "save models with torch.jit.save or xaudit's save_model"
    )


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip() if exc is not None else ""
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _interpret(obj: Any, label: str) -> LoadedModel:
    """Turn what torch.load returned into a model: an xaudit payload, or (trusted) a pickled module."""
    if isinstance(obj, nn.Module):
        return LoadedModel(obj, label, _display_name(obj))
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _from_payload(obj, label)
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise XauditError(
            f"model file {label!r} holds only a state_dict (weights without the architecture): "
            f"pass a factory 'package.module:make_model' as the model and {label!r} as --state-dict (state_dict=...)"
        )
    raise XauditError(
        f"model file {label!r} holds a {type(obj).__name__}, not a model: "
        "save models with torch.jit.save or xaudit's save_model"
    )


def _from_payload(payload: Mapping[str, Any], label: str) -> LoadedModel:
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise XauditError(
            f"model file {label!r} has format version {version!r}, newer than this xaudit reads ({FORMAT_VERSION}): "
            f"upgrade xaudit (the file was written by {payload.get('xaudit_version', 'an unknown version')})"
        )
    try:
        spec = ModelSpec.from_dict(payload["spec"])
        model = build_from_spec(spec)
        model.load_state_dict(payload["state_dict"])
        config = TrainConfig.from_dict(payload["train_config"]) if payload.get("train_config") else None
        history = tuple(EpochRecord(**record) for record in payload.get("history") or ())
    except XauditError as exc:
        raise XauditError(f"model file {label!r} has invalid metadata ({exc}): re-save it with save_model") from exc
    except (KeyError, TypeError, RuntimeError) as exc:
        raise XauditError(
            f"model file {label!r} is damaged ({type(exc).__name__}: {_first_line(exc)}): re-save it with save_model"
        ) from exc
    return LoadedModel(model, label, spec.name, payload.get("dataset"), config, history)


def _load_weights(model: nn.Module, path: Path) -> None:
    """Load a weights file (a state_dict, an xaudit model file or a {"state_dict": ...} checkpoint) into ``model``."""
    label = str(path)
    if not path.is_file():
        raise XauditError(f"state_dict file not found: {label!r}: check the path")
    if _sniff(path) != "torch":
        raise _unreadable(label, "not a torch.save file", None)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise UnsafeModelFileError(
                f"state_dict file {label!r} contains pickled Python objects, not just weights: "
                "save it with torch.save(model.state_dict(), path)"
            ) from exc
        raise _unreadable(label, "corrupt pickle", exc) from exc
    if isinstance(obj, Mapping):
        # common checkpoint layouts nest the weights one level down
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise XauditError(
            f"state_dict file {label!r} holds a {type(obj).__name__}, not a state_dict: "
            "save it with torch.save(model.state_dict(), path)"
        )
    try:
        model.load_state_dict(obj)
    except RuntimeError as exc:
        problem = _first_line(exc).rstrip(":")
        missing, unexpected = _key_diff(model, obj)
        raise XauditError(
            f"state_dict {label!r} doesn't match the model ({problem}; missing {missing}, unexpected {unexpected}): "
            "load weights saved from the same architecture"
        ) from exc


def _key_diff(model: nn.Module, weights: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    want, have = set(model.state_dict()), set(weights)
    return sorted(want - have)[:3], sorted(have - want)[:3]
