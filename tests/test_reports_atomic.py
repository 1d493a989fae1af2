"""Output handling: atomic writes leave no temporary file, and --out is probed before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from xaudit.models import XauditError
from xaudit.reports._atomic import (
    atomic_write,
    atomic_write_text,
    prepare_out_dir,
    prepare_out_file,
    remove_created_dirs,
)


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failed_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")

    def explode(fh: object) -> None:
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_prepare_out_dir_creates_and_reports_created_dirs(tmp_path: Path) -> None:
    created = prepare_out_dir(tmp_path / "x" / "y")
    assert created == [tmp_path / "x", tmp_path / "x" / "y"]
    assert list((tmp_path / "x" / "y").iterdir()) == []  # the probe is gone
    remove_created_dirs(created)
    assert not (tmp_path / "x").exists()


def test_prepare_out_dir_under_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("x")
    with pytest.raises(XauditError, match="is a file, not a directory") as info:
        prepare_out_dir(blocker / "sub")
    assert "\n" not in str(info.value)


def test_prepare_out_file_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(XauditError, match="is a directory"):
        prepare_out_file(tmp_path)
    assert prepare_out_file(tmp_path / "new" / "model.pt") == [tmp_path / "new"]
