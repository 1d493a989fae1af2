"""Output files: checking that a destination is writable before any work, and atomic writes at the end.

A run that fails half way must leave no partial output behind, so every file is written to a temporary
file in the destination's own directory and moved into place with ``os.replace`` (atomic on POSIX and
Windows when both paths are on the same file system, which the shared directory guarantees).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from xaudit.models._errors import XauditError


def _current_umask() -> int:
    # os.umask can only be read by setting it; set it straight back
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary sibling file that then replaces ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(data))


def prepare_out_dir(path: str | os.PathLike[str], *, option: str = "--out") -> list[Path]:
    """Create directory ``path`` (with parents) and prove it is writable with a probe file.

    Returns the directories this call created, outermost first, so a run that fails later can remove
    them again (see :func:`remove_created_dirs`). Raises :class:`XauditError` naming ``option``.
    """
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), path)
        raise XauditError(f"cannot write to {option} {str(path)!r}: {str(blocker)!r} is a file, not a directory: "
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
    return created


def prepare_out_file(path: str | os.PathLike[str], *, option: str = "--out") -> list[Path]:
    """Like :func:`prepare_out_dir` for an output *file*: its directory must be writable, and it must not be a directory."""
    path = Path(path)
    if path.is_dir():
        raise XauditError(f"{option} {str(path)!r} is a directory: pass a file path inside it, "
                          f"e.g. {str(path / 'model.pt')!r}")
    return prepare_out_dir(path.parent, option=option)


def remove_created_dirs(created: list[Path]) -> None:
    """Remove directories made by :func:`prepare_out_dir` that are still empty (innermost first)."""
    for directory in reversed(created):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
