"""A ``--memory-budget`` too small for a selected method is a usage error of the whole command: one line naming
the method and the memory it needs, exit code 2, nothing written, before any training or explaining. Only a
method the model does not support (its capability flags) is shown as unsupported, or skipped by an audit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from xaudit.explain import explain
from xaudit.models import XauditError, build_model, save_model
from xaudit.reports import build_report
from xaudit.reports._build import explain_methods

from _cli_helpers import assert_no_report, assert_one_line_error, image_npz, read_report_json, run_cli

_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XAUDIT_CACHE_DIR", str(tmp_path / "cache"))


def _trained_nothing(tmp_path: Path) -> bool:
    cache = tmp_path / "cache"
    return not cache.exists() or not any(cache.rglob("*.pt"))


@pytest.fixture
def cnn_file(tmp_path: Path) -> Path:
    """An untrained built-in CNN for 1×8×8 images saved as an xaudit model file (loading it trains nothing)."""
    path = tmp_path / "cnn.pt"
    save_model(build_model("cnn", (1, 8, 8), 10, seed=0), path, dataset="digits")
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return image_npz(tmp_path / "d.npz")


def _need_bytes(message: str) -> float:
    """The amount in "it needs about 597.2 KiB"."""
    match = re.search(r"needs about ([0-9.]+) (B|KiB|MiB|GiB)", message)
    assert match, message
    return float(match.group(1)) * _UNITS[match.group(2)]


def _need(model: torch.nn.Module, method: str) -> float:
    """What ``method`` needs for one sample, from the explainer's own error."""
    with pytest.raises(XauditError) as info:
        explain(model, torch.rand(1, 1, 8, 8), method=method, memory_budget=1)
    return _need_bytes(str(info.value))


def _between(low_method: str, high_method: str) -> str:
    """A budget in bytes that ``low_method`` fits in and ``high_method`` does not (on the fixture's CNN)."""
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    low, high = _need(model, low_method), _need(model, high_method)
    assert low < high, (low_method, low, high_method, high)
    return str(int((low + high) / 2))


