"""``xaudit report`` end to end on the built-in data, help and version, and ``python -m xaudit.reports``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from xaudit.models import cached_train, count_parameters, evaluate, load_dataset, reference_config
from xaudit.reports._cli import build_parser

from _cli_helpers import assert_report_contract, assert_self_contained, read_report_json, run_cli


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # one cache per module: the tests below share one trained model instead of each training their own
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _isolated_cache(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XAUDIT_CACHE_DIR", str(cache_dir))


def test_report_on_digits_writes_the_contract(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out is ./xaudit-report
    code, _, err = run_cli(["report", "--epochs", "1", "--n-explain", "2"], capsys)
    assert code == 0, err
    out = tmp_path / "xaudit-report"
    assert "epoch 1/1" in err and "wrote" in err  # progress on stderr

    html = (out / "report.html").read_text(encoding="utf-8")
    assert_self_contained(html)
    assert 20_000 < len(html) < 5_000_000
    report = read_report_json(out)
    assert_report_contract(report)
    assert report["model"]["name"] == "cnn" and report["model"]["kind"] == "cnn"
    assert (report["data"]["name"], report["data"]["n_train"], report["data"]["n_test"]) == ("digits", 1437, 360)
    assert report["model"]["input_shape"] == [1, 8, 8] and report["model"]["n_classes"] == 10
    from xaudit.explain import available_methods
    assert [m["name"] for m in report["methods"]] == list(available_methods())

    # the same cached model, evaluated independently of the report
    dataset = load_dataset("digits")
    config = dataclasses.replace(reference_config("cnn", "digits"), epochs=1, seed=0)
    model = cached_train("cnn", dataset, config, cache_dir=cache_dir).model
    assert report["model"]["n_params"] == count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert report["metrics"]["test_accuracy"] == pytest.approx(evaluate(model, dataset.x_test, dataset.y_test)[1])
    assert report["metrics"]["train_accuracy"] == pytest.approx(evaluate(model, dataset.x_train, dataset.y_train)[1])
    # the overfitting section: the gap of the same model, with its verdict, and calibration
    gap = report["diagnostics"]["gap"]
    assert gap["gap"] == pytest.approx(report["metrics"]["train_accuracy"] - report["metrics"]["test_accuracy"])
    assert gap["verdict"] and 0 <= report["diagnostics"]["calibration"]["ece"] <= 1
    assert 'id="overfitting"' in html


def test_report_gru_on_mnist1d_draws_time_steps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gru"
    code, _, err = run_cli(["report", "--model", "gru", "--data", "mnist1d", "--epochs", "1", "--n-explain", "2",
                            "--methods", "saliency,integrated_gradients,occlusion", "--out", out, "-q"], capsys)
    assert code == 0, err
    assert err == ""  # -q: no progress
    report = read_report_json(out)
    assert_report_contract(report)
    assert report["model"]["kind"] == "rnn" and report["model"]["input_shape"] == [40, 1]
    assert report["data"]["name"] == "mnist1d" and report["examples"]["layout"] == "series"
    html = (out / "report.html").read_text(encoding="utf-8")
    assert_self_contained(html)
    assert "strip behind it is the attribution of each time step" in html


@pytest.mark.parametrize("command", [[], ["report"], ["train"], ["explain"]])
def test_help_exits_zero(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli([*command, "--help"], capsys)
    assert code == 0
    assert "usage: xaudit" in out
    if command:
        for option in ("--model", "--data", "--out", "--seed", "--device", "--epochs", "--trust-pickle"):
            assert option in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from xaudit.reports._runtime import xaudit_version

    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"xaudit {xaudit_version()}"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # one line like every other usage error, listing the commands (argparse's usage line came first)
    code, _, err = run_cli([], capsys)
    assert code == 2 and err.splitlines() == [
        "xaudit: error: give a command: report, train, explain, sweep or audit (see xaudit --help)"]


def test_parser_lists_every_registered_method() -> None:
    from xaudit.explain import available_methods

    help_text = build_parser()._subparsers._group_actions[0].choices["explain"].format_help()  # type: ignore[union-attr]
    for name in available_methods():
        assert name in help_text


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "xaudit.reports", "report", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "--n-explain" in result.stdout
