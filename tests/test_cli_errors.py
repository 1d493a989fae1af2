"""Bad input on the command line: ONE line ``xaudit: error: ...``, exit code 2, no traceback, no output file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xaudit.models import build_model, save_model

from _cli_helpers import assert_no_report, assert_one_line_error, image_npz, run_cli


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XAUDIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def cnn_file(tmp_path: Path) -> Path:
    """An (untrained) built-in digits CNN saved as an xaudit model file: 10 classes, 1×8×8 inputs."""
    path = tmp_path / "cnn.pt"
    save_model(build_model("cnn", (1, 8, 8), 10, seed=0), path, dataset="digits")
    return path


def _report_fails(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    out = tmp_path / "out"
    code, _, err = run_cli(["report", *argv, "--out", out, "--epochs", "1", "--n-explain", "2"], capsys)
    line = assert_one_line_error(code, err, *fragments)
    assert_no_report(out)
    assert not out.exists(), "a failed run left its --out directory behind"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt")), "it trained"
    return line


def test_unknown_model_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _report_fails(["--model", "cnm"], tmp_path, capsys, "did you mean 'cnn'")


def test_unknown_dataset_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _report_fails(["--data", "digts"], tmp_path, capsys, "did you mean 'digits'")


def test_unknown_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _report_fails(["--methods", "saliency,sailency"], tmp_path, capsys, "did you mean 'saliency'")


def test_missing_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _report_fails(["--model", tmp_path / "nope.pt"], tmp_path, capsys, "nope.pt")


def test_missing_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _report_fails(["--data", tmp_path / "nope.npz"], tmp_path, capsys, "nope.npz")


def test_corrupt_model_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a model file\x00\x01")
    _report_fails(["--model", bad], tmp_path, capsys, "bad.pt")


def test_untrusted_pickle_mentions_trust_pickle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "pickled.pt"
    torch.save(build_model("cnn", (1, 8, 8), 10), path)  # the whole module: pickled Python objects
    _report_fails(["--model", path], tmp_path, capsys, "--trust-pickle")


def test_npz_missing_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = image_npz(tmp_path / "d.npz", y_test=None)
    _report_fails(["--data", data], tmp_path, capsys, "y_test")


def test_npz_mismatched_lengths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = image_npz(tmp_path / "d.npz", y_test=np.zeros(5, dtype=np.int64))
    _report_fails(["--data", data], tmp_path, capsys, "y_test")


def test_nan_in_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(0).random((12, 1, 8, 8), dtype=np.float32)
    x[3, 0, 2, 2] = np.nan
    data = image_npz(tmp_path / "d.npz", x_test=x)
    _report_fails(["--data", data], tmp_path, capsys, "nan")


def test_builtin_model_that_does_not_fit_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _report_fails(["--model", "gru", "--data", "digits"], tmp_path, capsys, "gru")


def test_model_file_that_does_not_fit_the_data(tmp_path: Path, cnn_file: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    seq = tmp_path / "seq.npz"
    np.savez(seq, x_test=rng.random((6, 40, 1), dtype=np.float32), y_test=np.arange(6) % 2)
    _report_fails(["--model", cnn_file, "--data", seq], tmp_path, capsys, "shape")


def test_labels_outside_the_models_classes(tmp_path: Path, cnn_file: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = image_npz(tmp_path / "d.npz", n_test=12, n_classes=12)  # test labels 0..11, the model has 10 classes
    _report_fails(["--model", cnn_file, "--data", data], tmp_path, capsys, "label", "class")


def test_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "somefile.txt"
    blocker.write_text("I am a file")
    code, _, err = run_cli(["report", "--out", blocker / "sub", "--epochs", "1"], capsys)
    assert_one_line_error(code, err, "somefile.txt")
    assert blocker.read_text() == "I am a file"
    assert not (tmp_path / "cache").exists(), "it trained before checking --out"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_names_device_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _report_fails(["--device", "cuda"], tmp_path, capsys, "--device cpu")


def test_train_and_explain_share_the_error_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["train", "--model", "cnm", "--out", tmp_path / "m.pt"], capsys)
    assert_one_line_error(code, err, "did you mean 'cnn'")
    code, _, err = run_cli(["explain", "--method", "sailency", "--out", tmp_path / "a.npz"], capsys)
    assert_one_line_error(code, err, "did you mean 'saliency'")
    code, _, err = run_cli(["train", "--out", tmp_path], capsys)
    assert_one_line_error(code, err, "is a directory")
    code, _, err = run_cli(["explain", "--method", "saliency", "--out", tmp_path / "a.json"], capsys)
    assert_one_line_error(code, err, ".npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_huge_label_is_one_line_in_flat_memory(tmp_path: Path, cnn_file: Path) -> None:
    # label 2**40 in y_test made the loader build 2**40 class names: the process was OOM-killed (exit 137).
    # Run under an address-space cap (this process's size + 2 GiB) so a regression fails here, not the machine.
    resource = pytest.importorskip("resource")
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("needs /proc to size the memory cap")
    cap = int(statm.read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE") + 2 * 2**30

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    data = image_npz(tmp_path / "d.npz", y_test=np.array([0, 1] * 5 + [2, 2**40]))
    out = tmp_path / "attr.npz"
    env = {**os.environ, "XAUDIT_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-m", "xaudit.reports", "explain", "--model", str(cnn_file), "--data",
                             str(data), "--method", "saliency", "--out", str(out), "-q"],
                            capture_output=True, text=True, env=env, timeout=180, preexec_fn=limit_memory)
    assert_one_line_error(result.returncode, result.stderr, "label 1099511627776", "class indices 0..C-1")
    assert result.stdout == ""
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize("name", ["x.pt", "a.npy", "noext", "attr.npz.bak"])
def test_explain_out_must_be_an_npz(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --out x.pt wrote an NPZ archive under that name, and a.npy, a.pt, a.npz all put their cost in a.json
    out = tmp_path / name
    code, _, err = run_cli(["explain", "--method", "saliency", "--epochs", "1", "--n-explain", "2", "--out", out,
                            "-q"], capsys)
    line = assert_one_line_error(code, err, "must be an .npz file", "cost goes next to it as .json")
    assert repr(str(out.with_suffix(".npz"))) in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "it wrote or trained before refusing --out"


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from xaudit.reports import _cli

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a genuine bug")

    monkeypatch.setattr(_cli, "resolve_subject", broken)
    with pytest.raises(ZeroDivisionError):
        _cli.main(["report", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def _installed_script() -> str | None:
    candidate = Path(sys.executable).parent / "xaudit"
    return str(candidate) if candidate.exists() else shutil.which("xaudit")


@pytest.mark.parametrize("launcher", ["python -m", "script"])
def test_no_traceback_reaches_the_terminal(launcher: str, tmp_path: Path) -> None:
    if launcher == "script":
        script = _installed_script()
        if script is None:
            pytest.skip("the xaudit console script is not installed")
        command = [script]
    else:
        command = [sys.executable, "-m", "xaudit.reports"]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    env = {**os.environ, "XAUDIT_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run([*command, "report", "--model", str(bad), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, env=env, timeout=180)
    assert_one_line_error(result.returncode, result.stderr, "bad.pt")
    assert result.stdout == ""
    assert_no_report(tmp_path / "out")


def test_explain_memory_budget_too_small_says_how_much(tmp_path, capsys) -> None:
    from xaudit.reports._cli import main

    out = tmp_path / "attr.npz"
    code = main(["explain", "--method", "saliency", "--epochs", "1", "-q", "--memory-budget", "1KiB",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("xaudit: error:") and "\n" not in err
    assert "too small for even one sample" in err and "needs about" in err
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_unreadable_memory_budget(tmp_path, capsys) -> None:
    from xaudit.reports._cli import main

    code = main(["explain", "--method", "saliency", "--epochs", "1", "-q", "--memory-budget", "lots",
                 "--out", str(tmp_path / "a.npz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot read memory size 'lots'" in err


def test_epochs_with_a_model_that_is_not_trained_is_a_usage_error(tmp_path, capsys) -> None:
    # --epochs was silently ignored for a supplied model; a built-in model with --state-dict is not trained either
    from xaudit.reports._subject import resolve_subject
    from xaudit.models import build_model
    from xaudit.models._errors import XauditError
    import pytest as _pytest

    with _pytest.raises(XauditError, match="--epochs sets how long a built-in model trains, but a model you supply"):
        resolve_subject(build_model("cnn", (1, 8, 8), 10, seed=0), "digits", epochs=3)
    weights = tmp_path / "w.pt"
    import torch as _torch
    _torch.save(build_model("cnn", (1, 8, 8), 10, seed=0).state_dict(), weights)
    with _pytest.raises(XauditError, match="the built-in cnn with weights from a file is used as it is"):
        resolve_subject("cnn", "digits", state_dict=weights, epochs=3)


@pytest.mark.parametrize(("argv", "fragments"), [
    (["report", "--n-explain", "0"], ("argument --n-explain", "see xaudit report --help")),
    (["report", "--quality", "bogus"], ("argument --quality: invalid choice", "see xaudit report --help")),
    (["explain", "--method", "saliency", "--seed", "x"], ("argument --seed", "see xaudit explain --help")),
    (["sweep", "--repeats", "0"], ("argument --repeats", "see xaudit sweep --help")),
    (["report", "--repeats", "0"], ("unrecognized arguments: --repeats 0", "see xaudit report --help")),
])
def test_a_bad_option_value_is_one_line_without_the_usage_block(argv: list[str], fragments: tuple[str, ...],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, *fragments)


@pytest.mark.parametrize(("argv", "fragments"), [
    (["reprot"], ("unknown command 'reprot'", "did you mean 'report'?", "audit, explain, report, sweep, train")),
    (["bogus", "--out", "x"], ("unknown command 'bogus'", "audit, explain, report, sweep, train")),
    ([], ("give a command: report, train, explain, sweep or audit",)),
])
def test_a_missing_or_unknown_command_is_one_line_with_the_commands(argv: list[str], fragments: tuple[str, ...],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # argparse printed its usage line first (two lines), and no "did you mean" for a misspelled command
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, *fragments, "see xaudit --help")


def _seed_argv(command: str, out: Path) -> list[str]:
    quick = ["--epochs", "1", "-q"]
    return {"report": ["report", "--methods", "saliency", "--quality", "none", "--n-explain", "2", *quick, "--out", out],
            "explain": ["explain", "--method", "saliency", "--n-explain", "2", *quick, "--out", out / "a.npz"],
            "train": ["train", *quick, "--out", out / "m.pt"],
            "audit": ["audit", "--methods", "saliency", "--quality", "none", "--n-explain", "2", *quick,
                      "--junit", out / "audit.xml"],
            "sweep": ["sweep", "--grid", "lr=0.001", "--n-train", "50", "--backend", "sequential", *quick,
                      "--out", out]}[command]


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
@pytest.mark.parametrize("command", ["report", "explain", "train", "audit", "sweep"])
def test_a_seed_outside_32_bits_is_one_line_for_every_command(command: str, seed: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # scikit-learn's train_test_split (the digits split) raised InvalidParameterError with a traceback; sweep
    # took 4294967296
    out = tmp_path / "out"
    code, stdout, err = run_cli([*_seed_argv(command, out), "--seed", seed], capsys)
    assert_one_line_error(code, err, "--seed must be a whole number in 0..4294967295", f"got {seed}",
                          "e.g. --seed 0")
    assert stdout == "" and not out.exists()
    assert not (tmp_path / "cache").exists(), "it trained before checking --seed"


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5])
def test_the_api_refuses_a_seed_outside_32_bits_in_one_line(seed: object) -> None:
    from xaudit.models import XauditError, load_dataset
    from xaudit.reports import build_report

    for call in (lambda: load_dataset("digits", seed=seed), lambda: load_dataset("mnist1d", seed=seed),
                 lambda: build_report("cnn", "digits", seed=seed, epochs=1)):
        with pytest.raises(XauditError, match=r"seed must be a whole number in 0\.\.4294967295") as info:
            call()
        assert "\n" not in str(info.value)


def _special(kind: str, tmp_path: Path, name: str) -> Path:
    """An existing path that is not a regular file: a directory, a FIFO or a character device."""
    if kind == "device":
        if not Path("/dev/null").exists():
            pytest.skip("no /dev/null")
        return Path("/dev/null")
    path = tmp_path / name
    if kind == "directory":
        path.mkdir()
    else:
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs on this platform")
        os.mkfifo(path)
    return path


_IS = {"directory": "is a directory, not a file", "fifo": "is a FIFO (named pipe), not a regular file",
       "device": "is a character device, not a regular file"}


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
@pytest.mark.parametrize(("option", "name", "said"), [("--data", "in.npz", "data file"),
                                                      ("--model", "in.pt", "model file"),
                                                      ("--state-dict", "w.pt", "state_dict file")])
def test_an_input_that_is_not_a_regular_file_says_what_it_is(option: str, name: str, said: str, kind: str,
                                                             tmp_path: Path, cnn_file: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # an existing directory, FIFO or device was reported as "file not found"
    path = _special(kind, tmp_path, name)
    model = ["--model", "cnn"] if option == "--state-dict" else ["--model", cnn_file]
    out = tmp_path / "a.npz"
    code, stdout, err = run_cli(["explain", *model, option, path, "--method", "saliency", "--out", out, "-q"],
                                capsys)
    line = assert_one_line_error(code, err, f"{said} {str(path)!r} {_IS[kind]}", ": pass ")
    assert "not found" not in line
    assert stdout == "" and not out.exists() and not out.with_suffix(".json").exists()


def test_explain_shap_on_a_one_sample_test_file_says_there_is_no_background(
        tmp_path: Path, cnn_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the only test sample is the one explained: as its own background every SHAP value was 0, exit 0
    data = image_npz(tmp_path / "one.npz", n_test=1, x_train=None, y_train=None)
    out = tmp_path / "attr.npz"
    code, _, err = run_cli(["explain", "--model", cnn_file, "--data", data, "--method", "shap_kernel",
                            "--out", out, "-q"], capsys)
    message = assert_one_line_error(code, err, "shap_kernel needs background data and there is none", "x_train")
    assert "cannot explain" not in message
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_explain_out_over_its_data_file_is_refused(tmp_path: Path, cnn_file: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = image_npz(tmp_path / "data.npz")
    before = data.read_bytes()
    code, _, err = run_cli(["explain", "--model", cnn_file, "--data", data, "--method", "saliency", "--out",
                            tmp_path / "." / "data.npz", "-q"], capsys)
    assert_one_line_error(code, err, "is the same file as --data", "pass another --out path")
    assert data.read_bytes() == before and not (tmp_path / "data.json").exists()


def test_train_out_over_its_model_file_is_refused(tmp_path: Path, cnn_file: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    before = cnn_file.read_bytes()
    link = tmp_path / "link.pt"
    link.symlink_to(cnn_file)
    code, _, err = run_cli(["train", "--model", cnn_file, "--data", "digits", "--out", link, "-q"], capsys)
    assert_one_line_error(code, err, "is the same file as --model")
    assert cnn_file.read_bytes() == before


def test_explain_out_as_a_directory_suggests_an_npz_name(tmp_path: Path, cnn_file: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["explain", "--model", cnn_file, "--method", "saliency", "--out", tmp_path], capsys)
    assert_one_line_error(code, err, repr(str(tmp_path / "attributions.npz")))


def test_xaudits_warnings_are_one_line_on_the_command_line(tmp_path: Path, cnn_file: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    data = image_npz(tmp_path / "u8.npz", x_test=(rng.random((4, 1, 8, 8)) * 255).astype(np.uint8),
                     y_test=np.arange(4) % 3)
    code, _, err = run_cli(["explain", "--model", cnn_file, "--data", data, "--method", "saliency", "--out",
                            tmp_path / "a.npz", "-q"], capsys)
    assert code == 0, err
    assert err.splitlines() == [next(line for line in err.splitlines() if line.startswith("xaudit: warning: "))]
    assert "is uint8" in err and ".py" not in err


@pytest.mark.parametrize("value", ["abc", "-5", "0", "nan", "inf"])
def test_a_bad_watts_setting_is_one_line_before_any_work(value: str, tmp_path: Path, cnn_file: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # parsed at import before: 'abc' crashed every command (even --help) with a traceback, -5 gave negative joules
    monkeypatch.setenv("XAUDIT_WATTS_PER_CORE", value)
    out = tmp_path / "a.npz"
    code, _, err = run_cli(["explain", "--model", cnn_file, "--method", "saliency", "--out", out, "-q"], capsys)
    assert_one_line_error(code, err, f"XAUDIT_WATTS_PER_CORE={value!r} is not a positive number of watts")
    assert not out.exists()


def test_the_watts_setting_scales_the_estimated_energy(monkeypatch: pytest.MonkeyPatch) -> None:
    from xaudit.explain import explain

    model, x = build_model("cnn", (1, 8, 8), 10, seed=0), torch.rand(4, 1, 8, 8)
    monkeypatch.setenv("XAUDIT_WATTS_PER_CORE", "20")
    cost = explain(model, x, method="saliency").cost
    if cost.energy_source == "estimate":
        assert cost.energy_j == pytest.approx(cost.cpu_s * 20)
    monkeypatch.setenv("XAUDIT_WATTS_PER_CORE", "-1")
    with pytest.raises(Exception, match="not a positive number of watts"):
        explain(model, x, method="saliency")


@pytest.mark.parametrize("command", ["explain", "report"])
def test_a_full_disk_is_one_line_and_leaves_no_output(command: str, tmp_path: Path, cnn_file: Path,
                                                      capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # the second of the two files fails: before, the first stayed behind (an .npz without its cost, a report
    # without report.json) and the OSError came out as a traceback with exit code 1
    import errno

    import xaudit.models._atomic as atomic

    data = image_npz(tmp_path / "d.npz", n_classes=10)
    real_fdopen, opened = atomic.os.fdopen, []

    class FullDisk:
        def __getattr__(self, name: str) -> object:
            return getattr(os, name)

        def fdopen(self, fd: int, mode: str) -> object:
            opened.append(fd)
            if len(opened) == 2:
                os.close(fd)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_fdopen(fd, mode)

    out = tmp_path / "out" / ("a.npz" if command == "explain" else "r")
    argv = (["explain", "--method", "saliency", "--out", out] if command == "explain"
            else ["report", "--methods", "saliency", "--quality", "none", "--out", out])
    monkeypatch.setattr(atomic, "os", FullDisk())
    code, _, err = run_cli([*argv, "--model", cnn_file, "--data", data, "--n-explain", "2", "-q"], capsys)
    assert_one_line_error(code, err, "No space left on device", "nothing was written")
    assert not (tmp_path / "out").exists(), list((tmp_path / "out").rglob("*"))


def test_sigterm_cleans_up_like_ctrl_c(tmp_path: Path, cnn_file: Path) -> None:
    # timeout's default signal, and a cancelled CI job's: the run's new --out directory went with no message
    import signal
    import time

    data = image_npz(tmp_path / "d.npz", n_classes=10)
    out = tmp_path / "new" / "report"
    proc = subprocess.Popen([sys.executable, "-m", "xaudit.reports", "report", "--model", str(cnn_file), "--data",
                             str(data), "--n-explain", "2", "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not out.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # --out is created before any work
    assert out.exists(), "the run never created its --out directory"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "xaudit: terminated", err
    assert not (tmp_path / "new").exists()


def test_method_names_forgive_case_and_spaces(tmp_path: Path, cnn_file: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    data = image_npz(tmp_path / "d.npz", n_classes=10)
    out = tmp_path / "a.npz"
    code, _, err = run_cli(["explain", "--method", " Saliency ", "--model", cnn_file, "--data", data,
                            "--n-explain", "2", "--out", out, "-q"], capsys)
    assert code == 0, err
    assert '"name": "saliency"' in out.with_suffix(".json").read_text()
    code, _, err = run_cli(["explain", "--method", "SHAP_KERNL", "--model", cnn_file, "--data", data,
                            "--out", out, "-q"], capsys)
    assert_one_line_error(code, err, "did you mean 'shap_kernel'")


def test_explain_refuses_a_method_the_builtin_model_cannot_take_before_training(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["explain", "--model", "gru", "--data", "digits-seq", "--method", "gradcam",
                            "--out", tmp_path / "a.npz"], capsys)
    assert_one_line_error(code, err, "gradcam does not support recurrent models")
    assert "skipped" not in err  # said once
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt")), "it trained first"


def test_a_budget_in_bytes_must_be_whole(tmp_path: Path, cnn_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["explain", "--method", "saliency", "--model", cnn_file, "--memory-budget", "1.5",
                            "--out", tmp_path / "a.npz"], capsys)
    assert_one_line_error(code, err, "'1.5' is not a whole number of bytes", "1.5MiB")


@pytest.mark.parametrize(("model", "data"), [("cnn", "digits"), ("gru", "digits-seq"), ("lstm", "digits-seq")])
def test_a_built_in_model_without_data_gets_its_own_dataset(model: str, data: str) -> None:
    # `xaudit explain --model gru` failed with "needs sequence data shaped (T, F), not (1, 8, 8)": the default
    # dataset was digits images whatever the model
    from xaudit.models import default_data
    from xaudit.reports._subject import resolve_subject

    assert default_data(model) == data
    subject = resolve_subject(model, None, epochs=1, use_cache=False)
    assert subject.dataset.name == data


def test_a_model_file_trained_on_the_users_data_needs_that_data_named(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # without --data, a model trained on the user's .npz was evaluated on the built-in digits, with no word
    # of it (a relabelled copy of digits reported 1.9% accuracy)
    data = image_npz(tmp_path / "mine.npz")
    model = tmp_path / "m.pt"
    code, _, err = run_cli(["train", "-q", "--model", "cnn", "--data", data, "--epochs", "1", "--out", model], capsys)
    assert code == 0, err
    for command in (["report", "--methods", "saliency", "--out", tmp_path / "r"],
                    ["explain", "--method", "saliency", "--out", tmp_path / "a.npz"]):
        code, _, err = run_cli([command[0], "-q", "--model", model, *command[1:]], capsys)
        assert_one_line_error(code, err, "m.pt was trained on '", "mine.npz', which is not a built-in", "--data")
    assert not (tmp_path / "r").exists() and not (tmp_path / "a.npz").exists()
    code, _, err = run_cli(["explain", "-q", "--model", model, "--data", data, "--method", "saliency",
                            "--n-explain", "2", "--out", tmp_path / "a.npz"], capsys)
    assert code == 0, err


def test_a_recurrent_model_file_recording_no_dataset_gets_the_sequence_data(tmp_path: Path) -> None:
    # a gru/lstm file without a recorded dataset fell back to digits images and failed on their shape
    from xaudit.reports._subject import resolve_subject

    path = tmp_path / "lstm.pt"
    save_model(build_model("lstm", (8, 8), 10, seed=0), path)
    assert resolve_subject(path, None).dataset.name == "digits-seq"
