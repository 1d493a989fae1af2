"""User models on the command line (a ``module:callable`` factory, a TorchScript file, a state dict, a user
.npz), and the ``train`` and ``explain`` subcommands."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from xaudit.models import XauditError, build_model, count_parameters, load_model, save_model

from _cli_helpers import assert_report_contract, assert_self_contained, image_npz, read_report_json, run_cli

FAST = "saliency,integrated_gradients"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XAUDIT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module with a ``build()`` factory of a small digits classifier."""
    package = tmp_path / "usermodels"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "usermodels.nets:build"


def _report(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    code, _, err = run_cli(["report", *argv, "--methods", FAST, "--n-explain", "2", "--out", out, "-q"], capsys)
    assert code == 0, err
    assert_self_contained((out / "report.html").read_text(encoding="utf-8"))
    report = read_report_json(out)
    assert_report_contract(report)
    return report


def test_factory_model(factory_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _report(["--model", factory_module, "--data", "digits"], tmp_path / "out", capsys)
    assert report["model"]["n_params"] == 4 * 9 + 4 + 256 * 10 + 10
    assert report["model"]["kind"] == "cnn" and report["model"]["train_config"] is None


def test_factory_model_with_state_dict(factory_module: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    model = importlib.import_module("usermodels.nets").build()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.01)
    weights = tmp_path / "weights.pt"
    torch.save(model.state_dict(), weights)
    report = _report(["--model", factory_module, "--state-dict", weights, "--data", "digits"], tmp_path / "out",
                     capsys)
    assert report["metrics"]["test_accuracy"] >= 0.0


# explain/_memory.row_memory (and the hook-compatibility check of the hook-based methods) register forward
# hooks, which ScriptModules refuse; reported to explain/. Not strict, so the fix there turns this green.
def test_torchscript_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = build_model("cnn", (8, 8), 10, seed=0).eval()
    path = tmp_path / "scripted.pt"
    torch.jit.trace(model, torch.rand(2, 8, 8)).save(str(path))
    report = _report(["--model", path, "--data", "digits-seq"], tmp_path / "out", capsys)
    assert report["model"]["n_params"] == count_parameters(model)
    assert report["examples"]["layout"] == "matrix"


def test_user_npz_class_names_are_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = "<script>alert(1)</script>"
    data = image_npz(tmp_path / "evil.npz", class_names=np.array([evil, "b", "c"]))
    out = tmp_path / "out"
    report = _report(["--model", "cnn", "--data", data, "--epochs", "1"], out, capsys)
    assert report["model"]["class_names"][0] == evil  # JSON keeps the real name
    html = (out / "report.html").read_text(encoding="utf-8")
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_train_then_report_on_the_saved_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model_file = tmp_path / "models" / "cnn.pt"
    code, _, err = run_cli(["train", "--model", "cnn", "--data", "digits", "--epochs", "1", "--out", model_file],
                           capsys)
    assert code == 0, err
    assert "saved" in err
    loaded = load_model(model_file)
    assert len(loaded.history) == 1
    # --data omitted: the dataset the model file records
    report = _report(["--model", model_file], tmp_path / "out", capsys)
    assert report["data"]["name"] == "digits"
    assert len(report["training"]["history"]) == 1


def test_train_a_factory_model(factory_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trained.pt"
    code, _, err = run_cli(["train", "--model", factory_module, "--data", "digits", "--epochs", "1", "--out", out,
                            "-q"], capsys)
    assert code == 0, err
    # not a built-in architecture: the file holds the weights, which load back with --state-dict
    weights = torch.load(out, weights_only=True)
    assert set(weights) == {"0.weight", "0.bias", "3.weight", "3.bias"}
    report = _report(["--model", factory_module, "--state-dict", out, "--data", "digits"], tmp_path / "rep", capsys)
    assert report["model"]["n_params"] == 4 * 9 + 4 + 256 * 10 + 10


def test_explain_writes_npz_and_cost_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "attr.npz"
    code, stdout, err = run_cli(["explain", "--model", "cnn", "--data", "digits", "--epochs", "1",
                                 "--method", "integrated_gradients", "--n-explain", "5", "--out", out, "-q"], capsys)
    assert code == 0, err
    with np.load(out) as npz:
        assert npz["attributions"].shape == npz["inputs"].shape == (5, 1, 8, 8)
        assert npz["targets"].shape == npz["labels"].shape == npz["test_indices"].shape == (5,)
        assert np.isfinite(npz["attributions"]).all()
        # IG's completeness gap per sample: the attributions' sum against f(x) - f(baseline) is small
        assert npz["convergence_delta"].shape == (5,) and np.abs(npz["convergence_delta"]).max() < 0.1
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary == json.loads(stdout)
    assert summary["name"] == "integrated_gradients" and summary["n_samples"] == 5
    assert summary["cost"]["forward_evals_per_sample"] > 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["attr.json", "attr.npz"]


def test_explain_unsupported_method_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xaudit.explain import available_methods, get_explainer

    model = build_model("gru", (8, 8), 10)
    unsupported = [m for m in available_methods() if get_explainer(m)(model).unsupported_reason((8, 8))]
    if not unsupported:
        pytest.skip("every registered method supports recurrent models")
    model_file = tmp_path / "m.pt"
    save_model(model, model_file, dataset="digits-seq")
    code, _, err = run_cli(["explain", "--model", model_file, "--data", "digits-seq", "--method", unsupported[0],
                            "--out", tmp_path / "a.npz", "-q"], capsys)
    assert code == 2 and err.startswith("xaudit: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "a.npz").exists()


def _explain_fails(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], *fragments: str) -> str:
    out = tmp_path / "a.npz"
    code, stdout, err = run_cli(["explain", *argv, "--data", "digits", "--method", "saliency", "--n-explain", "2",
                                 "--out", out, "-q"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("xaudit: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert stdout == "" and not out.exists() and not out.with_suffix(".json").exists()
    return lines[0]


def test_a_state_dict_with_a_wrongly_shaped_tensor_names_it_and_both_shapes(
        factory_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the error said "missing [], unexpected []" and dropped torch's reason (the size mismatch)
    import importlib

    weights = importlib.import_module("usermodels.nets").build().state_dict()
    weights["3.weight"] = torch.zeros(10, 100)
    path = tmp_path / "wrong.pt"
    torch.save(weights, path)
    line = _explain_fails(["--model", factory_module, "--state-dict", path], tmp_path, capsys,
                          "doesn't match the model", "3.weight has shape [10, 100] in the file but [10, 256] in the model")
    assert "missing []" not in line and "unexpected []" not in line
    del weights["3.weight"]
    weights["extra"] = torch.zeros(1)
    torch.save(weights, path)
    _explain_fails(["--model", factory_module, "--state-dict", path], tmp_path, capsys,
                   "keys missing from the file: '3.weight'", "keys the model lacks: 'extra'")


def test_a_torchscript_file_as_state_dict_is_told_to_pass_it_as_the_model(
        factory_module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # it was "neither a torch.save nor a TorchScript file", and a "model file"
    import importlib

    model = importlib.import_module("usermodels.nets").build().eval()
    path = tmp_path / "scripted.pt"
    torch.jit.trace(model, torch.rand(2, 1, 8, 8)).save(str(path))
    line = _explain_fails(["--model", factory_module, "--state-dict", path], tmp_path, capsys,
                          f"state_dict file {str(path)!r} is a TorchScript model, not a state dict",
                          f"--model {path}")
    assert "neither" not in line and "model file" not in line


@pytest.mark.parametrize("content", [b"this is not a weights file\x00\x01", b"PK\x03\x04truncated zip"])
def test_an_unreadable_state_dict_is_called_a_state_dict(content: bytes, factory_module: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(content)
    line = _explain_fails(["--model", factory_module, "--state-dict", path], tmp_path, capsys,
                          f"state_dict file {str(path)!r} is not a readable torch.save file",
                          "torch.save(model.state_dict(), path)")
    assert "model file" not in line and "TorchScript" not in line


def test_a_state_dict_archive_missing_its_tensors_is_one_line(factory_module: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # torch.load's RuntimeError on a damaged archive went out as a traceback
    import zipfile

    good = tmp_path / "good.pt"
    torch.save({"0.weight": torch.zeros(4, 1, 3, 3)}, good)
    path = tmp_path / "w.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for name in src.namelist():
            if "/data/" not in name:
                dst.writestr(name, src.read(name))
    _explain_fails(["--model", factory_module, "--state-dict", path], tmp_path, capsys,
                   f"state_dict file {str(path)!r} is not a readable torch.save file (torch.load failed",
                   "torch.save(model.state_dict(), path)")


def test_training_a_saved_model_further_keeps_its_recipe_and_records_the_earlier_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `xaudit train --model gru.pt` fine-tuned with the generic default recipe (lr 0.001, no augmentation) and
    # the new file kept only that run, so the card said "1 of 1 epochs, lr 0.001" for weights trained longer
    from xaudit.models import reference_config

    first, more = tmp_path / "gru.pt", tmp_path / "gru_more.pt"
    assert run_cli(["train", "-q", "--model", "gru", "--epochs", "2", "--out", first], capsys)[0] == 0
    assert run_cli(["train", "-q", "--model", first, "--epochs", "1", "--out", more], capsys)[0] == 0
    recipe = reference_config("gru", "digits-seq")
    loaded = load_model(more)
    assert loaded.train_config is not None and len(loaded.history) == 1 and loaded.train_config.epochs == 1
    assert (loaded.train_config.lr, loaded.train_config.augment) == (recipe.lr, recipe.augment)
    (earlier,) = loaded.warm_start
    assert earlier.startswith(f"{first}: 2 epochs; adam, learning rate {recipe.lr}")
    card = _report(["--model", more], tmp_path / "out", capsys)["model_card"]["training"]
    assert card["warm_started_from"] == [earlier]
    assert "continued from weights trained before: " + earlier in (tmp_path / "out" / "report.html").read_text(
        encoding="utf-8")


def test_training_further_records_where_the_weights_came_from_and_the_dropout_they_trained_with(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # a --state-dict start recorded nothing (the card said "1 of 1 epochs" again), a model file with
    # --state-dict recorded the file's run instead of the weights', and the recipe's dropout 0.5 was recorded
    # for a net built with dropout 0
    weights = tmp_path / "w.pt"
    net = build_model("cnn", (1, 8, 8), 10, seed=0)
    torch.save(net.state_dict(), weights)
    out = tmp_path / "from_weights.pt"
    assert run_cli(["train", "-q", "--model", "cnn", "--state-dict", weights, "--epochs", "1", "--out", out],
                   capsys)[0] == 0
    loaded = load_model(out)
    assert loaded.warm_start == (f"built-in cnn with weights from {weights}: recipe not recorded",)
    assert loaded.train_config is not None and loaded.train_config.dropout == 0.0
    # a model file given other weights: the record names those weights, not the file's own run
    first = tmp_path / "first.pt"
    assert run_cli(["train", "-q", "--model", "cnn", "--epochs", "1", "--out", first], capsys)[0] == 0
    again = tmp_path / "again.pt"
    assert run_cli(["train", "-q", "--model", first, "--state-dict", weights, "--epochs", "1", "--out", again],
                   capsys)[0] == 0
    assert load_model(again).warm_start == (f"{first} with weights from {weights}: recipe not recorded",)
    # the record itself: a list of strings, or the file is refused as damaged
    with pytest.raises(XauditError, match="warm_start must be a sequence of strings"):
        save_model(net, tmp_path / "bad.pt", warm_start="one run")  # type: ignore[arg-type]
    payload = torch.load(first, weights_only=True)
    payload["warm_start"] = "old.pt: 3 epochs"
    torch.save(payload, tmp_path / "corrupt.pt")
    with pytest.raises(XauditError, match="invalid metadata.*warm_start must be a list of strings"):
        load_model(tmp_path / "corrupt.pt")
