"""What a user model's outputs are and what its inputs may be: probability outputs are not softmaxed twice,
NaN/Inf outputs, batch-of-one models, float64 models and data, and pickled whole models."""

from __future__ import annotations

import gc
import math
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from xaudit.explain import explain
from xaudit.explain._faithfulness import DeletionAUC, InsertionAUC
from xaudit.models import (
    UnsafeModelFileError,
    XauditError,
    build_model,
    check_inputs,
    evaluate,
    load_dataset,
    load_model,
    model_calibration,
    predict_proba,
)
from xaudit.models import _outputs
from xaudit.models._validate import model_dtype
from xaudit.reports._model_card import model_card
from xaudit.reports._subject import resolve_subject

import _output_models as user
from _cli_helpers import assert_no_report, assert_one_line_error, image_npz, read_report_json, run_cli


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def y() -> torch.Tensor:
    return torch.arange(16) % 3


def _error(model: nn.Module, x: torch.Tensor, *fragments: str) -> str:
    with pytest.raises(XauditError) as exc:
        check_inputs(model, x, what="x_test")
    message = str(exc.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ------------------------------------------------------------------------ 1. probabilities are not re-softmaxed


def test_probability_outputs_are_detected_and_used_as_they_are(x, y):
    model = user.make_softmax().eval()
    with torch.no_grad():
        own = model(x)
    assert check_inputs(model, x, y) == 3
    assert _outputs.output_kind(model, x) == "probabilities"
    torch.testing.assert_close(predict_proba(model, x), own)
    calibration = model_calibration(model, x, y)
    assert calibration.mean_confidence == pytest.approx(float(own.max(1).values.mean()), abs=1e-6)
    nll = float(-torch.log(own[torch.arange(len(y)), y]).mean())
    assert calibration.nll == pytest.approx(nll, rel=1e-5)
    assert evaluate(model, x, y)[0] == pytest.approx(nll, rel=1e-5)


def test_logit_and_log_probability_outputs_get_softmax(x, y):
    logits = user.make_logits().eval()
    log_probs = user.LogSoftmaxHead(user.make_logits()).eval()
    with torch.no_grad():
        expected = logits(x).softmax(1)
    for model in (logits, log_probs):
        assert _outputs.output_kind(model, x) == "logits"
        torch.testing.assert_close(predict_proba(model, x), expected)
        assert evaluate(model, x, y)[0] == pytest.approx(evaluate(logits, x, y)[0], rel=1e-5)


def test_output_kind_is_decided_once_per_model_and_not_kept_alive(x):
    model = user.make_softmax().eval()
    with torch.no_grad():
        probs = model(x)
    assert _outputs.note_outputs(model, probs) == "probabilities"
    # later batches do not re-decide (a batch of NaN rows, or of logits, decides nothing)
    assert _outputs.note_outputs(model, torch.randn(4, 3)) == "probabilities"
    assert _outputs.note_outputs(user.make_logits(), torch.full((2, 3), float("nan"))) == "logits"
    fresh = user.make_logits()
    assert _outputs.note_outputs(fresh, torch.full((2, 3), float("nan"))) == "logits"
    assert _outputs.note_outputs(fresh, torch.full((2, 3), 1 / 3)) == "probabilities"  # NaN rows decided nothing
    n_cached = len(_outputs._KIND)
    del model, fresh
    gc.collect()
    assert len(_outputs._KIND) < n_cached


def test_lime_and_faithfulness_read_the_same_probabilities_from_either_kind(x):
    logits = user.make_softmax().body.eval()  # the same weights, without the softmax module
    probs = user.make_softmax().eval()
    samples = x[:2]
    targets = torch.tensor([0, 2])
    lime_logits = explain(logits, samples, "lime", targets, num_samples=64, seed=0)
    lime_probs = explain(probs, samples, "lime", targets, num_samples=64, seed=0)
    torch.testing.assert_close(lime_probs.attributions, lime_logits.attributions, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(lime_probs.extras["intercept"], lime_logits.extras["intercept"], rtol=1e-4,
                               atol=1e-6)
    saliency = explain(logits, samples, "saliency", targets)
    for metric in (DeletionAUC(n_steps=8), InsertionAUC(n_steps=8)):
        on_logits = metric.compute(logits, saliency)
        on_probs = metric.compute(probs, saliency)
        assert on_probs.value == pytest.approx(on_logits.value, rel=1e-5)
        assert on_probs.curve == pytest.approx(on_logits.curve, rel=1e-5)


def test_model_card_says_what_the_outputs_are(tmp_path):
    data = image_npz(tmp_path / "d.npz")
    cases = ((user.make_softmax, "probabilities (softmax in the model)"), (user.make_logits, "logits"))
    for factory, expected in cases:
        subject = resolve_subject(factory(), data)
        assert model_card(subject, 2)["model_card"]["outputs"] == expected


def test_report_of_a_softmax_model(tmp_path, capsys):
    data = image_npz(tmp_path / "d.npz", n_test=24)
    out = tmp_path / "out"
    code, _, err = run_cli(["report", "-q", "--model", "_output_models:make_softmax", "--data", data, "--methods",
                            "saliency", "--quality", "none", "--n-explain", "2", "--out", out], capsys)
    assert code == 0, err
    report = read_report_json(out)
    x_test = torch.from_numpy(np.load(data)["x_test"])
    with torch.no_grad():
        own = user.make_softmax().eval()(x_test)
    assert report["diagnostics"]["calibration"]["mean_confidence"] == pytest.approx(
        float(own.max(1).values.mean()), abs=1e-5)
    assert report["model_card"]["outputs"] == "probabilities (softmax in the model)"
    assert "probabilities (softmax in the model)" in (out / "report.html").read_text(encoding="utf-8")


# ------------------------------------------------------------------------ 2. NaN/Inf outputs


def test_nan_outputs_are_refused_up_front(x):
    _error(user.make_nan(), x, "NaN/Inf outputs for x_test", "fix its forward")


def test_predict_proba_refuses_nan_outputs(x):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x = x.clone()
    x[5] = float("inf")
    with pytest.raises(XauditError, match="NaN/Inf outputs for 1 of 16 samples"):
        predict_proba(model, x)


def test_report_of_a_nan_model_fails_in_one_line(tmp_path, capsys):
    data = image_npz(tmp_path / "d.npz")
    out = tmp_path / "out"
    code, _, err = run_cli(["report", "-q", "--model", "_output_models:make_nan", "--data", data, "--methods",
                            "saliency", "--quality", "none", "--n-explain", "2", "--out", out], capsys)
    assert_one_line_error(code, err, "NaN/Inf outputs")
    assert_no_report(out)


# ------------------------------------------------------------------------ 3. one row per input


def test_batch_of_one_model_is_refused_up_front(x):
    _error(user.make_batch_of_one(), x, "fails on a batch of 2", "x.flatten(1)")
    _error(user.OneRow(), x, "1 output row(s) for a batch of 2")
    assert check_inputs(user.make_batch_of_one(), x[:1]) == 3  # one sample is all there is: it fits


def test_report_of_a_batch_of_one_model_fails_in_one_line(tmp_path, capsys):
    data = image_npz(tmp_path / "d.npz")
    out = tmp_path / "out"
    code, _, err = run_cli(["report", "-q", "--model", "_output_models:make_batch_of_one", "--data", data,
                            "--methods", "saliency", "--quality", "none", "--n-explain", "2", "--out", out], capsys)
    assert_one_line_error(code, err, "batch of 2")
    assert_no_report(out)


# ------------------------------------------------------------------------ 4. dtypes


def test_model_dtype():
    assert model_dtype(user.make_float64()) == torch.float64
    assert model_dtype(user.make_logits()) == torch.float32
    assert model_dtype(nn.Flatten()) == torch.float32  # nothing to go by


def test_float64_data_is_loaded_at_the_models_dtype(tmp_path):
    rng = np.random.default_rng(0)
    x_test = rng.standard_normal((6, 1, 8, 8))  # float64 values float32 cannot hold exactly
    data = image_npz(tmp_path / "d.npz", x_test=x_test, y_test=np.arange(6) % 3)
    double = load_dataset(data, dtype=torch.float64)
    assert double.x_test.dtype == double.x_train.dtype == torch.float64
    assert np.array_equal(double.x_test.numpy(), x_test)
    assert load_dataset(data).x_test.dtype == torch.float32  # the default is unchanged
    assert load_dataset("digits", dtype=torch.float64).x_test.dtype == torch.float64
    assert double.with_dtype(torch.float32).x_test.dtype == torch.float32
    with pytest.raises(XauditError, match="NaN/Inf in torch.float16"):
        load_dataset(image_npz(tmp_path / "big.npz", x_test=np.full((12, 1, 8, 8), 1e6)), dtype=torch.float16)


def test_dtype_mismatch_is_not_called_a_shape_problem(x):
    message = _error(user.make_float64(), x, "torch.float64", "torch.float32", "the model raised RuntimeError")
    assert "shape" not in message
    assert check_inputs(user.make_float64(), x.double()) == 3


def test_other_model_errors_say_what_the_model_raised(x):
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("this model is broken")

    message = _error(Broken(), x, "the model raised ValueError: this model is broken")
    assert "doesn't fit" not in message
    # a real shape problem still reads as one
    _error(user.make_logits(), torch.rand(4, 3, 8, 8), "input shape (3, 8, 8) doesn't fit the model")


def test_report_of_a_float64_model_on_float64_data(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = image_npz(tmp_path / "d.npz", x_train=rng.random((40, 1, 8, 8)), x_test=rng.random((12, 1, 8, 8)))
    out = tmp_path / "out"
    code, _, err = run_cli(["report", "-q", "--model", "_output_models:make_float64", "--data", data, "--methods",
                            "saliency", "--quality", "none", "--n-explain", "2", "--out", out], capsys)
    assert code == 0, err
    assert read_report_json(out)["metrics"]["test_accuracy"] is not None


# ------------------------------------------------------------------------ 5. pickled whole models


@pytest.fixture
def pickled_cnn(tmp_path: Path) -> tuple[Path, nn.Module]:
    model = build_model("cnn", (1, 8, 8), 3, hidden=4).eval()
    path = tmp_path / "model.pkl"
    with path.open("wb") as f:
        pickle.dump(model, f)
    return path, model


def test_plain_pickle_is_untrusted_not_corrupt(pickled_cnn):
    path, model = pickled_cnn
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UnsafeModelFileError) as exc:
            load_model(path)
    assert not caught, [str(w.message) for w in caught]
    message = str(exc.value)
    assert "\n" not in message and "plain Python pickle" in message and "trust_pickle=True" in message
    assert "state_dict" in message and "torch.jit.save" in message and "corrupt" not in message
    loaded = load_model(path, trust_pickle=True)
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(loaded.model(x), model(x))


def test_torch_save_with_a_newer_pickle_protocol_is_untrusted_not_corrupt(tmp_path):
    model = build_model("cnn", (1, 8, 8), 3, hidden=4).eval()
    path = tmp_path / "model.pt"
    torch.save(model, path, pickle_protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UnsafeModelFileError, match="trust_pickle=True"):
            load_model(path)
    assert not caught, [str(w.message) for w in caught]
    assert isinstance(load_model(path, trust_pickle=True).model, type(model))


@pytest.mark.parametrize("trust", [False, True])
def test_damaged_pickles_are_corrupt(pickled_cnn, trust):
    path, _ = pickled_cnn
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(XauditError) as exc:
        load_model(path, trust_pickle=trust)
    assert not isinstance(exc.value, UnsafeModelFileError)
    assert "corrupt pickle" in str(exc.value) and "damaged or truncated" in str(exc.value)


def test_plain_pickle_as_state_dict_says_how_to_save_weights(tmp_path):
    path = tmp_path / "weights.pkl"
    with path.open("wb") as f:
        pickle.dump(user.make_logits().state_dict(), f)
    with pytest.raises(XauditError, match=r"plain Python pickle .*torch\.save\(model\.state_dict\(\), path\)"):
        load_model("_output_models:make_logits", state_dict=path)


def test_cli_stderr_is_one_line_for_a_pickled_model(pickled_cnn, tmp_path):
    path, _ = pickled_cnn
    data = image_npz(tmp_path / "d.npz")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "xaudit.reports", "report", "--model", str(path), "--data", str(data),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert_one_line_error(done.returncode, done.stderr, "--trust-pickle", "plain Python pickle")
    assert_no_report(out)


def test_training_a_softmax_model_uses_the_log_of_its_probabilities():
    # cross-entropy on probabilities is a second softmax: its loss is bounded near log(K) and learning stalls
    from xaudit.models._train import classification_loss

    probs = torch.tensor([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]])
    y = torch.tensor([0, 1])

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return probs

    loss = classification_loss(Fixed(), probs, y)
    assert float(loss) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2, rel=1e-6)
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    assert float(classification_loss(user.make_logits(), logits, y)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-6)


