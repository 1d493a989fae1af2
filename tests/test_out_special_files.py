"""Output paths that are not plain files: a symlink is written through (its target replaced, the link kept); a
FIFO, device, socket or directory is never replaced by a regular file, and the CLI refuses it in one line
before any work. (Only FIFOs and symlinks made in tmp_path are used here, never real /dev nodes.)"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from xaudit.models import XauditError, build_model, save_model
from xaudit.models._atomic import atomic_write_bytes, atomic_write_text
from xaudit.reports import _cli

from _cli_helpers import assert_one_line_error, image_npz, run_cli

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs os.mkfifo")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XAUDIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def model_and_data(tmp_path: Path) -> list[str]:
    """``--model`` and ``--data`` options for an untrained 1×8×8 CNN file (loading it trains nothing)."""
    model = tmp_path / "cnn.pt"
    save_model(build_model("cnn", (1, 8, 8), 10, seed=0), model, dataset="digits")
    return ["--model", str(model), "--data", str(image_npz(tmp_path / "d.npz")), "-q"]


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _is_fifo(path: Path) -> bool:
    return stat.S_ISFIFO(os.lstat(path).st_mode)


# -- the atomic writer ---------------------------------------------------------------------------------------

def test_atomic_write_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.txt"
    link.symlink_to(Path("real") / "target.txt")  # relative and dangling: the target does not exist yet
    atomic_write_text(link, "first")
    assert link.is_symlink() and os.readlink(link) == str(Path("real") / "target.txt")
    assert (tmp_path / "real" / "target.txt").read_text() == "first"
    atomic_write_text(link, "second")  # an existing target is replaced through the link too
    assert link.is_symlink() and (tmp_path / "real" / "target.txt").read_text() == "second"
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["target.txt"]  # no temporary left


@pytest.mark.parametrize("through_link", [False, True])
def test_atomic_write_refuses_a_fifo_and_leaves_it(tmp_path: Path, through_link: bool) -> None:
    fifo = _fifo(tmp_path / "pipe")
    path = fifo
    if through_link:
        path = tmp_path / "link"
        path.symlink_to(fifo)
    with pytest.raises(XauditError, match="is not a regular file: it is a FIFO") as info:
        atomic_write_bytes(path, b"data")
    assert "\n" not in str(info.value)
    assert _is_fifo(fifo)
    assert not through_link or path.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"pipe", path.name})


def test_atomic_write_refuses_a_directory_and_a_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(XauditError, match="is not a regular file: it is a directory"):
        atomic_write_bytes(tmp_path / "dir", b"data")
    loop = tmp_path / "loop"
    loop.symlink_to("loop")
    with pytest.raises(XauditError, match="cannot write to"):
        atomic_write_bytes(loop, b"data")
    assert loop.is_symlink()


# -- every CLI output path -----------------------------------------------------------------------------------

def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any training, loading or sweeping fails the test: the refusal must come first."""
    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the output path was checked")

    from xaudit.reports import _cli_sweep

    monkeypatch.setattr(_cli, "resolve_subject", work)
    monkeypatch.setattr(_cli_sweep, "run_sweep", work)


# (argv, the special file to create, what the error names)
_CASES = {
    "explain --out": (["explain", "--method", "saliency", "--out", "{d}/a.npz"], "a.npz", "--out"),
    "explain cost file": (["explain", "--method", "saliency", "--out", "{d}/a.npz"], "a.json", "cost file"),
    "train --out": (["train", "--out", "{d}/m.pt"], "m.pt", "--out"),
    "report --out": (["report", "--methods", "saliency", "--out", "{d}/r"], "r/report.json", "--out"),
    "audit --out": (["audit", "--methods", "saliency", "--out", "{d}/r"], "r/report.html", "--out"),
    "audit --junit": (["audit", "--methods", "saliency", "--junit", "{d}/a.xml"], "a.xml", "--junit"),
    "sweep --out": (["sweep", "--grid", "weight_decay=0", "--out", "{d}/s"], "s/sweep.html", "--out"),
}


@pytest.mark.parametrize("case", list(_CASES))
def test_every_output_path_refuses_a_fifo_before_any_work(case: str, tmp_path: Path, model_and_data: list[str],
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv, special, option = _CASES[case]
    out_dir = tmp_path / "outputs"
    fifo = _fifo(out_dir / special)
    _no_work(monkeypatch)
    argv = [a.format(d=out_dir) for a in argv]
    options = ["-q"] if argv[0] == "sweep" else model_and_data
    code, _, err = run_cli([*argv, *options], capsys)
    assert_one_line_error(code, err, option, str(fifo.name), "is not a regular file", "FIFO")
    assert _is_fifo(fifo)
    assert sorted(p.relative_to(out_dir) for p in out_dir.rglob("*")) == sorted(
        [Path(special), *Path(special).parents][:-1]), "something was written next to the FIFO"


def test_explain_writes_through_a_symlinked_out(tmp_path: Path, model_and_data: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "real").mkdir()
    link = tmp_path / "link.npz"
    link.symlink_to(Path("real") / "target.npz")
    code, _, err = run_cli(["explain", "--method", "saliency", "--n-explain", "2", "--out", link, *model_and_data],
                           capsys)
    assert code == 0, err
    assert link.is_symlink() and (tmp_path / "real" / "target.npz").is_file()
    assert json.loads(link.with_suffix(".json").read_text())["npz"] == "link.npz"


@pytest.mark.parametrize("dangling", [False, True])
def test_report_writes_into_a_symlinked_folder(dangling: bool, tmp_path: Path, model_and_data: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "real-report"
    if not dangling:
        target.mkdir()
    link = tmp_path / "report-link"
    link.symlink_to(target.name)
    code, _, err = run_cli(["report", "--methods", "saliency", "--quality", "none", "--n-explain", "2",
                            "--out", link, *model_and_data], capsys)
    assert code == 0, err
    assert link.is_symlink()
    assert sorted(p.name for p in target.iterdir()) == ["report.html", "report.json"]
