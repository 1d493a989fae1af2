"""Helpers shared by the CLI and report tests: running ``xaudit`` in-process, checking the one-line error
contract, and writing small user files (.npz data, model files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from xaudit.reports._cli import main

REPORT_FILES = ("report.html", "report.json")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``xaudit argv`` in this process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed before
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """Exit code 2, exactly one stderr line ``xaudit: error: ...`` containing every fragment, no traceback."""
    lines = err.strip().splitlines()
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("xaudit: error: "), lines[0]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def assert_no_report(out_dir: Path) -> None:
    for name in REPORT_FILES:
        assert not (out_dir / name).exists(), f"{name} was written despite the error"


def image_npz(path: Path, *, n_train: int = 40, n_test: int = 12, n_classes: int = 3, seed: int = 0,
              **overrides: Any) -> Path:
    """A small 1×8×8 image dataset in the user .npz layout; ``overrides`` replace or add arrays."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {
        "x_train": rng.random((n_train, 1, 8, 8), dtype=np.float32),
        "y_train": np.arange(n_train) % n_classes,
        "x_test": rng.random((n_test, 1, 8, 8), dtype=np.float32),
        "y_test": np.arange(n_test) % n_classes,
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def read_report_json(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / "report.json").read_text(encoding="utf-8"))


def assert_self_contained(html: str) -> None:
    """No web address, script file, stylesheet link, CSS import or remote url() anywhere in the page; at most
    one inline script (sortable tables, method pages), without attributes."""
    lowered = html.lower()
    for forbidden in ("http://", "https://", "<link", "@import", "url(", "//cdn", "<iframe"):
        assert forbidden not in lowered, f"report.html contains {forbidden!r}"
    assert lowered.count("<script") == lowered.count("<script>") <= 1, "a script with attributes, or several"
    assert "data:image/png;base64," in html, "no embedded figure"


def assert_report_contract(report: dict[str, Any]) -> None:
    """Every key of the report.json contract with the right type."""
    assert isinstance(report["xaudit_version"], str) and report["xaudit_version"]
    model = report["model"]
    assert isinstance(model["name"], str)
    assert model["kind"] in ("cnn", "rnn")
    assert isinstance(model["n_params"], int) and model["n_params"] > 0
    assert isinstance(model["input_shape"], list) and all(isinstance(s, int) for s in model["input_shape"])
    assert isinstance(model["n_classes"], int)
    data = report["data"]
    assert isinstance(data["name"], str)
    assert isinstance(data["n_train"], int) and isinstance(data["n_test"], int)
    metrics = report["metrics"]
    for key in ("train_accuracy", "test_accuracy", "generalization_gap"):
        assert isinstance(metrics[key], float), key
    assert metrics["generalization_gap"] == pytest.approx(metrics["train_accuracy"] - metrics["test_accuracy"])
    assert isinstance(report["methods"], list) and report["methods"]
    for method in report["methods"]:
        assert isinstance(method["name"], str)
        assert method["family"] in ("saliency", "shap", "lime")
        assert isinstance(method["quality"], dict)
        if not method["supported"]:
            assert isinstance(method["reason"], str) and method["reason"]
            assert method["cost"] is None
            continue
        cost = method["cost"]
        for key in ("wall_s_per_sample", "cpu_s_per_sample", "forward_evals_per_sample",
                    "backward_evals_per_sample"):
            assert isinstance(cost[key], float), (method["name"], key)
        assert isinstance(cost["peak_rss_bytes"], int)
