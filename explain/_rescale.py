"""DeepLift's rescale rule computed without module hooks, for models whose nonlinearities are elementwise.

captum's DeepLift and shap's DeepExplainer put each input and its reference through the model together
(2N rows), keep every activation module's input and output with forward hooks, and rewrite the module's
gradient in a backward hook. On the small digits CNN that was 1.5–2× the time of the 2N evaluations
themselves, and 2.7× for shap's per-sample loop (``tests/benchmarks/bench_explain.py``).

Here each rule module of the private hook-safe copy computes its output through :class:`_Rescale`, an
autograd function whose backward multiplies the incoming gradient by Δy/Δx = (f(x) − f(x₀)) / (x − x₀),
the rescale multiplier (Shrikumar, Greenside & Kundaje 2017, sec. 3.3), where x₀ and f(x₀) are the module's
input and output on the reference, recorded by one forward pass of the reference alone. Where |x − x₀| is
below ``eps`` the multiplier falls back to the local derivative, as both libraries do. Linear modules
(convolutions, linear layers, pooling by averaging, batch norm in eval mode, dropout in eval mode) keep
their own gradient, which is what the libraries' passthrough rules give.

So the reference is evaluated once per call instead of once per sample, and the backward pass covers the
N input rows only: one forward and one backward per sample. On the benchmark's digits CNN that made deeplift
0.25-0.44× captum's time and shap_deep 0.04-0.05× shap's. The rule's own elementwise passes (about ten per
activation, against one for a ReLU's plain backward) remain: 1.2-1.3× a plain forward+backward at 32×32 and
1.5-1.8× at 8×8, where an 8-16-channel 3×3 convolution does little arithmetic per activation. Both libraries'
values are reproduced:

- captum's DeepLift (eps 1e-10) multiplies the gradient of the input rows by (x − x₀); its fallback is the
  derivative at x;
- shap's DeepExplainer (eps 1e-6) takes the gradient of the *reference* rows, whose fallback is the
  derivative at x₀, and averages gradient × (x − x₀) over the references.

Max-pooling and softmax mix elements, so their rules need the whole window; models with them keep going
through the libraries (``rescale_ready`` says which path a model takes).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from xaudit.models._errors import XauditError
from xaudit.models._walk import modules_of

from ._compat import ACTIVATION_MODULES

#: Elementwise activations with a rescale rule in both captum's DeepLift and shap's DeepExplainer.
RESCALE_MODULES: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Softplus)
#: shap's ``nonlinear_1d`` also covers these two.
SHAP_RESCALE_MODULES: tuple[type[nn.Module], ...] = (*RESCALE_MODULES, nn.SELU, nn.GELU)


def rescale_ready(model: nn.Module, modules: tuple[type[nn.Module], ...]) -> bool:
    """Whether every activation module of ``model`` is an elementwise one the native rule covers."""
    return all(isinstance(m, modules) for m in modules_of(model) if isinstance(m, ACTIVATION_MODULES))


def _local_gradient(module: nn.Module, grad: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """``grad`` times the activation's local derivative at ``point`` (broadcast against ``grad``): what the
    module's own backward pass would give."""
    if type(module) is nn.ReLU:  # torch's relu backward: zero at and below 0
        if point.shape == grad.shape:
            return torch.ops.aten.threshold_backward(grad, point, 0)
        return grad * (point > 0).to(grad.dtype)  # at the references: a small tensor, broadcast
    with torch.enable_grad():
        p = point.detach().expand_as(grad).requires_grad_(True)
        (local,) = torch.autograd.grad(type(module).forward(module, p), p, grad)
    return local