# ------------------------------------------------------------------------ no gradient path from the input


def test_a_model_that_detaches_its_input_runs_forward_only_methods_and_refuses_gradient_ones(tmp_path, capsys):
    # the FLOP profile always took a gradient, so occlusion and lime failed with torch's "element 0 of tensors
    # does not require grad", and a report's quality metrics died with a traceback
    from xaudit.explain import explain, flop_profile

    model = user.make_detached().eval()
    x = torch.rand(4, 1, 8, 8)
    p = flop_profile(model, x[:1])
    assert p.backward == 0 and not p.input_gradient and p.forward > 0
    for method in ("occlusion", "shap_kernel", "lime"):
        assert explain(model, x, method, target=0, background=x).attributions.abs().sum() > 0
    for method in ("saliency", "gradcam"):  # Grad-CAM's layer has no gradient either, its parameters frozen
        with pytest.raises(XauditError, match=f"{method} needs the gradient of the model's output with respect to "
                                              "its input.*choose a method that only runs the model forward"):
            explain(model, x, method, target=0)

    data = image_npz(tmp_path / "d.npz", n_test=24)
    out = tmp_path / "out"
    code, _, err = run_cli(["report", "-q", "--model", "_output_models:make_detached", "--data", data, "--methods",
                            "saliency,occlusion", "--quality", "fast", "--n-explain", "2", "--out", out], capsys)
    assert code == 0, err
    methods = {m["name"]: m for m in read_report_json(out)["methods"]}
    assert methods["occlusion"]["cost"]["backward_evals_per_sample"] == 0 and not methods["occlusion"]["failed"]
    assert "needs the gradient of the model's output" in methods["saliency"]["reason"]
    code, _, err = run_cli(["explain", "--model", "_output_models:make_detached", "--data", data, "--method",
                            "integrated_gradients", "--out", tmp_path / "a.npz"], capsys)
    assert code == 2 and err.count("needs the gradient") == 1, err  # progress lines, the reason said once
    code, _, err = run_cli(["explain", "-q", "--model", "_output_models:make_detached", "--data", data, "--method",
                            "integrated_gradients", "--out", tmp_path / "a.npz"], capsys)
    assert_one_line_error(code, err, "integrated_gradients needs the gradient", "occlusion, shap_kernel")
    assert not (tmp_path / "a.npz").exists()
