"""FLOPs of one model evaluation, from ``torch.utils.flop_counter.FlopCounterMode`` plus analytic counts.

``FlopCounterMode`` counts matrix products and convolutions (2 FLOPs per multiply-add). On CPU it sees
``nn.GRU`` (which decomposes into ``aten.mm``) but not ``nn.LSTM`` (a fused op it has no formula for), so
for every LSTM the counter reports zero for we add the same convention analytically:
``2 · T · 4H · (I + H)`` per layer and direction for the forward pass (input-to-hidden and
hidden-to-hidden products of the four gates). Explanation methods differentiate with respect to the
inputs only (never the weights), so the backward pass is measured that way, and an LSTM's analytic
backward count equals its forward count.
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
    """FLOPs of one sample's forward and backward pass and where the numbers come from."""

    forward: float
    backward: float
    analytic_layers: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        if self.analytic_layers:
            return "FlopCounterMode + analytic (" + ", ".join(self.analytic_layers) + ")"
        return "FlopCounterMode"


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


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[int, FlopProfile]]] = weakref.WeakKeyDictionary()


def flop_profile(model: nn.Module, sample: torch.Tensor, target: int = 0) -> FlopProfile:
    """Measure forward and input-gradient backward FLOPs for ONE sample (``sample`` has batch size 1).

    The model must already be in the mode it will be explained in (eval); the result is cached per model
    generation and input shape. Gradients are taken with ``torch.autograd.grad`` so no parameter's ``.grad`` changes.
    """
    return per_generation(_CACHE, model, (tuple(sample.shape), sample.dtype),
                          lambda: _measure_flops(model, sample, target))


def _measure_flops(model: nn.Module, sample: torch.Tensor, target: int) -> FlopProfile:
    lstm_lengths: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.LSTM):
            def record(mod: nn.Module, args: tuple, _out: object, _name: str = name) -> None:
                x = args[0]
                if isinstance(x, nn.utils.rnn.PackedSequence):
                    lstm_lengths[_name] = int(x.batch_sizes.numel())
                elif x.dim() == 3 and mod.batch_first:
                    lstm_lengths[_name] = int(x.shape[1])
                else:  # time-major batched input, or an unbatched (T, I) sequence
                    lstm_lengths[_name] = int(x.shape[0])
            handles.append(module.register_forward_hook(record))

    x = sample.detach().clone().requires_grad_(True)
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            out = model(x)
        forward = float(counter.get_total_flops())
        by_module = counter.get_flop_counts()
        counter = FlopCounterMode(display=False)
        with counter:
            torch.autograd.grad(out[0, target], x)
        backward = float(counter.get_total_flops())
    finally:
        for h in handles:
            h.remove()

    analytic = []
    for name, length in lstm_lengths.items():
        counted = sum(by_module.get(name, {}).values()) if name else 0
        if counted == 0:
            lstm = model.get_submodule(name) if name else model
            fwd = lstm_forward_flops(lstm, length)
            forward += fwd
            backward += fwd
            analytic.append(f"{name or 'model'}: LSTM")
    return FlopProfile(forward=forward, backward=backward, analytic_layers=tuple(analytic))
