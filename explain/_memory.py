"""Memory budgets: how many model input rows may be in flight at once so a method stays under budget.

We estimate the bytes one input row costs from the model itself: a forward pass of one sample that adds
up every tensor autograd saves for the backward pass (parameters excluded), the input and the output. A
gradient method holds those activations and about as much again in gradients; a forward-only method
holds far less, but we keep the same conservative factor. The estimate is checked against measured peak RSS in the
benchmark script (IG, 128 steps, 2,000 inputs of 32×32).
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from xaudit.models._errors import XauditError
from xaudit.models._walk import per_generation

#: Default budget for one explanation call.
DEFAULT_MEMORY_BUDGET_BYTES = 2 * 1024**3
#: Above this many rows per model call CPU throughput stops improving, so we never batch larger.
MAX_ROW_BATCH = 512
#: On the CPU a call should also keep its activations near the cache: at most this many estimated in-flight
#: bytes (``RowMemory.bytes_per_row`` × rows) per call. On the benchmark's 2-core EPYC the 32×32 digits CNN ran
#: forward+input-backward fastest per row in 64-128-row calls (135-139 µs/row against 240 at 256 rows), yet at
#: 12 MiB (64 rows there) whole calls lost 2-8% to captum's single call from the extra chunks, IG and
#: SmoothGrad were 10-25% slower than at 256 rows, and DeepLift (two rows per sample) was 1.6× faster than at
#: 256 rows: 24 MiB, 128 rows, is the model's own best batch (tests/benchmarks/bench_explain.py).
CPU_CALL_BYTES = 24 * 1024**2
#: The CPU cap never goes below this many rows, where per-call overhead would dominate small models.
MIN_CPU_ROW_BATCH = 16
#: Activations + their gradients + allocator slack, per byte of forward activation.
_GRADIENT_FACTOR = 3.0
#: Peak RSS a gradient call adds per byte of the row estimate, measured: the allocator's slack and the
#: backward pass's workspaces come on top. On the 32×32 digits CNN at budgets of 16-64 MiB, in fresh processes,
#: IG, saliency, SmoothGrad and expected gradients measured 1.3-1.7× the estimate; budgets are planned with this
#: factor so that those calls stay under them (tests/test_explain_memory_budget.py).
GRADIENT_CALL_SLACK = 1.8

# IEC units (KiB, MiB, ...) and bare letters (k, m, g, t: as docker and the JVM read them) are binary; SI
# units (kB, MB, GB, TB) are decimal, as the SI defines them: a budget read 7% larger than written could
# take more than the user has
_UNITS = {"": 1, "b": 1,
          "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3, "t": 1024**4,
          "tib": 1024**4,
          "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}


def parse_bytes(text: str | int | float) -> int:
    """Parse ``"2GiB"``, ``"512MiB"``, ``"1.5g"``, ``"500MB"`` or a plain number of bytes. KiB/MiB/GiB/TiB and
    the bare k/m/g/t are binary (1g = 1GiB = 2³⁰ bytes); kB/MB/GB/TB are decimal (1GB = 10⁹ bytes)."""
    fix = "write it like 512MiB, 2GiB or 1073741824"
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not -float("inf") < text < float("inf"):  # NaN too
            raise XauditError(f"cannot read memory size {text!r}: {fix}")
        amount: float = text
    else:
        # a sign is read so that -5 and 0 get the same "at least one byte" error
        match = re.fullmatch(r"\s*([-+]?[0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        if not match or match.group(2).lower() not in _UNITS:
            raise XauditError(f"cannot read memory size {text!r}: {fix}")
        amount = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if amount < 1:  # 0.5 bytes is positive, but no whole byte
        raise XauditError(f"memory budget must be at least one byte, got {str(text)!r}: {fix}")
    if amount != int(amount) and (isinstance(text, float) or not match.group(2)):
        # "1.5" read as 1 byte; "1.5MiB" is a whole number of bytes and fine
        raise XauditError(f"memory budget {str(text)!r} is not a whole number of bytes: give a unit, e.g. "
                          f"{str(text).strip()}MiB, or whole bytes")
    return int(amount)


_BUDGET: contextvars.ContextVar[int | None] = contextvars.ContextVar("xaudit_memory_budget", default=None)


@contextlib.contextmanager
def memory_budget(budget: int | str) -> Iterator[int]:
    """Make ``budget`` the memory budget of every explanation in the block that is not given one: the
    report's quality metrics and sample curves re-run methods many times, and each run keeps to it too.

    >>> with memory_budget("512MiB"):
    ...     build_report(...)
    """
    token = _BUDGET.set(parse_bytes(budget))
    try:
        yield _BUDGET.get()  # type: ignore[misc]
    finally:
        _BUDGET.reset(token)


def current_budget(budget: int | str | None = None) -> int:
    """``budget`` in bytes; when None, the budget of the enclosing :func:`memory_budget` block, else the
    default (:data:`DEFAULT_MEMORY_BUDGET_BYTES`)."""
    if budget is not None:
        return parse_bytes(budget)
    scoped = _BUDGET.get()
    return DEFAULT_MEMORY_BUDGET_BYTES if scoped is None else scoped


def format_bytes(n: float, digits: int = 1) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= 1024
    return f"{n:.{digits}f} GiB"


@dataclass(frozen=True)
class RowMemory:
    """Estimated bytes of one input row in flight, and the fixed cost of the model itself."""

    bytes_per_row: int
    fixed_bytes: int


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[int, RowMemory]]] = weakref.WeakKeyDictionary()


def row_memory(model: nn.Module, sample: torch.Tensor) -> RowMemory:
    """Estimate the memory one input row costs in a forward+backward pass (``sample`` has batch size 1).

    Counts the bytes autograd saves for the backward pass (``saved_tensors_hooks``), which sees inside
    fused and scripted modules where module hooks cannot (TorchScript models take no hooks at all).
    """
    return per_generation(_CACHE, model, (tuple(sample.shape[1:]), sample.dtype),
                          lambda: _measure_row_memory(model, sample))


def _measure_row_memory(model: nn.Module, sample: torch.Tensor) -> RowMemory:
    param_ptrs = {p.data_ptr() for p in model.parameters()}
    seen: set[tuple[int, int]] = set()
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        ident = (t.data_ptr(), t.numel())
        if t.data_ptr() not in param_ptrs and ident not in seen:
            seen.add(ident)
            saved[0] += t.numel() * t.element_size()
        return t

    x = sample[:1].detach().clone().requires_grad_(True)
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    out_bytes = out.numel() * out.element_size() if isinstance(out, torch.Tensor) else 0
    total = saved[0] + out_bytes + x.numel() * x.element_size()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return RowMemory(bytes_per_row=int(total * _GRADIENT_FACTOR), fixed_bytes=int(params))


def cpu_row_cap(memory: RowMemory) -> int:
    """Most rows per model call on the CPU: the largest power of two whose in-flight bytes fit in
    :data:`CPU_CALL_BYTES`, between :data:`MIN_CPU_ROW_BATCH` and :data:`MAX_ROW_BATCH`."""
    rows = max(CPU_CALL_BYTES // max(memory.bytes_per_row, 1), MIN_CPU_ROW_BATCH)
    return min(1 << (int(rows).bit_length() - 1), MAX_ROW_BATCH)


def bytes_for_one_row(memory: RowMemory, sample_bytes: int = 0, factor: float = 1.0) -> int:
    """The smallest budget :func:`rows_for_budget` allows one row under."""
    return memory.fixed_bytes + 2 * sample_bytes + max(int(memory.bytes_per_row * factor), 1)


def budget_too_small(budget_bytes: int, method: str, needed: int, also: str = "") -> XauditError:
    """The one-line error for a memory budget below what one sample of ``method`` needs (``also``: appended).

    The two amounts are printed with as many decimals as it takes to tell them apart (a budget a few KiB short
    of the need read "1.5 MiB ... needs about 1.5 MiB")."""
    have, need = format_bytes(budget_bytes), format_bytes(needed)
    for digits in (2, 3):
        if have != need:
            break
        have, need = format_bytes(budget_bytes, digits), format_bytes(needed, digits)
    if have == need:
        have, need = f"{budget_bytes} B", f"{needed} B"
    return XauditError(f"memory budget {have} is too small for even one sample with {method}: it needs about "
                       f"{need}; raise the budget (--memory-budget, or memory_budget= in Python){also}")


def rows_for_budget(memory: RowMemory, budget_bytes: int, method: str, sample_bytes: int = 0,
                    device: torch.device | str | None = None, factor: float = 1.0) -> int:
    """How many input rows may be in flight under ``budget_bytes`` (at most :data:`MAX_ROW_BATCH`, and on a
    CPU ``device`` at most :func:`cpu_row_cap`), each row costing ``factor`` × the estimate (the method's
    measured overhead: see :data:`GRADIENT_CALL_SLACK`).

    Raises a one-line error with the amount needed when not even one row fits.
    """
    per_row = max(int(memory.bytes_per_row * factor), 1)
    available = budget_bytes - memory.fixed_bytes - 2 * sample_bytes
    rows = available // per_row if available > 0 else 0
    if rows < 1:
        raise budget_too_small(budget_bytes, method, bytes_for_one_row(memory, sample_bytes, factor))
    cap = cpu_row_cap(memory) if device is not None and torch.device(device).type == "cpu" else MAX_ROW_BATCH
    return int(min(rows, cap))
