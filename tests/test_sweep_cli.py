"""``xaudit sweep``: writes sweep.html and sweep.json; every bad input is one line and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _cli_helpers import assert_one_line_error, assert_self_contained, run_cli
from xaudit.reports._cli import main

QUICK = ["--data", "digits", "--n-train", "150", "--n-test", "60", "--epochs", "1", "--backend", "sequential"]


def run_sweep_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``xaudit sweep argv`` in this process; returns (exit code, stdout, stderr)."""
    return run_cli(["sweep", *argv], capsys)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "run"
    code = main(["sweep", *QUICK, "--grid", "weight_decay=0,1e-3", "--drift", "saliency", "--n-drift", "4",
                 "--out", str(out), "-q"])
    assert code == 0
    return out


def test_sweep_writes_a_self_contained_page_and_json(sweep_dir: Path) -> None:
    data = json.loads((sweep_dir / "sweep.json").read_text())
    assert data["model"] == "cnn" and data["grid"] == {"weight_decay": [0.0, 0.001]}
    assert len(data["points"]) == 2 and len(data["trials"]) == 2
    assert data["recommendation"]["chosen"] in (0, 1)
    assert data["drift"]["methods"] == ["saliency"] and len(data["drift"]["rows"]) == 2
    reference = next(r for r in data["drift"]["rows"] if r["point_index"] == data["drift"]["reference"])
    assert reference["rank_correlation"] == pytest.approx(1.0)
    html = (sweep_dir / "sweep.html").read_text()
    assert_self_contained(html)
    assert "Recommendation" in html and "weight_decay=0.001" in html and "Explanation drift" in html


