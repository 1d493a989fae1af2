"""Grad-CAM's own single-backward computation equals captum's LayerGradCam."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from xaudit.explain import explain
from xaudit.explain._cam import layer_grad_cam


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 8 * 8, 5)).eval()


@pytest.mark.parametrize("relu", [True, False])
def test_layer_grad_cam_equals_captum(relu: bool) -> None:
    model = _cnn()
    x = torch.rand(7, 1, 8, 8, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    ours = layer_grad_cam(model, model[2], x, targets, relu=relu)
    theirs = LayerGradCam(model, model[2]).attribute(x, target=targets, relu_attributions=relu)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert not model[2]._forward_hooks  # the hook is gone


def test_gradcam_explanation_is_captums_map_upsampled() -> None:
    model = _cnn()
    x = torch.rand(5, 1, 8, 8)
    targets = torch.tensor([4, 3, 2, 1, 0])
    ours = explain(model, x, method="gradcam", target=targets).attributions
    cam = LayerGradCam(model, model[2]).attribute(x.clone().requires_grad_(True), target=targets, relu_attributions=True)
    theirs = LayerAttribution.interpolate(cam, (8, 8), interpolate_mode="bilinear").expand_as(x)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-6)


def test_an_in_place_relu_after_the_layer_leaves_the_map_as_captums() -> None:
    # VGG's layout: Conv → nn.ReLU(inplace=True); the ReLU must not overwrite the feature maps the map is made of
    model = _cnn()
    model[3] = nn.ReLU(inplace=True)
    x = torch.rand(5, 1, 8, 8)
    targets = torch.tensor([4, 3, 2, 1, 0])
    ours = explain(model, x, method="gradcam", target=targets).attributions
    model[3] = nn.ReLU()  # the same weights out of place, for captum
    cam = LayerGradCam(model, model[2]).attribute(x.clone().requires_grad_(True), target=targets, relu_attributions=True)
    theirs = LayerAttribution.interpolate(cam, (8, 8), interpolate_mode="bilinear").expand_as(x)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-6)
