"""Output files: checking that a destination is writable before any work, and atomic writes at the end.

A run that fails half way must leave no partial output behind, so every file is written through
:func:`atomic_write` (from ``xaudit.models._atomic``): a temporary file in the destination's own directory,
moved into place with ``os.replace``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

# the atomic writers live with the model files they also write; re-exported here for reports and the CLI
from xaudit.models._atomic import (atomic_write, atomic_write_all, atomic_write_bytes, atomic_write_text,
                                   refuse_special_file, regular_file_target)
from xaudit.models._errors import XauditError

__all__ = ["atomic_write", "atomic_write_all", "atomic_write_bytes", "atomic_write_text", "prepare_out_dir", "prepare_out_file",
           "refuse_special_file", "regular_file_target", "remove_created_dirs"]


def prepare_out_dir(path: str | os.PathLike[str], *, option: str = "--out", files: Sequence[str] = ()) -> list[Path]:
    """Create directory ``path`` (with parents) and prove it is writable with a probe file.

    A symlink to a directory is followed (a dangling one: its target is created). ``files`` names the
    files the command will write into the directory; any of them that exists and is not a regular file is
    refused here, before any work (see :func:`regular_file_target`).

    Returns the directories this call created, outermost first, so a run that fails later can remove
    them again (see :func:`remove_created_dirs`). Raises :class:`XauditError` naming ``option``.
    """
    given = Path(path)
    path = Path(os.path.realpath(given)) if given.is_symlink() else given
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), path)
        what = "a file, not a directory" if blocker.is_file() else "not a directory"
        raise XauditError(f"cannot write to {option} {str(given)!r}: {str(blocker)!r} is {what}: "
                          f"choose another {option} path") from None
    except OSError as exc:
        raise XauditError(f"cannot create {option} directory {str(path)!r} ({exc.strerror}): "
                          f"choose a directory you can write to") from None
    created = [p for p in reversed(missing) if p.is_dir()]
    try:
        with tempfile.TemporaryFile(dir=path, prefix=".xaudit-probe-") as fh:
            fh.write(b"probe")
    except OSError as exc:
        remove_created_dirs(created)
        raise XauditError(f"cannot write to {option} directory {str(path)!r} ({exc.strerror}): "
                          f"choose a directory you can write to") from None
    try:
        for name in files:
            regular_file_target(given / name, option=option)
    except XauditError:
        remove_created_dirs(created)
        raise
    return created


def prepare_out_file(path: str | os.PathLike[str], *, option: str = "--out", example: str = "model.pt") -> list[Path]:
    """Like :func:`prepare_out_dir` for an output *file*: its directory must be writable, and it must be a
    regular file or not exist yet (not a directory, FIFO or device); a symlink is followed to its target,
    which is what :func:`atomic_write` will replace. ``example``: the file name a directory's error suggests."""
    path = Path(path)
    if path.is_dir():
        raise XauditError(f"{option} {str(path)!r} is a directory: pass a file path inside it, "
                          f"e.g. {str(path / example)!r}")
    target = regular_file_target(path, option=option)
    return prepare_out_dir(target.parent, option=option)


def remove_created_dirs(created: list[Path]) -> None:
    """Remove directories made by :func:`prepare_out_dir` that are still empty (innermost first)."""
    for directory in reversed(created):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether ``a`` and ``b`` are one file: the same inode when both exist (symlinks, hard links, ``./``),
    else the same resolved path (a file not written yet)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def refuse_overwriting_inputs(out: str | os.PathLike[str], inputs: Sequence[tuple[str, str | None]], *,
                              option: str = "--out", example: str | None = None) -> None:
    """A one-line error when the output ``out`` is one of the command's input files (``(option, path)``
    pairs; None or a name that is not a file, such as a built-in model, is skipped): writing it would
    replace what the command read. ``example``: a file name the error suggests instead."""
    for name, path in inputs:
        if path and os.path.isfile(path) and same_file(out, path):
            instead = f", e.g. {example!r}" if example else ""
            raise XauditError(f"{option} {str(out)!r} is the same file as {name} {path!r}, which writing it would "
                              f"replace: pass another {option} path{instead}")
