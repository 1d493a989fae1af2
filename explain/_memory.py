"""Memory budgets: how many model input rows may be in flight at once so a method stays under budget.

We estimate the bytes one input row costs from the model itself: a forward pass of one sample with hooks
that add up every leaf module's output (the activations autograd keeps for the backward pass), plus the
per-step gate buffers recurrent layers keep internally and the module hooks cannot see. A gradient
method holds those activations and about as much again in gradients; a forward-only method holds far
less, but we keep the same conservative factor. The estimate is checked against measured peak RSS in the
benchmark script (IG, 128 steps, 2,000 inputs of 32×32).
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from xaudit.models._errors import XauditError

#: Default budget for one explanation call.
DEFAULT_MEMORY_BUDGET_BYTES = 2 * 1024**3
#: Above this many rows per model call CPU throughput stops improving, so we never batch larger.
MAX_ROW_BATCH = 512
#: Activations + their gradients + allocator slack, per byte of forward activation.
_GRADIENT_FACTOR = 3.0

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4, "tb": 1024**4, "tib": 1024**4}


def parse_bytes(text: str | int | float) -> int:
    """Parse ``"2GiB"``, ``"512MB"``, ``"1.5g"`` or a plain number of bytes (binary units throughout)."""
    if isinstance(text, (int, float)):
        value = int(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise XauditError(f"cannot read memory size {text!r}: write it like 2GiB, 512MiB or 1073741824")
        value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value <= 0:
        raise XauditError(f"memory budget must be positive, got {text!r}")
    return value


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass(frozen=True)
class RowMemory:
    """Estimated bytes of one input row in flight, and the fixed cost of the model itself."""

    bytes_per_row: int
    fixed_bytes: int


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, RowMemory]] = weakref.WeakKeyDictionary()


def row_memory(model: nn.Module, sample: torch.Tensor) -> RowMemory:
    """Estimate the memory one input row costs in a forward+backward pass (``sample`` has batch size 1)."""
    key = (tuple(sample.shape[1:]), sample.dtype)
    per_model = _CACHE.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    total = [sample.numel() * sample.element_size()]
    rnn_steps: dict[nn.Module, int] = {}
    handles = []

    def add(_mod: nn.Module, _args: tuple, out: object) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    def steps(mod: nn.Module, args: tuple, _out: object) -> None:
        x = args[0]
        if isinstance(x, torch.Tensor):
            rnn_steps[mod] = int(x.shape[1] if (x.dim() == 3 and mod.batch_first) else x.shape[0])

    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            handles.append(module.register_forward_hook(steps))
        if not list(module.children()):
            handles.append(module.register_forward_hook(add))
    try:
        with torch.no_grad():
            model(sample[:1])
    finally:
        for h in handles:
            h.remove()
    for rnn, t in rnn_steps.items():
        dirs = 2 if rnn.bidirectional else 1
        total[0] += _GATES.get(rnn.mode.split("_")[0], 4) * rnn.hidden_size * rnn.num_layers * dirs * t * 4
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    memory = RowMemory(bytes_per_row=int(total[0] * _GRADIENT_FACTOR), fixed_bytes=int(params))
    per_model[key] = memory
    return memory


def rows_for_budget(memory: RowMemory, budget_bytes: int, method: str, sample_bytes: int = 0) -> int:
    """How many input rows may be in flight under ``budget_bytes`` (at most :data:`MAX_ROW_BATCH`).

    Raises a one-line error with the amount needed when not even one row fits.
    """
    available = budget_bytes - memory.fixed_bytes - 2 * sample_bytes
    rows = available // memory.bytes_per_row if available > 0 else 0
    if rows < 1:
        needed = memory.fixed_bytes + 2 * sample_bytes + memory.bytes_per_row
        raise XauditError(
            f"memory budget {format_bytes(budget_bytes)} is too small for even one sample with {method}: "
            f"it needs about {format_bytes(needed)}; raise --memory-budget")
    return int(min(rows, MAX_ROW_BATCH))
