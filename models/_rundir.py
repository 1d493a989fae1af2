"""A sweep's run directory: its manifest, one JSON record per finished trial, and the trained weights.

Layout::

    DIR/manifest.json          what the sweep is (model, data fingerprint, grid, base config, repeats, seed)
    DIR/trials/<key>.json      one record per finished trial (key ``p<point>-r<repeat>``)
    DIR/models/<key>.pt        that trial's final weights (a plain state dict), when kept

Every file is written to a temporary sibling and moved into place with ``os.replace``, so a sweep killed
at any moment (Ctrl-C, ``kill -9``) leaves only whole records: resuming reads them back and trains only
the trials that have none. A resume is refused when the manifest describes a different sweep.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ._atomic import atomic_write_bytes
from ._errors import XauditError
from ._sweep_result import TrialResult

FORMAT = "xaudit-sweep-run/1"

_WHAT = {"model": "model", "data": "dataset", "n_train": "training subset size", "n_test": "test subset size",
         "data_fingerprint": "data (same name, different contents)", "hidden": "model width",
         "grid": "grid", "base_config": "base training config", "repeats": "number of repeats", "seed": "seed"}


def _dumps(value: Any) -> bytes:
    return (json.dumps(value, indent=1, allow_nan=False) + "\n").encode("utf-8")


def prepare_run_dir(path: str | os.PathLike[str]) -> Path:
    """Create the run directory (and its ``trials``/``models`` folders) and prove it is writable."""
    root = Path(path)
    try:
        for sub in (root, root / "trials", root / "models"):
            sub.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (*reversed(root.parents), root) if p.exists() and not p.is_dir()), root)
        raise XauditError(f"cannot use run directory {str(root)!r}: {str(blocker)!r} is a file, not a directory: "
                          "choose another directory") from None
    except OSError as exc:
        raise XauditError(f"cannot create run directory {str(root)!r} ({exc.strerror}): choose a directory you "
                          "can write to") from None
    try:
        with tempfile.TemporaryFile(dir=root / "trials", prefix=".probe-") as fh:
            fh.write(b"probe")
    except OSError as exc:
        raise XauditError(f"cannot write to run directory {str(root)!r} ({exc.strerror}): choose a directory "
                          "you can write to") from None
    return root


def _describe_difference(key: str, there: Any, here: Any) -> str:
    if key == "grid":
        def text(grid: Mapping[str, Sequence[Any]]) -> str:
            return "; ".join(f"{k}={','.join(json.dumps(v) for v in vs)}" for k, vs in grid.items())

        return f"a different grid ({text(there)} there, {text(here)} here)"
    if key == "base_config":
        changed = sorted(k for k in set(there) | set(here) if there.get(k) != here.get(k))
        return "a different base training config (" + ", ".join(
            f"{k}: {there.get(k)!r} there, {here.get(k)!r} here" for k in changed) + ")"
    if key == "data_fingerprint":
        there, here = f"sha256 {str(there)[:12]}…", f"sha256 {str(here)[:12]}…"
    return f"a different {_WHAT.get(key, key)} ({there!r} there, {here!r} here)"


def open_manifest(root: Path, sweep: Mapping[str, Any], trial_keys: Sequence[str], *, resume: bool) -> None:
    """Write the manifest of a new run, or check that an existing run is this same sweep before resuming it."""
    path = root / "manifest.json"
    wanted = json.loads(_dumps(dict(sweep)))  # the JSON-normalised form is what is compared
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise XauditError(f"run directory {str(root)!r} has an unreadable manifest.json ({exc}): "
                              "choose a new directory") from None
        done = len(finished_keys(root))
        if not resume:
            raise XauditError(f"run directory {str(root)!r} already holds a sweep ({done} of "
                              f"{len(existing.get('trials', []))} trials done): pass --resume to finish it, or "
                              "choose another directory")
        there = existing.get("sweep", {})
        for key in sorted(set(there) | set(wanted), key=lambda k: list(_WHAT).index(k) if k in _WHAT else 99):
            if there.get(key) != wanted.get(key):
                raise XauditError(f"cannot resume {str(root)!r}: it was made with "
                                  f"{_describe_difference(key, there.get(key), wanted.get(key))}; resume with "
                                  "the same settings or choose a new directory")
        return
    if finished_keys(root):
        raise XauditError(f"run directory {str(root)!r} holds trial records but no manifest.json: "
                          "choose a new directory")
    atomic_write_bytes(path, _dumps({"format": FORMAT, "sweep": wanted, "trials": list(trial_keys)}))


def finished_keys(root: Path) -> set[str]:
    return {p.stem for p in (root / "trials").glob("*.json") if not p.name.startswith(".")}


def remove_stale_temporaries(root: Path) -> None:
    """Drop temporary files a killed run left half written (they were never moved into place)."""
    for folder in (root, root / "trials", root / "models"):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


def read_trial(root: Path, key: str) -> TrialResult | None:
    """The finished trial ``key`` read back, or None if it has no (readable) record."""
    path = root / "trials" / f"{key}.json"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return TrialResult.from_json(record["trial"])
    except (OSError, ValueError, KeyError, TypeError, XauditError):
        return None


def write_trial(root: Path, trial: TrialResult, state_dict: Mapping[str, torch.Tensor] | None) -> None:
    """Record a finished trial: the weights first, so a record on disk always has its weights."""
    if state_dict is not None:
        buffer = io.BytesIO()
        torch.save(dict(state_dict), buffer)
        atomic_write_bytes(root / "models" / f"{trial.key}.pt", buffer.getvalue())
    atomic_write_bytes(root / "trials" / f"{trial.key}.json", _dumps({"format": FORMAT, "trial": trial.to_json()}))


def read_state_dict(root: Path, key: str) -> dict[str, torch.Tensor] | None:
    path = root / "models" / f"{key}.pt"
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
