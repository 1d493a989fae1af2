"""Every file xaudit writes survives a crash in the middle of writing it.

For each writer (report, sweep page, run-directory records, model files, ``explain --out``, the training
cache) the n-th atomic write is made to fail: half way through its data (disk full, or Ctrl-C), at the
fsync, or at the final rename. Afterwards every file the writer had not finished is exactly what it was
before (or still absent), every file it had finished is whole, and no temporary file is left behind.
A process killed outright (SIGKILL) cannot clean up, so that case is checked separately: the destination
is intact and the leftover is the hidden temporary that resuming a sweep removes.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import xaudit.models._atomic as atomic_module
from xaudit.models import TrainConfig, build_model, cached_train, load_dataset, save_model
from xaudit.models._errors import XauditError
from xaudit.models._rundir import finished_keys, open_manifest, read_trial, remove_stale_temporaries, write_trial
from xaudit.reports import build_report
from xaudit.reports._cli import main
from xaudit.reports._sweep_report import SweepReport

from _cli_helpers import image_npz

STAGES = ("half-written", "interrupted", "fsync", "rename")


class _FaultyOs:
    """Stands in for ``os`` inside xaudit.models._atomic; the ``crash_at``-th atomic write fails at ``stage``."""

    def __init__(self, crash_at: int | None = None, stage: str = "") -> None:
        self.crash_at, self.stage = crash_at, stage
        self.current = -1  # the write being staged (its temporary file opened)
        self.renames = -1  # the rename being made: files written all or none are all staged before any rename
        self.crashed = False
        self.finished: list[Path] = []  # destinations, in the order they were moved into place

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _fails(self, stage: str) -> bool:
        index = self.renames if stage == "rename" else self.current
        if index == self.crash_at and self.stage == stage:
            self.crashed = True
            return True
        return False

    def fdopen(self, fd: int, mode: str) -> Any:
        self.current += 1
        fh = os.fdopen(fd, mode)
        if self._fails("half-written"):
            return _HalfWriter(fh, OSError(errno.ENOSPC, "No space left on device"))
        if self._fails("interrupted"):
            return _HalfWriter(fh, KeyboardInterrupt())
        return fh

    def fsync(self, fd: int) -> None:
        if self._fails("fsync"):
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)

    def replace(self, src: str, dst: str | os.PathLike[str]) -> None:
        self.renames += 1
        if self._fails("rename"):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        os.replace(src, dst)
        self.finished.append(Path(dst))


class _HalfWriter:
    """A file whose first ``write`` stores half of its bytes and then raises ``exc``."""

    def __init__(self, fh: Any, exc: BaseException) -> None:
        self._fh, self._exc = fh, exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _HalfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def write(self, data: bytes) -> int:
        self._fh.write(bytes(data)[: max(len(data) // 2, 1)])
        self._fh.flush()
        raise self._exc


def _is_whole(path: Path) -> bool:
    """Whether ``path`` parses as the complete file its suffix says it is."""
    data = path.read_bytes()
    if path.suffix == ".json":
        return isinstance(json.loads(data), dict)
    if path.suffix == ".html":
        return data.rstrip().endswith(b"</html>")
    if path.suffix in (".npz", ".pt"):
        return zipfile.ZipFile(path).testzip() is None
    return True


def _temporaries(folders: set[Path]) -> list[Path]:
    return sorted(p for folder in folders if folder.is_dir() for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- the writers: each case writes into a fresh folder and returns nothing --------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Shared inputs: a tiny .npz dataset, an (untrained) model file for it, a report, a sweep page and trial."""
    folder = tmp_path_factory.mktemp("inputs")
    data = image_npz(folder / "tiny.npz")
    report = build_report("cnn", data, methods=["saliency"], n_explain=2, epochs=1, quality="none",
                          use_cache=False)
    model_file = folder / "model.pt"
    save_model(build_model("cnn", (1, 8, 8), 3, seed=0, hidden=4), model_file, dataset=str(data))
    sweep_out = folder / "sweep"
    assert main(["sweep", "--data", "digits", "--n-train", "60", "--n-test", "30", "--epochs", "1", "--backend",
                 "sequential", "--grid", "weight_decay=0,1e-3", "--drift", "none", "--out", str(sweep_out),
                 "-q"]) == 0
    sweep = SweepReport(json.loads((sweep_out / "sweep.json").read_text(encoding="utf-8")))
    trial = read_trial(sweep_out, sorted(finished_keys(sweep_out))[0])
    assert trial is not None
    return {"data": data, "report": report, "model_file": model_file, "sweep": sweep, "trial": trial}


def _report(tiny: dict[str, Any], where: Path) -> None:
    tiny["report"].write(where)


def _sweep_page(tiny: dict[str, Any], where: Path) -> None:
    tiny["sweep"].write(where)


def _trial_record(tiny: dict[str, Any], where: Path) -> None:
    for sub in ("trials", "models"):
        (where / sub).mkdir(parents=True, exist_ok=True)
    weights = build_model("cnn", (1, 8, 8), 10, seed=0, hidden=4).state_dict()
    write_trial(where, tiny["trial"], weights)


def _manifest(tiny: dict[str, Any], where: Path) -> None:
    (where / "trials").mkdir(parents=True, exist_ok=True)
    open_manifest(where, {"model": "cnn", "seed": 0}, ["p0-r0"], resume=False)


