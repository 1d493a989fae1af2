"""Safe model I/O: xaudit model files, TorchScript, and ``package.module:factory`` strings.

Nothing is unpickled unless the caller opts in: xaudit files and state_dicts are read with
``torch.load(weights_only=True)``, TorchScript with ``torch.jit.load``. A file made with
``torch.save(whole_model)`` or ``pickle.dump(model)`` can run arbitrary code when loaded, so it needs
``trust_pickle=True``. Whether a file is such a pickle or just damaged is told apart by walking its pickle
opcodes with :mod:`pickletools`, which executes nothing.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from ._atomic import atomic_write, refuse_special_file
from ._errors import UnsafeModelFileError, XauditError
from ._nets import MODELS, ModelSpec, build_from_spec
from ._train import EpochRecord, TrainConfig

FORMAT = "xaudit-model"
FORMAT_VERSION = 1

# "pkg.mod:make" — a dotted module path, a colon, one attribute name (a Windows "C:\..." path never matches)
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

# torch.save's legacy (pre-1.6) format starts with its magic number pickled as a long (LONG1 opcode, 10 bytes),
# right after the protocol header; a file without it is a plain pickle.dump, which torch.load cannot read
_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[2:-1]

_MODEL_FIX = ("pass a model file (written by save_model or `xaudit train`, or TorchScript), a built-in model name "
              "or a 'package.module:factory'")
_STATE_DICT_FIX = "pass a weights file written by torch.save(model.state_dict(), path)"

_RESAVE = ("re-save the model as TorchScript (torch.jit.save(torch.jit.script(model), path)) or as a state dict "
           "(torch.save(model.state_dict(), path), then pass a 'package.module:factory' model with --state-dict)")


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to explain, with where it came from and, for xaudit files, how it was trained."""

    model: nn.Module
    source: str
    name: str
    dataset: str | None = None
    train_config: TrainConfig | None = None
    history: tuple[EpochRecord, ...] = ()
    #: earlier training runs the weights went through before ``train_config`` (oldest first), one line each
    warm_start: tuple[str, ...] = ()


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
    warm_start: Sequence[str] = (),
) -> None:
    """Save a built-in model with its architecture spec and training metadata, atomically.

    ``train_config`` and ``history`` describe the last training run; ``warm_start`` the runs before it whose
    weights it started from (oldest first, one line each), so a fine-tuned model's card tells its whole story.

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
    if isinstance(warm_start, str) or not all(isinstance(line, str) for line in warm_start):
        raise XauditError("warm_start must be a sequence of strings, one per earlier training run")
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
        "warm_start": list(warm_start),
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
    refuse_special_file(path, what="model file", fix=_MODEL_FIX)
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

    if fmt == "pickle":
        return _from_plain_pickle(path, label, trust_pickle)
    try:
        with _quiet_torch_load():
            obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if not trust_pickle and _refused_by_weights_only(exc):
            if not _torch_pickle_parses(path):
                raise _unreadable(label, "corrupt pickle", None, "its pickle data is damaged or truncated") from exc
            if "Unsupported global" in str(exc):
                what = "contains pickled Python objects"
            else:  # e.g. a pickle protocol the safe loader does not read
                what = f"can only be read by full unpickling (torch's safe loader refused it: {_torch_detail(exc)})"
            raise UnsafeModelFileError(
                f"model file {label!r} {what}, which can run arbitrary code when loaded: "
                f"pass --trust-pickle (trust_pickle=True) if you trust its source, or {_RESAVE}"
            ) from exc
        raise _unreadable(label, "corrupt pickle", exc) from exc
    except (ImportError, AttributeError) as exc:
        raise _class_not_found(label, exc) from exc
    except Exception as exc:
        # a torch.load of a pickled model may fail in the class's own code, or on a damaged archive
        raise _unreadable(label, "torch.load failed", exc) from exc
    return _interpret(obj, label)


@contextlib.contextmanager
def _quiet_torch_load() -> Iterator[None]:
    """torch.load's own UserWarnings (e.g. "Detected pickle protocol 4") would be extra lines on stderr next to
    xaudit's one-line error; what they say is in the error already."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch(\.|$)")
        yield


