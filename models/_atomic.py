"""Atomic file writes: a crash while writing never leaves a half-written file where a reader would find it.

Every file is written to a temporary sibling (``.<name>.<random>.tmp``, hidden, in the destination's own
directory so the rename never crosses file systems), flushed to disk, and moved into place with
``os.replace``, which is atomic on POSIX and Windows. Until the rename the old file (or none) stays in
place; on an exception the temporary file is removed. A process killed outright (``kill -9``) can leave
the hidden temporary behind, never a partial destination.

Only regular files are replaced. A destination that is a symlink is followed: the write replaces the file
the link points to (created if missing) and the link stays. A destination that exists and is not a regular
file (a FIFO, a device such as ``/dev/full``, a socket, a directory) is refused: renaming over it would
swap the node itself for a regular file (as root, the device node).

The same file kinds are refused on the reading side (:func:`refuse_special_file`): every input file
(``--data``, ``--model``, ``--state-dict``, ``--policy``, ``--report``) is checked before it is opened, since
opening a FIFO blocks until a writer comes and reading ``/dev/zero`` never ends.

This lives in ``models/`` because model files, run-directory records and the training cache are written
here, and ``models/`` imports nothing from ``reports/``; ``reports/_atomic.py`` re-exports these names.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ._errors import XauditError

_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _current_umask() -> int:
    # os.umask can only be read by setting it; set it straight back
    mask = os.umask(0)
    os.umask(mask)
    return mask


def regular_file_target(path: str | os.PathLike[str], *, option: str | None = None) -> Path:
    """The file a write to ``path`` replaces: a symlink's resolved target (so the link stays), else ``path``.

    Raises a one-line :class:`XauditError` when that file exists and is not a regular file, naming
    ``option`` (``"--out"``) when given.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    said = f"{option} {str(path)!r}" if option else repr(str(path))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:  # a symlink loop, a component that is not a directory, no permission
        raise XauditError(f"cannot write to {said} ({exc.strerror}): choose another path") from None
    if stat.S_ISREG(mode):
        return target
    kind = _kind(mode)
    via = f" (the symlink points to {str(target)!r})" if target != path else ""
    raise XauditError(f"{said} is not a regular file: it is {kind}{via}, which xaudit does not overwrite; "
                      f"choose a path to a regular file, or a new one")


def _kind(mode: int) -> str:
    return next((name for test, name in _FILE_KINDS if test(mode)), "a special file")


def refuse_special_file(path: str | os.PathLike[str], *, what: str, fix: str) -> None:
    """A one-line :class:`XauditError` when the input ``path`` exists but is not a regular file (symlinks are
    followed): ``"<what> 'p' is a directory, not a file: <fix>"``, or a FIFO, device or socket, ``not a regular
    file``. A missing path passes, for the caller's own "not found" message. Nothing is opened."""
    label = str(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:  # no permission to look, a symlink loop
        raise XauditError(f"cannot read {what} {label!r} ({exc.strerror}): {fix}") from None
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise XauditError(f"{what} {label!r} is a directory, not a file: {fix}")
    raise XauditError(f"{what} {label!r} is {_kind(mode)}, not a regular file: {fix}")


def _staged(path: Path, write: Callable[[IO[bytes]], object]) -> tuple[Path, Path]:
    """(the file ``path``'s write replaces, a temporary sibling already holding the whole content)."""
    target = regular_file_target(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            # on disk before the rename: after a power cut the name points at whole data, not zeros
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have
        os.chmod(tmp, 0o666 & ~_current_umask())
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise
    return target, Path(tmp)


def _write_error(path: Path, exc: OSError) -> XauditError:
    """A full disk or a quota is the user's to fix: one line, not a traceback."""
    return XauditError(f"cannot write {str(path)!r} ({exc.strerror or exc}): free space there or choose another "
                       "path; nothing was written")


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a temporary sibling file that then replaces ``path``
    (through a symlink: the file it points to; see :func:`regular_file_target`). A write that fails for lack of
    space or permission is a one-line :class:`XauditError`, with nothing left behind."""
    path = Path(path)
    target, tmp = _staged(path, write)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_all(files: list[tuple[str | os.PathLike[str], bytes]]) -> list[Path]:
    """Write several files that belong together (a report's HTML and JSON, attributions and their cost) all or
    none: every content is written in full to its temporary sibling before any replaces its destination, so a
    disk that fills up half way leaves none of them (the renames themselves take no space)."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in files:
            staged.append(_staged(Path(path), lambda fh, data=data: fh.write(data)))
        for (target, tmp), (path, _) in zip(staged, files):
            try:
                os.replace(tmp, target)
            except OSError as exc:  # in the same directory this does not happen short of a failing disk; the
                raise _write_error(Path(path), exc) from None  # files renamed before it stay replaced
    except BaseException:
        for _, tmp in staged:
            tmp.unlink(missing_ok=True)
        raise
    return [Path(path) for path, _ in files]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))
