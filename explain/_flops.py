"""FLOPs of one model evaluation, from ``torch.utils.flop_counter.FlopCounterMode`` plus analytic counts.

``FlopCounterMode`` counts matrix products and convolutions (2 FLOPs per multiply-add). It has no formula for
the fused recurrent kernels: oneDNN's ``aten.mkldnn_rnn_layer`` (a float32 or bfloat16 ``nn.LSTM`` on CPU) and
cuDNN's ``aten._cudnn_rnn`` (``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` on CUDA); ``nn.GRU`` and ``nn.RNN`` on CPU
decompose into ``aten.mm`` and are counted. We give the counter a formula for each fused kernel, in its own
convention, read off the kernel's arguments, so every call is counted wherever it happens (inside TorchScript,
a subclass, a keyword call) and only when it runs: each time step of each sequence multiplies the input by
``W_ih``, the hidden state by ``W_hh`` (and an LSTM's projection by ``W_hr``), so the forward pass is
``2 · rows · Σ |W|`` over the 2-D weights, ``rows`` being the time steps of all sequences. That equals what the
counter finds for the decomposed GRU and RNN, and for an LSTM in float64. Explanation methods differentiate
with respect to the inputs only (never the weights), so the backward pass is measured that way; a fused
kernel's backward is its forward less the first step's hidden-to-hidden product of each sequence (h₀ is taken
as a constant; an h₀ computed from the input is charged that one step short, and a layer that reads the
input only through h₀ is charged its input products as well), as the counter finds for the
decomposed layers, and it is charged only when the gradient runs through the layer. CPU attention
(``F.scaled_dot_product_attention``, ``nn.MultiheadAttention`` without weights, transformer layers) runs as a
kernel the counter has no formula for in this torch; it is counted with torch's own formula for the other
attention kernels. The analytic counts are named in the source, by the recurrent module that ran them.
A profile is one sample's, cached per model generation and input shape: a model whose work depends on the
values of its input (packing by lengths read from the padding, say) is charged that sample's count for every
sample.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from xaudit.models._errors import XauditError
from xaudit.models._walk import per_generation


@dataclass(frozen=True)
class FlopProfile:
    """FLOPs of one sample's forward and backward pass and where the numbers come from (``analytic_layers``:
    the recurrent layers counted by our formulas for fused kernels rather than by the counter's own)."""

    forward: float
    backward: float
    analytic_layers: tuple[str, ...] = ()
    #: whether the target score has a gradient path from the input (False when the model's forward detaches
    #: its input or runs it under ``torch.no_grad()``: gradient methods cannot explain it)
    input_gradient: bool = True

    @property
    def source(self) -> str:
        text = "FlopCounterMode"
        if self.analytic_layers:
            text += " + analytic (" + ", ".join(self.analytic_layers) + ")"
        return text


#: Gate count per ``nn.RNNBase.mode``.
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def rnn_forward_flops(rnn: nn.RNNBase, seq_len: int) -> float:
    """Analytic forward FLOPs of one sample through ``rnn`` (an ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN``) over
    ``seq_len`` steps, matrix products only, in ``FlopCounterMode``'s convention."""
    gates = _GATES[rnn.mode]
    dirs = 2 if rnn.bidirectional else 1
    hidden = rnn.hidden_size
    proj = rnn.proj_size if rnn.proj_size > 0 else hidden
    total = 0.0
    in_size = rnn.input_size
    for _ in range(rnn.num_layers):
        per_step = 2 * gates * hidden * (in_size + proj)
        if rnn.proj_size > 0:
            per_step += 2 * hidden * proj
        total += dirs * seq_len * per_step
        in_size = proj * dirs
    return float(total)


def rnn_backward_flops(rnn: nn.RNNBase, seq_len: int) -> float:
    """Analytic input-gradient backward FLOPs of one sample through ``rnn``: the forward's products, less the
    first step's hidden-to-hidden product in each layer and direction (its h₀ is a constant)."""
    if seq_len < 1:
        return 0.0
    dirs = 2 if rnn.bidirectional else 1
    proj = rnn.proj_size if rnn.proj_size > 0 else rnn.hidden_size
    first_step = rnn.num_layers * dirs * 2 * _GATES[rnn.mode] * rnn.hidden_size * proj
    return rnn_forward_flops(rnn, seq_len) - first_step