def test_resume_finishes_without_training(sweep_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_sweep_cli([*QUICK, "--grid", "weight_decay=0,1e-3", "--drift", "none", "--out", sweep_dir,
                                    "--resume"], capsys)
    assert code == 0, err
    assert "2 reused" in err and "recommended #" in out
    assert json.loads((sweep_dir / "sweep.json").read_text())["computed"] == []


@pytest.mark.parametrize(("argv", "fragments"), [
    (["--grid", "wieght_decay=0,1e-4"], ["unknown sweep knob 'wieght_decay'", "did you mean 'weight_decay'"]),
    ([], ["grid is empty"]),
    (["--grid", "weight_decay=0,-0.1"], ["invalid value '-0.1'", "weight_decay must be ≥ 0"]),
    (["--grid", "augment=none,rotate"], ["unknown augmentation 'rotate'", "did you mean 'rotation'"]),
    (["--grid", "dropout=0", "--address", "auto"], ["--address", "--backend ray"]),
    (["--grid", "dropout=0", "--drift", "salincy"], ["did you mean 'saliency'"]),
    # refused only once the run directory held a manifest, which then blocked the corrected command
    (["--model", "gru", "--grid", "dropout=0"], ["model 'gru' needs sequence data", "digits-seq"]),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], fragments: list[str], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _, err = run_sweep_cli([*QUICK, *argv, "--out", out], capsys)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists(), "a refused sweep must not create its run directory"


def test_n_drift_below_2_is_refused_before_any_training(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import xaudit.reports._cli_sweep as cli_sweep

    def no_training(*args, **kwargs):
        raise AssertionError("the sweep trained before refusing --n-drift")

    monkeypatch.setattr(cli_sweep, "run_sweep", no_training)
    out = tmp_path / "out"
    code, _, err = run_sweep_cli([*QUICK, "--grid", "weight_decay=0,1e-3", "--n-drift", "1", "--out", out], capsys)
    assert_one_line_error(code, err, "--n-drift must be at least 2", "got 1", "--drift none")
    assert not out.exists()


def test_unwritable_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    code, _, err = run_sweep_cli([*QUICK, "--grid", "dropout=0", "--out", blocker / "run"], capsys)
    assert_one_line_error(code, err, "is a file, not a directory")


def test_resume_with_a_different_grid_is_refused(sweep_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (sweep_dir / "sweep.json").read_bytes()
    code, _, err = run_sweep_cli([*QUICK, "--grid", "weight_decay=0,1e-2", "--out", sweep_dir, "--resume"], capsys)
    assert_one_line_error(code, err, "cannot resume", "different grid", "weight_decay=0.0,0.001 there",
                          "weight_decay=0.0,0.01 here")
    code, _, err = run_sweep_cli([*QUICK, "--grid", "weight_decay=0,1e-3", "--out", sweep_dir], capsys)
    assert_one_line_error(code, err, "already holds a sweep", "--resume")
    assert (sweep_dir / "sweep.json").read_bytes() == before


def test_read_only_weights_from_a_backend_make_no_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray hands results back read-only from its object store; torch.from_numpy warned "The given NumPy array is
    # not writable" (with --backend ray -q, a UserWarning from xaudit's own code on stderr). torch warns once per
    # process, so the arrays themselves are checked too: a tensor must not share a read-only buffer
    import warnings

    import torch

    from xaudit.models import TrainConfig, run_sweep
    from xaudit.models._backends import SequentialBackend
    from xaudit.models._rundir import read_state_dict

    class ReadOnlyResults(SequentialBackend):
        name = "read-only"

        def run(self, fn, tasks, shared, on_result):  # type: ignore[no-untyped-def]
            def frozen(i, outcome):  # type: ignore[no-untyped-def]
                trial, arrays = outcome
                for array in (arrays or {}).values():
                    array.flags.writeable = False
                on_result(i, (trial, arrays))

            super().run(fn, tasks, shared, frozen)

    from_numpy = torch.from_numpy

    def writable_only(array):  # type: ignore[no-untyped-def]
        assert array.flags.writeable, "a tensor was made over a read-only numpy array"
        return from_numpy(array)

    monkeypatch.setattr(torch, "from_numpy", writable_only)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run_sweep("cnn", "digits", ["lr=0.001"], n_train=60, n_test=30, backend=ReadOnlyResults(),
                           run_dir=tmp_path / "run", base=TrainConfig(epochs=1))
    (trial,) = result.trials
    assert read_state_dict(tmp_path / "run", trial.key), "the trial's weights were not recorded"


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_an_interrupted_sweep_says_how_to_resume(signal_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from xaudit.reports import _cli, _cli_sweep

    stop = KeyboardInterrupt if signal_name == "SIGINT" else _cli._Terminated

    def interrupted(*args: object, **kwargs: object) -> None:
        raise stop

    monkeypatch.setattr(_cli_sweep, "run_sweep", interrupted)
    code, _, err = run_cli(["sweep", "--model", "cnn", "--data", "digits", "--grid", "weight_decay=0,1e-3",
                            "--drift", "none", "--out", tmp_path / "sw"], capsys)
    assert code == (130 if signal_name == "SIGINT" else 143)
    assert "with --resume to finish it" in err
    assert err.strip().splitlines()[-1] == ("xaudit: interrupted" if signal_name == "SIGINT" else "xaudit: terminated")


@pytest.mark.parametrize(("model", "data"), [("cnn", "digits"), ("gru", "digits-seq"), ("lstm", "digits-seq")])
def test_a_sweep_without_data_uses_the_models_own_dataset(model: str, data: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # `xaudit sweep --model gru` used digits images and failed: the recurrent models read sequences
    from xaudit.reports import _cli_sweep

    seen = []

    def record(model_name: str, data_name: str, *args: object, **kwargs: object) -> None:
        seen.append((model_name, data_name))
        raise KeyboardInterrupt  # stop there: what was asked for is all this test needs

    monkeypatch.setattr(_cli_sweep, "run_sweep", record)
    run_cli(["sweep", "--model", model, "--grid", "weight_decay=0,1e-3", "--drift", "none",
             "--out", tmp_path / "sw"], capsys)
    assert seen == [(model, data)]
