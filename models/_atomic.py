"""Atomic file writes: a crash while writing never leaves a half-written file where a reader would find it.

Every file is written to a temporary sibling (``.<name>.<random>.tmp``, hidden, in the destination's own
directory so the rename never crosses file systems), flushed to disk, and moved into place with
``os.replace``, which is atomic on POSIX and Windows. Until the rename the old file (or none) stays in
place; on an exception the temporary file is removed. A process killed outright (``kill -9``) can leave
the hidden temporary behind, never a partial destination.

This lives in ``models/`` because model files, run-directory records and the training cache are written
here, and ``models/`` imports nothing from ``reports/``; ``reports/_atomic.py`` re-exports these names.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

def _current_umask() -> int:
    # os.umask can only be read by setting it; set it straight back
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary sibling file that then replaces ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            # on disk before the rename: after a power cut the name points at whole data, not zeros
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))