#: The LSTM-only names of the analytic counts (kept: they were public before GRU and RNN were added).
lstm_forward_flops = rnn_forward_flops
lstm_backward_flops = rnn_backward_flops


def _attention_formulas() -> dict:
    """torch's attention FLOP formulas for the CPU flash kernel, which FlopCounterMode has none for here."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    forward_op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward_op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward_op is None or not hasattr(fc, "sdpa_flop_count"):
        return {}
    mapping = {}
    if forward_op not in fc.flop_registry:  # keyed by op packet, as FlopCounterMode looks them up
        def forward(query: tuple, key: tuple, value: tuple, *args: object, **kwargs: object) -> int:
            return int(fc.sdpa_flop_count(query, key, value))

        mapping[forward_op] = forward
    if backward_op is not None and backward_op not in fc.flop_registry:
        def backward(grad_out: tuple, query: tuple, key: tuple, value: tuple, *args: object, **kwargs: object) -> int:
            return int(fc.sdpa_backward_flop_count(grad_out, query, key, value))

        mapping[backward_op] = backward
    return mapping


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[int, FlopProfile]]] = weakref.WeakKeyDictionary()


def flop_profile(model: nn.Module, sample: torch.Tensor, target: int = 0) -> FlopProfile:
    """Measure forward and input-gradient backward FLOPs for ONE sample (``sample`` has batch size 1).

    The model must already be in the mode it will be explained in (eval); the result is cached per model
    generation and input shape. Gradients are taken with ``torch.autograd.grad`` so no parameter's ``.grad`` changes.
    A recurrent model on CUDA is measured with cuDNN off, as explanations run it (cuDNN has no RNN backward in
    eval mode); the count is the same either way, since the analytic formula stands in for a fused kernel.
    """
    def measure() -> FlopProfile:
        from ._model_call import needs_cudnn_rnn_workaround

        if needs_cudnn_rnn_workaround(model, sample.device):
            with torch.backends.cudnn.flags(enabled=False):
                return _measure_flops(model, sample, target)
        return _measure_flops(model, sample, target)

    return per_generation(_CACHE, model, (tuple(sample.shape), sample.dtype, sample.device), measure)


#: cuDNN's and oneDNN's recurrent modes (the same numbering), for labels.
_KERNEL_MODES = {0: "RNN", 1: "RNN", 2: "LSTM", 3: "GRU"}


def _rows(input_shape: tuple, hx_shape: tuple | None) -> tuple[int, int]:
    """(time steps of all sequences, sequences) of a fused recurrent kernel's input: (T, N, I), (N, T, I) or
    packed (Σ lengths, I); the sequences are the hidden state's batch."""
    sequences = int(hx_shape[-2]) if hx_shape is not None and len(hx_shape) >= 2 else 1
    return math.prod(input_shape[:-1]), sequences


