"""FLOPs of one model evaluation, from ``torch.utils.flop_counter.FlopCounterMode`` plus analytic counts.

``FlopCounterMode`` counts matrix products and convolutions (2 FLOPs per multiply-add). It misses recurrent
layers that run as one fused kernel: on CPU a float32 ``nn.LSTM`` without ``proj_size`` (oneDNN), and on CUDA
with cuDNN every ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (``aten._cudnn_rnn`` has no formula); ``nn.GRU`` and
``nn.RNN`` on CPU decompose into ``aten.mm`` and are counted. Each call of a recurrent layer is watched: where
the counter's total did not move during it, we add the counter's own convention analytically,
``2 · T · G·H · (I + P)`` per layer and direction for the forward pass (input-to-hidden and hidden-to-hidden
products of the G gates: 4 for an LSTM, 3 for a GRU, 1 for a plain RNN; plus ``2 · T · H · P`` for an LSTM's
projection). That formula equals what the counter finds for the decomposed GRU and RNN, and for an LSTM in
float64. Explanation methods differentiate with respect to the inputs only (never the weights), so the
backward pass is measured that way, and the analytic backward is the forward less the first step's
hidden-to-hidden product in each layer and direction (h₀ is a constant), as the counter finds for the
decomposed layers. CPU attention (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention`` without
weights, transformer layers) runs as a kernel the counter has no formula for in this torch; it is counted with
torch's own formula for the other attention kernels. A recurrent layer inside TorchScript cannot be watched:
it is named in the source as not counted, never silently zero.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from xaudit.models._walk import per_generation


@dataclass(frozen=True)
class FlopProfile:
    """FLOPs of one sample's forward and backward pass and where the numbers come from (``uncounted_layers``:
    layers neither the counter nor an analytic count covers, so the totals leave them out)."""

    forward: float
    backward: float
    analytic_layers: tuple[str, ...] = ()
    uncounted_layers: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        text = "FlopCounterMode"
        if self.analytic_layers:
            text += " + analytic (" + ", ".join(self.analytic_layers) + ")"
        if self.uncounted_layers:
            text += "; not counted: " + ", ".join(self.uncounted_layers)
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


def _seq_len(lstm: nn.Module, x: object) -> int:
    if isinstance(x, nn.utils.rnn.PackedSequence):
        return int(x.batch_sizes.numel())
    assert isinstance(x, torch.Tensor)
    if x.dim() == 3 and getattr(lstm, "batch_first", False):
        return int(x.shape[1])
    return int(x.shape[0])  # time-major batched input, or an unbatched (T, I) sequence


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


def _measure_flops(model: nn.Module, sample: torch.Tensor, target: int) -> FlopProfile:
    custom = _attention_formulas()
    forward_counter = FlopCounterMode(display=False, custom_mapping=custom)
    # each recurrent layer's call: the counter's total before it, then what the counter saw during it
    rnn_calls: list[tuple[str, nn.Module, int, float]] = []
    started: dict[int, list[float]] = {}
    handles = []
    scripted = []
    for name, module in model.named_modules():
        if isinstance(module, nn.RNNBase) and module.mode in _GATES:
            def before(mod: nn.Module, args: tuple) -> None:
                started.setdefault(id(mod), []).append(forward_counter.get_total_flops())

            def after(mod: nn.Module, args: tuple, _out: object, _name: str = name) -> None:
                seen = forward_counter.get_total_flops() - started[id(mod)].pop()
                rnn_calls.append((_name, mod, _seq_len(mod, args[0]), seen))

            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        elif getattr(module, "original_name", None) in ("LSTM", "GRU", "RNN") \
                and isinstance(module, torch.jit.ScriptModule):
            scripted.append(f"{name or 'model'} (TorchScript {module.original_name})")

    x = sample.detach().clone().requires_grad_(True)
    try:
        with forward_counter:
            out = model(x)
        forward = float(forward_counter.get_total_flops())
        backward_counter = FlopCounterMode(display=False, custom_mapping=custom)
        with backward_counter:
            torch.autograd.grad(out[0, target], x)
        backward = float(backward_counter.get_total_flops())
    finally:
        for h in handles:
            h.remove()

    analytic: dict[str, None] = {}
    for name, rnn, length, seen in rnn_calls:
        if seen == 0:  # a fused kernel (oneDNN, cuDNN): the counter saw none of this call's products
            forward += rnn_forward_flops(rnn, length)  # type: ignore[arg-type]
            backward += rnn_backward_flops(rnn, length)  # type: ignore[arg-type]
            analytic[f"{name or 'model'}: {type(rnn).__name__}"] = None
    return FlopProfile(forward=forward, backward=backward, analytic_layers=tuple(analytic),
                       uncounted_layers=tuple(scripted))
