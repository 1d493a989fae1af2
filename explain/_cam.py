"""Grad-CAM for 2-D CNNs on images and 1-D CNNs on sequences, on the common contract.

The map is captum's ``LayerGradCam`` (same layer output, same averaging, same ReLU; equal to it in
tests/test_explain_gradcam.py), computed with one backward pass seeded by the sum of the target logits:
captum seeds it with one scalar per row (``torch.unbind``), which cost 1.2-1.3× the whole call on the digits
CNN (tests/benchmarks/bench_explain.py).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from xaudit.models._errors import XauditError
from xaudit.models._walk import per_generation

from ._base import CallContext, Explainer, input_kind
from ._compat import library
from ._flops import FlopProfile, flop_profile

_CONVS = (nn.Conv1d, nn.Conv2d)


class GradCAM(Explainer):
    """A conv layer's feature maps weighted by their spatially averaged target gradients, ReLU'd and
    upsampled to the input (Selvaraju et al. 2017, eqs. 1–2).

    ``layer`` names the layer (as in ``model.named_modules()``; the module itself, captum's convention, is taken
    too and stored by its name); by default the last Conv1d/Conv2d. The
    map is broadcast over image channels; for a 1-D CNN over N×T×F sequences it is laid over the axis the
    convolution runs along (time when the first Conv1d takes the F features as channels) and broadcast
    over the other.
    """

    uses_module_hooks = True

    name = "gradcam"
    paper = "Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra 2017"
    supports_recurrent = False
    recurrent_reason = ("Grad-CAM weights the feature maps of a convolutional layer; a recurrent model "
                        "carries its evidence through a hidden state over time, which has no such map")

    def __init__(self, model: nn.Module, *, layer: str | nn.Module | None = None, relu: bool = True) -> None:
        super().__init__(model)
        self.layer = self._layer_name(layer)
        self.relu = bool(relu)
        if layer is not None:
            self._layer()  # a misspelt layer fails here, not at the first call

    def _layer_name(self, layer: str | nn.Module | None) -> str | None:
        """``layer`` as a name in ``model.named_modules()`` (a module object is looked up by identity)."""
        if layer is None or isinstance(layer, str):
            return layer
        if isinstance(layer, nn.Module):
            name = next((n for n, m in self.model.named_modules() if m is layer), None)
            if name is None:
                raise XauditError(f"gradcam's layer is a {type(layer).__name__} that is not part of this model: pass "
                                  f"the name of one of its conv layers ({', '.join(self._conv_names()) or 'none'})")
            return name
        raise XauditError(f"gradcam's layer must be a layer name (as in model.named_modules()) or the layer module, "
                          f"got {type(layer).__name__}: pass e.g. layer={(self._conv_names() or ['conv'])[-1]!r}")

    def get_params(self) -> dict[str, Any]:
        convs = self._conv_names()
        layer = self.layer if self.layer is not None else (convs[-1] if convs else None)
        return {"layer": layer, "relu": self.relu}

    def _conv_names(self) -> list[str]:
        return [name for name, m in self.model.named_modules() if isinstance(m, _CONVS)]

    def _layer(self) -> tuple[str, nn.Module]:
        """The layer's name and module, looked up on the user's model (captum hooks it there)."""
        convs = self._conv_names()
        name = self.layer if self.layer is not None else (convs[-1] if convs else None)
        if name is None:
            raise XauditError("gradcam needs a convolutional layer (nn.Conv1d/nn.Conv2d) and the model has none")
        try:
            return name, self.model.get_submodule(name)
        except AttributeError:
            raise XauditError(f"the model has no layer {name!r}: choose one of its conv layers "
                              f"({', '.join(convs) or 'none'})") from None

    def unsupported_reason(self, sample_shape: Sequence[int]) -> str | None:
        reason = super().unsupported_reason(sample_shape)
        if reason:
            return reason
        if self.layer is None and not self._conv_names():
            return "gradcam needs a convolutional layer (nn.Conv1d/nn.Conv2d) and the model has none"
        name, module = self._layer()
        if input_kind(sample_shape) == "image" and isinstance(module, nn.Conv1d):
            return f"gradcam cannot lay the 1-D feature map of {name!r} over image inputs"
        return None

    def _conv_over_time(self, steps: int, features: int) -> bool:
        """Whether a 1-D CNN convolves over the time steps (features as channels, the usual layout)."""
        first = next((m for m in self.model.modules() if isinstance(m, nn.Conv1d)), None)
        return first is None or first.in_channels == features or first.in_channels != steps

    def _prepare(self, sample: torch.Tensor) -> None:
        library("captum.attr")  # the upsampling of the map

    def _flop_profile(self, sample: torch.Tensor) -> FlopProfile:
        # the backward pass stops at the layer's output: charged as a backward to the input it was about twice
        # the FLOPs that ran on a small CNN (only the head's product runs back to the last conv)
        name, layer = self._layer()
        full = flop_profile(self.model, sample)
        backward = per_generation(_BACKWARD_FLOPS, self.model, (tuple(sample.shape), sample.dtype, name),
                                  lambda: _backward_to_layer_flops(self.model, layer, sample))
        return dataclasses.replace(full, backward=backward)

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   ctx: CallContext) -> torch.Tensor:
        name, layer = self._layer()
        # the counting wrapper is the forward function (evaluations counted); the hook goes on the layer
        cam = layer_grad_cam(model, layer, inputs, targets, relu=self.relu, name=name)
        return _to_input_shape(cam.detach(), tuple(inputs.shape), name, self._conv_over_time)


_BACKWARD_FLOPS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[int, float]]] = weakref.WeakKeyDictionary()


def _backward_to_layer_flops(model: nn.Module, layer: nn.Module, sample: torch.Tensor) -> float:
    """FLOPs of the target logit's gradient with respect to ``layer``'s output, for one sample."""
    kept: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _a, out: kept.append(out))
    try:
        with torch.enable_grad():
            logits = model(sample[:1].detach().clone().requires_grad_(True))
    finally:
        handle.remove()
    if not kept or not isinstance(kept[-1], torch.Tensor) or not kept[-1].requires_grad:
        return 0.0
    counter = FlopCounterMode(display=False)
    with counter:
        torch.autograd.grad(logits[0, 0], kept[-1])
    return float(counter.get_total_flops())


def layer_grad_cam(model: nn.Module, layer: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *,
                   relu: bool = True, name: str = "") -> torch.Tensor:
    """N×1×(spatial) Grad-CAM of ``layer``'s output: channel weights = spatial mean of the target logit's
    gradient, map = ReLU(Σ_c weight_c · A_c) (Selvaraju et al. 2017, eqs. 1-2; captum's LayerGradCam).
    ``name`` is the layer's, for errors."""
    outputs: list[torch.Tensor] = []

    def keep(_module: nn.Module, _args: Any, out: Any) -> Any:
        # the model continues on a copy: an in-place op after the layer (Conv → nn.ReLU(inplace=True), VGG's
        # layout) would otherwise overwrite the feature maps kept here, and the map would be of ReLU(A)
        outputs.append(out)
        return out.clone() if isinstance(out, torch.Tensor) else out

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(inputs)
    finally:
        handle.remove()
    if not outputs or not isinstance(outputs[-1], torch.Tensor):
        raise XauditError("gradcam's layer gave no tensor output in the forward pass: pick a conv layer the "
                          "model calls, with layer=...")
    activation = outputs[-1]  # a layer called twice: its last call, as captum keeps it
    if activation.dim() not in (3, 4):
        # said here, with the layer's own output shape: after the channel sum the map's shape names no layer
        which = repr(name) if name else "the layer"
        raise XauditError(f"gradcam needs feature maps (channels × positions) from its layer, but {which} outputs "
                          f"shape {tuple(activation.shape[1:])} per sample: pick a conv layer with layer=...")
    rows = torch.arange(len(logits), device=logits.device)
    (grad,) = torch.autograd.grad(logits[rows, targets].sum(), activation)
    weights = grad.mean(dim=tuple(range(2, grad.dim())), keepdim=True)
    cam = (weights * activation).sum(dim=1, keepdim=True)
    return torch.relu(cam) if relu else cam


def _to_input_shape(cam: torch.Tensor, shape: tuple[int, ...], layer: str, over_time: Any) -> torch.Tensor:
    """Upsample an N×1×(spatial) layer map to the input's spatial size and broadcast it to ``shape`` (a view:
    the caller copies it into the result once)."""
    LayerAttribution = library("captum.attr").LayerAttribution  # on first use: captum.attr is slow to import

    n, *sample = shape
    if cam.dim() == 4:  # a 2-D map: over H×W of an image, or over T×F of a sequence
        up = LayerAttribution.interpolate(cam, tuple(sample[-2:]), interpolate_mode="bilinear")
        return up.expand(n, *sample) if len(sample) == 3 else up[:, 0]
    if cam.dim() == 3 and len(sample) == 2:
        steps, features = sample
        if over_time(steps, features):
            up = LayerAttribution.interpolate(cam, (steps,), interpolate_mode="linear")
            return up[:, 0, :, None].expand(n, steps, features)
        up = LayerAttribution.interpolate(cam, (features,), interpolate_mode="linear")
        return up.expand(n, steps, features)
    raise XauditError(f"gradcam cannot lay the {cam.dim() - 2}-D map of layer {layer!r} (over positions "
                      f"{tuple(cam.shape[2:])}) onto inputs of shape {tuple(sample)}: pick a conv layer with layer=...")