def _rnn_formulas(fired: Callable[[int], None]) -> dict:
    """FLOP formulas for the fused recurrent kernels the counter has none for; each forward call reports its
    mode to ``fired`` (for the source's label)."""
    aten = torch.ops.aten
    mapping: dict = {}

    onednn = getattr(aten, "mkldnn_rnn_layer", None)
    onednn_backward = getattr(aten, "mkldnn_rnn_layer_backward", None)
    if onednn is not None:  # one layer and direction per call: (input, W_ih, W_hh, b_ih, b_hh, hx, cx, ..., mode)
        def onednn_forward(input: tuple, w_ih: tuple, w_hh: tuple, b_ih: tuple, b_hh: tuple, hx: tuple,
                           cx: tuple, reverse: bool, batch_sizes: list, mode: int, *args: object,
                           **kwargs: object) -> int:
            rows, _ = _rows(input, hx)
            fired(mode)
            return 2 * rows * (math.prod(w_ih) + math.prod(w_hh))

        mapping[onednn] = onednn_forward
    if onednn_backward is not None:
        def onednn_grad(input: tuple, w_ih: tuple, w_hh: tuple, b_ih: tuple, b_hh: tuple, hx: tuple,
                        *args: object, **kwargs: object) -> int:
            rows, sequences = _rows(input, hx)
            return 2 * rows * math.prod(w_ih) + 2 * (rows - sequences) * math.prod(w_hh)

        mapping[onednn_backward] = onednn_grad

    cudnn = getattr(aten, "_cudnn_rnn", None)
    cudnn_backward = getattr(aten, "_cudnn_rnn_backward", None)

    def split(weights: list, stride: int) -> tuple[int, int]:
        """(Σ |W| over the 2-D weights, Σ |W_hh|): each layer and direction holds ``stride`` tensors, W_ih
        and W_hh first, then the biases and an LSTM's W_hr."""
        matrices = sum(math.prod(w) for w in weights if len(w) == 2)
        hidden = sum(math.prod(weights[i + 1]) for i in range(0, len(weights), stride))
        return matrices, hidden

    if cudnn is not None:  # all layers and directions in one call: (input, weights, stride, buf, hx, cx, mode, ...)
        def cudnn_forward(input: tuple, weight: list, weight_stride0: int, weight_buf: object, hx: tuple,
                          cx: object, mode: int, *args: object, **kwargs: object) -> int:
            rows, _ = _rows(input, hx)
            fired(mode)
            return 2 * rows * split(weight, weight_stride0)[0]

        mapping[cudnn] = cudnn_forward
    if cudnn_backward is not None:
        def cudnn_grad(input: tuple, weight: list, weight_stride0: int, weight_buf: object, hx: tuple,
                       *args: object, **kwargs: object) -> int:
            rows, sequences = _rows(input, hx)
            matrices, hidden = split(weight, weight_stride0)
            return 2 * rows * matrices - 2 * sequences * hidden

        mapping[cudnn_backward] = cudnn_grad
    return mapping


def _measure_flops(model: nn.Module, sample: torch.Tensor, target: int) -> FlopProfile:
    # which recurrent module is running, to name the analytic counts after it (a kernel run outside any, as in
    # a frozen TorchScript model, is named by its kind)
    running: list[str] = []
    labels: dict[str, None] = {}

    def fired(mode: int) -> None:
        labels[running[-1] if running else f"{_KERNEL_MODES.get(mode, 'recurrent')} kernel"] = None

    custom = {**_attention_formulas(), **_rnn_formulas(fired)}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.RNNBase):
            def enter(mod: nn.Module, args: tuple, _name: str = name) -> None:
                running.append(f"{_name or 'model'}: {type(mod).__name__}")

            def leave(mod: nn.Module, args: tuple, out: object) -> None:
                if running:
                    running.pop()

            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))

    forward_counter = FlopCounterMode(display=False, custom_mapping=custom)
    x = sample.detach().clone().requires_grad_(True)
    try:
        with forward_counter:
            out = model(x)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise XauditError(f"flop_profile needs a model returning one tensor of class scores (N × classes), "
                              f"got {type(out).__name__ if not isinstance(out, torch.Tensor) else tuple(out.shape)}: "
                              "wrap the model so that it returns its logits")
        forward = float(forward_counter.get_total_flops())
        backward = 0.0
        score = out[0, target]
        reached = False
        if score.requires_grad:  # no gradient path from the input (x.detach() inside): no backward to count
            backward_counter = FlopCounterMode(display=False, custom_mapping=custom)
            with backward_counter:
                reached = torch.autograd.grad(score, x, allow_unused=True)[0] is not None
            backward = float(backward_counter.get_total_flops())
    finally:
        for h in handles:
            h.remove()
    return FlopProfile(forward=forward, backward=backward, analytic_layers=tuple(labels), input_gradient=reached)
