"""1-D CNNs on channels-first (N×C×L) data: read as time steps × channels, explained over the length.

xaudit reads 3-D data as N×T×F. A model that hands its input straight to an nn.Conv1d takes N×C×L, so its
data's second axis is channels: without the adapter, LIME's time windows, occlusion and the shuffle test ran
over the channels and the maps were drawn transposed, silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import _output_models as user
from _cli_helpers import read_report_json, run_cli
from xaudit.models import build_model
from xaudit.models._layout import CHANNELS_FIRST, TIME_FEATURES, ChannelsFirst, takes_channels_first
from xaudit.reports._subject import describe_subject, resolve_subject


def ncl_npz(path: Path, n_train: int = 30, n_test: int = 12) -> Path:
    g = torch.Generator().manual_seed(0)
    np.savez(path, x_train=torch.randn(n_train, 3, 20, generator=g).numpy(), y_train=np.arange(n_train) % 3,
             x_test=torch.randn(n_test, 3, 20, generator=g).numpy(), y_test=np.arange(n_test) % 3)
    return path


def test_a_model_that_feeds_its_input_to_a_conv1d_takes_channels_first() -> None:
    model = user.make_conv1d_ncl().train()
    x = torch.randn(4, 3, 20)
    assert takes_channels_first(model, x)
    assert model.training and not any(m._forward_pre_hooks for m in model.modules())  # left as it was
    # the built-in CNN transposes N×T×F itself; a GRU has no Conv1d
    assert not takes_channels_first(build_model("cnn", (8, 8), 10, seed=0).eval(), torch.randn(4, 8, 8))
    assert not takes_channels_first(build_model("gru", (8, 8), 10, seed=0).eval(), torch.randn(4, 8, 8))
    assert not takes_channels_first(nn.Sequential(nn.Flatten(), nn.Linear(60, 3)), x)


def test_the_subject_holds_the_data_transposed_and_the_model_adapted(tmp_path: Path) -> None:
    data = ncl_npz(tmp_path / "d.npz")
    raw = user.make_conv1d_ncl().eval()
    subject = resolve_subject(raw, data)
    assert subject.input_layout == CHANNELS_FIRST and isinstance(subject.model, ChannelsFirst)
    assert subject.dataset.input_shape == (20, 3)  # time steps × channels
    x_file = torch.from_numpy(np.load(data)["x_test"])
    torch.testing.assert_close(subject.dataset.x_test, x_file.transpose(1, 2))
    with torch.no_grad():  # the adapter computes exactly what the model computes on the user's layout
        torch.testing.assert_close(subject.model(subject.dataset.x_test), raw(x_file), rtol=0, atol=0)
    described = describe_subject(subject)
    assert described["model"]["architecture"] == "Conv1dNCL"
    assert described["data"]["input_layout"] == CHANNELS_FIRST
    images = resolve_subject(user.TinyCNN(10), None)  # digits images
    assert images.input_layout is None and not isinstance(images.model, ChannelsFirst)


def test_explain_writes_attributions_in_the_layout_of_the_data_file(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    data = ncl_npz(tmp_path / "d.npz")
    out = tmp_path / "attr.npz"
    code, _, err = run_cli(["explain", "-q", "--model", "_output_models:make_conv1d_ncl", "--data", data,
                            "--method", "saliency", "--out", out], capsys)
    assert code == 0, err
    saved = np.load(out)
    x_file = torch.from_numpy(np.load(data)["x_test"])[torch.from_numpy(saved["test_indices"])]
    assert saved["attributions"].shape == saved["inputs"].shape == tuple(x_file.shape)
    np.testing.assert_array_equal(saved["inputs"], x_file.numpy())
    model = user.make_conv1d_ncl().eval()
    xg = x_file.clone().requires_grad_(True)
    out_rows = model(xg)
    picked = out_rows[torch.arange(len(xg)), torch.from_numpy(saved["targets"])]
    (grad,) = torch.autograd.grad(picked.sum(), xg)
    np.testing.assert_allclose(saved["attributions"], grad.abs().numpy(), rtol=1e-5, atol=1e-7)


def test_the_report_says_how_it_read_the_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ncl_npz(tmp_path / "d.npz")
    out = tmp_path / "report"
    code, _, err = run_cli(["report", "-q", "--model", "_output_models:make_conv1d_ncl", "--data", data,
                            "--methods", "saliency,lime", "--quality", "none", "--n-explain", "2", "--out", out],
                           capsys)
    assert code == 0, err
    report = read_report_json(out)
    assert report["data"]["input_layout"] == CHANNELS_FIRST and report["data"]["input_shape"] == [20, 3]
    assert "read here as time steps × channels" in report["model_card"]["input_layout"]
    assert "read here as time steps × channels" in (out / "report.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("arch", ["cnn", "gru"])
def test_time_feature_data_is_read_as_it_is(arch: str) -> None:
    subject = resolve_subject(build_model(arch, (8, 8), 10, seed=0), "digits-seq")
    assert subject.input_layout == TIME_FEATURES and not isinstance(subject.model, ChannelsFirst)
    assert subject.dataset.input_shape == (8, 8)