def _from_plain_pickle(path: Path, label: str, trust_pickle: bool) -> LoadedModel:
    """A file written by ``pickle.dump``: refused unless trusted, then read with :func:`pickle.load` (torch.load
    cannot read it: it expects torch.save's magic number first)."""
    with path.open("rb") as f:
        parsed, top = _pickle_outline(f)
    if not parsed:
        raise _unreadable(label, "corrupt pickle", None, "it starts like a pickle but its data is damaged or truncated")
    of = f" of {top}" if top else ""
    if not trust_pickle:
        raise UnsafeModelFileError(
            f"model file {label!r} is a plain Python pickle{of} (pickle.dump), which can run arbitrary code when "
            f"loaded: pass --trust-pickle (trust_pickle=True) if you trust its source, or {_RESAVE}"
        )
    try:
        with path.open("rb") as f, _quiet_torch_load():
            obj = pickle.load(f)
    except (ImportError, AttributeError) as exc:
        raise _class_not_found(label, exc) from exc
    except Exception as exc:
        raise _unreadable(label, "pickle.load failed", exc) from exc
    return _interpret(obj, label)


def _class_not_found(label: str, exc: BaseException) -> XauditError:
    return XauditError(
        f"model file {label!r} pickles a class that can't be imported ({type(exc).__name__}: {_first_line(exc)}): "
        "make the module that defines the model importable (install it, or add its folder to PYTHONPATH)"
    )


def _refused_by_weights_only(exc: BaseException) -> bool:
    """Whether torch.load's ``weights_only`` unpickler refused the file (rather than the pickle being unreadable)."""
    return "Weights only load failed" in str(exc)


def _pickle_outline(stream: BinaryIO) -> tuple[bool, str | None]:
    """(whether ``stream`` holds a well-formed pickle next, the first class or function it references) from its
    opcodes alone: nothing is imported or executed. The stream is left after the pickle's STOP."""
    strings: list[str] = []
    top = None
    try:
        for opcode, arg, _ in pickletools.genops(stream):
            if isinstance(arg, str) and opcode.name.endswith("UNICODE"):
                strings.append(arg)
            elif top is None and opcode.name == "GLOBAL" and isinstance(arg, str):
                top = ".".join(arg.split(" ", 1))
            elif top is None and opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                top = f"{strings[-2]}.{strings[-1]}"
    except Exception:  # pickletools raises ValueError, but a damaged stream may trip anything in its decoders
        return False, None
    return True, top