def _model_file(tiny: dict[str, Any], where: Path) -> None:
    save_model(build_model("gru", (8, 8), 3, seed=0, hidden=4), where / "model.pt", dataset="tiny")


def _explain_out(tiny: dict[str, Any], where: Path) -> None:
    code = main(["explain", "--model", str(tiny["model_file"]), "--data", str(tiny["data"]), "--method",
                 "saliency", "--n-explain", "2", "--out", str(where / "attr.npz"), "-q"])
    if code == 130:  # the CLI turns Ctrl-C into exit code 130
        raise KeyboardInterrupt
    if code == 2:  # and a failed write into a one-line error, exit code 2
        raise XauditError("explain exited 2")


def _training_cache(tiny: dict[str, Any], where: Path) -> None:
    dataset = load_dataset(tiny["data"])
    with warnings.catch_warnings():
        # a cache that cannot be written costs a warning, not the run: turn it back into the failure it is
        warnings.simplefilter("error", RuntimeWarning)
        cached_train("cnn", dataset, TrainConfig(epochs=1, seed=0), cache_dir=where)


WRITERS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "report.html/json": _report, "sweep.html/json": _sweep_page, "trial record": _trial_record,
    "run manifest": _manifest, "model file": _model_file, "explain --out": _explain_out,
    "training cache": _training_cache,
}
# an existing manifest is a run to resume, never overwritten, so it only has the "no previous file" case
NO_PREVIOUS = {"run manifest"}
#: Writers whose files belong together and are written all or none: every file is staged before any is moved
#: into place, so a failure while writing (a full disk) leaves every one of them as it was.
ALL_OR_NONE = {"report.html/json", "explain --out"}


@pytest.fixture(scope="module")
def targets(tiny: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """Each writer's destinations (relative names, in write order), from one run without faults."""
    found: dict[str, list[str]] = {}
    for name, writer in WRITERS.items():
        where = tmp_path_factory.mktemp("clean")
        spy = _FaultyOs()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(atomic_module, "os", spy)
            writer(tiny, where)
        assert spy.finished, f"{name} wrote nothing through the atomic writer"
        assert all(_is_whole(p) for p in spy.finished)
        found[name] = [str(p.relative_to(where)) for p in spy.finished]
    return found


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(("writer", "previous"), [(w, p) for w in WRITERS for p in ("absent", "present")
                                                  if not (p == "present" and w in NO_PREVIOUS)])
def test_a_crash_mid_write_leaves_the_old_files_and_no_temporary(
        writer: str, previous: str, stage: str, tiny: dict[str, Any], targets: dict[str, list[str]],
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = targets[writer]
    for crash_at in range(len(names)):
        where = tmp_path / f"crash-{crash_at}"
        where.mkdir()
        before: dict[str, bytes | None] = {}
        for name in names:
            before[name] = f"previous {name}\n".encode() if previous == "present" else None
            if before[name] is not None:
                (where / name).parent.mkdir(parents=True, exist_ok=True)
                (where / name).write_bytes(before[name])
        faulty = _FaultyOs(crash_at, stage)
        with monkeypatch.context() as mp:
            mp.setattr(atomic_module, "os", faulty)
            # RuntimeWarning: the training cache's warning, raised as an error by _training_cache
            # XauditError: a failed write (disk full, I/O error) is the user's one-line error
            with pytest.raises((OSError, XauditError, RuntimeError, RuntimeWarning, KeyboardInterrupt)):
                WRITERS[writer](tiny, where)
        assert faulty.crashed, f"write {crash_at} of {writer} never reached the {stage} fault"
        done = crash_at if stage == "rename" or writer not in ALL_OR_NONE else 0
        for index, name in enumerate(names):
            path = where / name
            if index < done:
                assert path.is_file() and _is_whole(path) and path.read_bytes() != before[name], name
            else:
                assert (path.read_bytes() if path.exists() else None) == before[name], f"{name} was touched"
        folders = {where} | {(where / n).parent for n in names}
        assert _temporaries(folders) == [], f"temporary files left behind by {writer}"


def test_sigkill_mid_write_leaves_the_old_record_and_only_a_hidden_temporary(tmp_path: Path) -> None:
    # a killed process cleans up nothing: the destination must still be whole, and resuming removes the rest
    record = tmp_path / "trials" / "p0-r0.json"
    record.parent.mkdir()
    record.write_text('{"previous": true}\n', encoding="utf-8")
    script = textwrap.dedent(f"""
        import os, signal
        from xaudit.models._atomic import atomic_write
        def write(fh):
            fh.write(b'{{"half": ')
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        atomic_write({str(record)!r}, write)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert result.returncode == -9, result.stderr
    assert json.loads(record.read_text(encoding="utf-8")) == {"previous": True}
    leftovers = _temporaries({record.parent})
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".p0-r0.json.")
    assert finished_keys(tmp_path) == {"p0-r0"}  # the hidden temporary is not mistaken for a record
    remove_stale_temporaries(tmp_path)
    assert _temporaries({record.parent}) == []


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path: Path) -> None:
    # mkstemp makes 0600 files; the result must be readable like any file the user writes
    mask = os.umask(0o022)
    try:
        atomic_module.atomic_write_text(tmp_path / "a.json", "{}\n")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