class _Rescale(torch.autograd.Function):
    """y = f(x) forward; backward: grad · (y − y₀) / (x − x₀), or grad · f′ where |x − x₀| < eps (captum
    multiplies before dividing, shap divides first; each library's order is kept).

    Rows of x are ordered (sample, reference): x viewed as n × G × … lines up with the G references' x₀.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor, module: nn.Module, eps: float,
                at_reference: bool) -> torch.Tensor:
        y = type(module).forward(module, x)
        ctx.save_for_backward(x, y)
        ctx.reference = (x0, y0)
        ctx.module, ctx.eps, ctx.at_reference = module, eps, at_reference
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # Float arithmetic only, mostly in place: on CPU, torch.where and comparisons or any() producing or
        # reading bool tensors took 5-20× the time of a multiply of the same size (the rule was 1.6-1.9× a
        # plain backward pass with them). The mask is a float tensor of 0.0 and 1.0 here.
        x, y = ctx.saved_tensors
        x0, y0 = ctx.reference
        grouped = (-1, x0.shape[0], *x.shape[1:])
        xv, yv = x.view(grouped), y.view(grouped)
        g = grad.view(grouped)
        dx = xv - x0
        out = yv - y0
        # each library's order of operations, so float32 rounding matches theirs
        if ctx.at_reference:
            out.div_(dx).mul_(g)
        else:
            out.mul_(g).div_(dx)
        small = dx.abs_().lt_(ctx.eps)  # 1.0 where |Δx| < eps
        if bool(small.max() > 0):  # there: out + small·(local − out), exact as small is 0.0 or 1.0
            out.nan_to_num_(0.0, 0.0, 0.0)  # 0/0 where Δx = 0
            local = _local_gradient(ctx.module, g, x0 if ctx.at_reference else xv)
            out.addcmul_(small, local.sub_(out))
        return out.view(x.shape), None, None, None, None, None


class RescaleRule:
    """The rule's state for one model copy: each module's reference inputs and outputs, and the mode.

    A module called several times in one forward pass (one ``nn.ReLU`` applied twice, as in ResNet's basic
    block) records one reference per call, in call order, and its k-th call on the inputs pairs with the
    k-th call on the reference: the same control flow runs both. Hook-based rules keep one input and output
    per module, so captum and shap get such modules wrong and xaudit's library path refuses them.
    """

    def __init__(self, eps: float, at_reference: bool) -> None:
        self.eps, self.at_reference = eps, at_reference
        self.references: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._calls: dict[nn.Module, int] = {}
        self._recording = False

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Forward passes in this block record the reference activations (run them under no_grad)."""
        self.references = {}
        self._recording = True
        try:
            yield
        finally:
            self._recording = False

    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self._recording:
            y = type(module).forward(module, x)
            self.references.setdefault(module, []).append((x.detach(), y.detach()))
            return y
        recorded = self.references.get(module)
        if not recorded:
            raise RuntimeError(f"no reference activation recorded for {type(module).__name__}: run the "
                               "reference through the model inside recording() first")
        call = self._calls.get(module, 0)
        self._calls[module] = call + 1
        x0, y0 = recorded[call % len(recorded)]  # every forward pass calls the module len(recorded) times
        if x.shape[1:] != x0.shape[1:] or x.shape[0] % x0.shape[0]:
            # rows must line up with the reference rows: an activation over a sequence-first (T×N×…) tensor
            # would pair the wrong values (captum's and shap's hooks split such tensors wrongly too)
            raise XauditError(
                f"the rescale rule pairs each row of an activation's input with the reference's, but "
                f"{type(module).__name__} got shape {tuple(x.shape)} where the reference gave {tuple(x0.shape)}: "
                "keep the batch as the first dimension of every activation's input (batch_first)")
        return _Rescale.apply(x, x0, y0, module, self.eps, self.at_reference)


@contextlib.contextmanager
def rescale_rule(model: nn.Module, modules: tuple[type[nn.Module], ...], *, eps: float,
                 at_reference: bool) -> Iterator[RescaleRule]:
    """Route every ``modules`` instance of ``model`` (a private hook-safe copy) through the rule for the block.

    The modules' ``forward`` is overridden on the instances and the override removed afterwards, even on
    error, so the copy is left as it was (it is cached and shared with other calls).
    """
    rule = RescaleRule(eps, at_reference)
    routed = [m for m in model.modules() if isinstance(m, modules)]
    try:
        for module in routed:
            module.forward = functools.partial(rule, module)
        yield rule
    finally:
        for module in routed:
            module.__dict__.pop("forward", None)