def _torch_pickle_parses(path: Path) -> bool:
    """Whether a torch.save file's pickled part is well-formed: then a weights_only refusal means Python objects
    the safe loader will not build, not damage."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
                with zf.open(name) as member:
                    return _pickle_outline(member)[0]
        except (StopIteration, zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError):
            return False
    # legacy format: magic number, protocol version and system info, then the object, each its own pickle
    with path.open("rb") as f:
        return all(_pickle_outline(f)[0] for _ in range(4))


def _sniff(path: Path) -> str | None:
    """``"torchscript"``, ``"torch"`` (torch.save's zip or legacy format), ``"pickle"`` (a plain ``pickle.dump``)
    or ``None`` for anything else."""
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
        head = f.read(32)
    # a pickle (protocol 2+) starts with the marker 0x80 then the version byte; torch.save's legacy (pre-1.6)
    # format is pickles too, the first one its magic number
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return "torch" if _LEGACY_MAGIC in head else "pickle"
    return None


def _unreadable(label: str, kind: str, exc: BaseException | None, detail: str | None = None) -> XauditError:
    if detail is None:
        detail = (f"{type(exc).__name__}: {_torch_detail(exc)}" if exc is not None
                  else "neither a torch.save nor a TorchScript file")
    return XauditError(
        f"model file {label!r} is not a readable PyTorch/TorchScript file ({kind}): {detail}; "
        "save models with torch.jit.save or xaudit's save_model"
    )


def _unreadable_weights(label: str, kind: str, exc: BaseException | None = None) -> XauditError:
    """The error for a --state-dict file torch.load cannot read (it is a state dict's, not a model file's)."""
    detail = f": {type(exc).__name__}: {_torch_detail(exc)}" if exc is not None else ""
    return XauditError(f"state_dict file {label!r} is not a readable torch.save file ({kind}{detail}): "
                       f"{_STATE_DICT_FIX}")


def _torch_detail(exc: BaseException) -> str:
    """What went wrong, in one line: for a weights_only refusal, the unpickler's own reason ("Unsupported
    operand 149"), not torch's paragraph of advice around it."""
    found = re.search(r"WeightsUnpickler error:\s*(.+)", str(exc))
    return found.group(1).strip()[:200] if found else _first_line(exc)


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
        warm_start = payload.get("warm_start") or ()
        if not isinstance(warm_start, (list, tuple)) or not all(isinstance(line, str) for line in warm_start):
            raise XauditError("warm_start must be a list of strings")
        warm_start = tuple(warm_start)
    except XauditError as exc:
        raise XauditError(f"model file {label!r} has invalid metadata ({exc}): re-save it with save_model") from exc
    except (KeyError, TypeError, RuntimeError) as exc:
        raise XauditError(
            f"model file {label!r} is damaged ({type(exc).__name__}: {_first_line(exc)}): re-save it with save_model"
        ) from exc
    return LoadedModel(model, label, spec.name, payload.get("dataset"), config, history, warm_start)


def _load_weights(model: nn.Module, path: Path) -> None:
    """Load a weights file (a state_dict, an xaudit model file or a {"state_dict": ...} checkpoint) into ``model``."""
    label = str(path)
    refuse_special_file(path, what="state_dict file", fix=_STATE_DICT_FIX)
    if not path.is_file():
        raise XauditError(f"state_dict file not found: {label!r}: check the path")
    fmt = _sniff(path)
    if fmt == "pickle":
        raise XauditError(
            f"state_dict file {label!r} is a plain Python pickle (pickle.dump), which xaudit does not unpickle for "
            "weights: save them with torch.save(model.state_dict(), path)"
        )
    if fmt == "torchscript":
        raise XauditError(
            f"state_dict file {label!r} is a TorchScript model, not a state dict: pass it as the model instead "
            f"(--model {label}, or load_model({label!r})) without --state-dict"
        )
    if fmt != "torch":
        raise _unreadable_weights(label, "damaged, or in another format")
    try:
        with _quiet_torch_load():
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if _refused_by_weights_only(exc) and _torch_pickle_parses(path):
            what = ("contains pickled Python objects, not just weights" if "Unsupported global" in str(exc)
                    else f"can't be read as plain weights ({_torch_detail(exc)})")
            raise UnsafeModelFileError(
                f"state_dict file {label!r} {what}: save it with torch.save(model.state_dict(), path)"
            ) from exc
        raise _unreadable_weights(label, "corrupt pickle", exc) from exc
    except Exception as exc:  # a damaged archive (truncated zip, bad tensor records)
        raise _unreadable_weights(label, "torch.load failed", exc) from exc
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
        raise XauditError(
            f"state_dict {label!r} doesn't match the model ({_mismatch(model, obj, exc)}): "
            "load weights saved from the same architecture"
        ) from exc


def _mismatch(model: nn.Module, weights: Mapping[str, Any], exc: RuntimeError) -> str:
    """How ``weights`` differ from ``model``'s state dict, in one line: the first tensor whose shape differs (with
    both shapes), the keys missing from the file and those the model lacks; torch's own reason when none of these
    (torch's message puts each on its own line after a header)."""
    own = model.state_dict()
    parts: list[str] = []
    shapes = [(key, tuple(weights[key].shape), tuple(value.shape)) for key, value in own.items()
              if key in weights and isinstance(value, torch.Tensor) and weights[key].shape != value.shape]
    if shapes:
        key, theirs, ours = shapes[0]
        more = f" (and {len(shapes) - 1} more tensors)" if len(shapes) > 1 else ""
        parts.append(f"{key} has shape {list(theirs)} in the file but {list(ours)} in the model{more}")
    missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    for said, keys in (("keys missing from the file", missing), ("keys the model lacks", unexpected)):
        if keys:
            listed = ", ".join(map(repr, keys[:3])) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            parts.append(f"{said}: {listed}")
    if parts:
        return "; ".join(parts)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else _first_line(exc)
