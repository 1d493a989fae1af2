"""FLOPs of one model evaluation, from ``torch.utils.flop_counter.FlopCounterMode`` plus analytic counts.

``FlopCounterMode`` counts matrix products and convolutions (2 FLOPs per multiply-add). On CPU it sees
``nn.GRU`` (which decomposes into ``aten.mm``) but not ``nn.LSTM`` when it runs as oneDNN's fused kernel (a
float32 LSTM without ``proj_size``). Each call of an LSTM is watched: where the counter's total did not move
during it, we add the same convention analytically, ``2 · T · 4H · (I + P)`` per layer and direction for the
forward pass (input-to-hidden and hidden-to-hidden products of the four gates, plus ``2 · T · H · P`` for a
projection). Explanation methods differentiate with respect to the inputs only (never the weights), so the
backward pass is measured that way, and an LSTM's analytic backward is its forward less the first step's
hidden-to-hidden product in each layer and direction (h₀ is a constant), as the counter finds for ``nn.GRU``.
CPU attention (``F.scaled_dot_product_attention``, ``nn.MultiheadAttention`` without weights, transformer
layers) runs as a kernel the counter has no formula for in this torch; it is counted with torch's own formula
for the other attention kernels. An LSTM inside TorchScript cannot be watched: it is named in the source as
not counted, never silently zero.
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


def lstm_forward_flops(lstm: nn.LSTM, seq_len: int) -> float:
    """Analytic forward FLOPs of one sample through ``lstm`` over ``seq_len`` steps (matmuls only)."""
    dirs = 2 if lstm.bidirectional else 1
    hidden = lstm.hidden_size
    proj = lstm.proj_size if lstm.proj_size > 0 else hidden
    total = 0.0
    in_size = lstm.input_size
    for _ in range(lstm.num_layers):
        per_step = 2 * 4 * hidden * (in_size + proj)
        if lstm.proj_size > 0:
            per_step += 2 * hidden * proj
        total += dirs * seq_len * per_step
        in_size = proj * dirs
    return float(total)


def lstm_backward_flops(lstm: nn.LSTM, seq_len: int) -> float:
    """Analytic input-gradient backward FLOPs of one sample through ``lstm``: the forward's products, less the
    first step's hidden-to-hidden product in each layer and direction (its h₀ is a constant)."""
    if seq_len < 1:
        return 0.0
    dirs = 2 if lstm.bidirectional else 1
    proj = lstm.proj_size if lstm.proj_size > 0 else lstm.hidden_size
    return lstm_forward_flops(lstm, seq_len) - lstm.num_layers * dirs * 2 * 4 * lstm.hidden_size * proj


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
    """
    return per_generation(_CACHE, model, (tuple(sample.shape), sample.dtype),
                          lambda: _measure_flops(model, sample, target))


def _measure_flops(model: nn.Module, sample: torch.Tensor, target: int) -> FlopProfile:
    custom = _attention_formulas()
    forward_counter = FlopCounterMode(display=False, custom_mapping=custom)
    # each LSTM call: the counter's total before it, then what the counter saw during it
    lstm_calls: list[tuple[str, nn.Module, int, float]] = []
    started: dict[int, list[float]] = {}
    handles = []
    scripted = []
    for name, module in model.named_modules():
        if isinstance(module, nn.LSTM):
            def before(mod: nn.Module, args: tuple) -> None:
                started.setdefault(id(mod), []).append(forward_counter.get_total_flops())

            def after(mod: nn.Module, args: tuple, _out: object, _name: str = name) -> None:
                seen = forward_counter.get_total_flops() - started[id(mod)].pop()
                lstm_calls.append((_name, mod, _seq_len(mod, args[0]), seen))

            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        elif getattr(module, "original_name", None) == "LSTM" and isinstance(module, torch.jit.ScriptModule):
            scripted.append(f"{name or 'model'} (TorchScript LSTM)")

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
    for name, lstm, length, seen in lstm_calls:
        if seen == 0:  # oneDNN's fused kernel: the counter saw none of this call's products
            forward += lstm_forward_flops(lstm, length)  # type: ignore[arg-type]
            backward += lstm_backward_flops(lstm, length)  # type: ignore[arg-type]
            analytic[f"{name or 'model'}: LSTM"] = None
    return FlopProfile(forward=forward, backward=backward, analytic_layers=tuple(analytic),
                       uncounted_layers=tuple(scripted))