def test_report_with_a_budget_too_small_is_a_usage_error(tmp_path: Path, cnn_file: Path, data: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _, err = run_cli(["report", "-q", "--model", cnn_file, "--data", data, "--methods", "saliency,occlusion",
                            "--quality", "none", "--n-explain", "2", "--memory-budget", "1KiB", "--out", out], capsys)
    assert_one_line_error(code, err, "memory budget 1.0 KiB is too small", "saliency", "needs about",
                          "raise the budget (--memory-budget")
    assert_no_report(out)
    assert not out.exists(), "a refused run left its --out directory behind"


def test_the_error_names_the_method_that_needs_the_most(tmp_path: Path, cnn_file: Path, data: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    methods = ("saliency", "deeplift", "occlusion")
    needs = {m: _need(model, m) for m in methods}
    worst = max(needs, key=needs.__getitem__)
    code, _, err = run_cli(["report", "-q", "--model", cnn_file, "--data", data, "--methods", ",".join(methods),
                            "--quality", "none", "--n-explain", "2", "--memory-budget", "1KiB",
                            "--out", tmp_path / "out"], capsys)
    line = assert_one_line_error(code, err, f"with {worst}:")
    assert _need_bytes(line) == pytest.approx(needs[worst])
    assert not (tmp_path / "out").exists()


def test_a_budget_that_excludes_one_method_fails_the_run_not_just_that_method(
        tmp_path: Path, cnn_file: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    budget = _between("occlusion", "saliency")  # occlusion fits, saliency does not
    out = tmp_path / "out"
    code, _, err = run_cli(["report", "-q", "--model", cnn_file, "--data", data, "--methods", "occlusion,saliency",
                            "--quality", "none", "--n-explain", "2", "--memory-budget", budget, "--out", out], capsys)
    line = assert_one_line_error(code, err, "with saliency", "needs about")
    assert "occlusion" not in line
    assert not out.exists()


def test_audit_does_not_skip_a_method_the_budget_excludes(tmp_path: Path, cnn_file: Path, data: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('name = "cost gate"\n[[check]]\nvalue = "methods[*].cost.wall_s_per_sample"\nmax = 0.5\n')
    budget = _between("occlusion", "saliency")
    junit, out = tmp_path / "audit.xml", tmp_path / "out"
    code, stdout, err = run_cli(["audit", "-q", "--model", cnn_file, "--data", data, "--policy", policy,
                                 "--methods", "saliency,integrated_gradients,occlusion", "--quality", "none",
                                 "--n-explain", "2", "--memory-budget", budget, "--junit", junit, "--out", out],
                                capsys)
    # the method needing the most is named first, the others the budget excludes after it
    assert_one_line_error(code, err, "too small for even one sample with", "saliency", "needs about")
    assert "SKIP" not in stdout and "passed" not in stdout
    assert not junit.exists() and not out.exists()


@pytest.mark.parametrize("command", ["report", "explain", "audit"])
def test_a_built_in_model_is_not_trained_when_the_budget_is_too_small(
        command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / ("out.npz" if command == "explain" else "out")
    argv = {"report": ["report", "--methods", "saliency", "--quality", "none"],
            "explain": ["explain", "--method", "saliency"],
            "audit": ["audit", "--methods", "saliency", "--quality", "none"]}[command]
    code, _, err = run_cli([*argv, "-q", "--model", "cnn", "--data", "digits", "--epochs", "1", "--n-explain", "2",
                            "--memory-budget", "1KiB", "--out", out], capsys)
    assert_one_line_error(code, err, "too small for even one sample with saliency", "needs about")
    assert _trained_nothing(tmp_path), "it trained before checking the memory budget"
    assert not out.exists() and not out.with_suffix(".json").exists()


def _gru_and_sequences(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "gru.pt"
    save_model(build_model("gru", (8, 8), 10, seed=0), model, dataset="digits-seq")
    rng = np.random.default_rng(0)
    data = tmp_path / "seq.npz"
    np.savez(data, x_train=rng.random((20, 8, 8), dtype=np.float32), y_train=np.arange(20) % 3,
             x_test=rng.random((6, 8, 8), dtype=np.float32), y_test=np.arange(6) % 3)
    return model, data


def test_a_method_the_model_does_not_support_stays_unsupported(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """gradcam refuses RNNs by its capability flags: that is a reason in the report, and the budget is only
    checked for the methods that can run (an error about gradcam's memory would be wrong)."""
    model, data = _gru_and_sequences(tmp_path)
    argv = ["report", "-q", "--model", model, "--data", data, "--methods", "gradcam,saliency", "--quality", "none",
            "--n-explain", "2"]
    code, _, err = run_cli([*argv, "--out", tmp_path / "ok"], capsys)
    assert code == 0, err
    methods = {m["name"]: m for m in read_report_json(tmp_path / "ok")["methods"]}
    assert methods["saliency"]["supported"]
    assert not methods["gradcam"]["supported"] and "memory" not in methods["gradcam"]["reason"]

    code, _, err = run_cli([*argv, "--memory-budget", "1KiB", "--out", tmp_path / "small"], capsys)
    line = assert_one_line_error(code, err, "with saliency", "needs about")
    assert "gradcam" not in line
    assert not (tmp_path / "small").exists()


def test_build_report_raises_on_a_budget_too_small(data: Path) -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    with pytest.raises(XauditError, match="too small for even one sample with saliency"):
        build_report(model, data, methods="saliency", n_explain=2, quality="none", memory_budget="1KiB")


def test_explain_methods_never_turns_the_budget_into_a_reason() -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(XauditError, match="needs about"):
        explain_methods(model, x, torch.zeros(2, dtype=torch.long), x, ["saliency"], seed=0, memory_budget=1024)


@pytest.mark.parametrize("value", ["0.5", "0", "-5", "0.0001KiB"])
def test_a_budget_under_one_byte_is_one_consistent_line_with_the_fix(value: str, tmp_path: Path, cnn_file: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # 0.5 was "must be positive" (it is), 0 had no fix, -5 was "cannot read memory size"
    out = tmp_path / "a.npz"
    code, stdout, err = run_cli(["explain", "--model", cnn_file, "--method", "saliency", "--out", out, "-q",
                                 "--memory-budget", value], capsys)
    assert_one_line_error(code, err, f"memory budget must be at least one byte, got {value!r}",
                          "write it like 512MiB, 2GiB")
    assert stdout == "" and not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize("value", [0, -5, 0.5, "0.5"])
def test_the_api_says_the_same_for_a_budget_under_one_byte(value: object) -> None:
    from xaudit.explain import parse_bytes

    with pytest.raises(XauditError, match=r"memory budget must be at least one byte, got '.*': write it like 512MiB"):
        parse_bytes(value)  # type: ignore[arg-type]
