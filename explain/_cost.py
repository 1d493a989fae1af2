"""Measuring what an explanation costs: time, CPU time, attributable peak memory, model evaluations, energy.

Peak memory on Linux is the process's resident-set high-water mark (``VmHWM``), reset at the start of a
measurement by writing ``5`` to ``/proc/self/clear_refs`` so the number is the method's own peak, not the
process's lifetime peak; we report it minus the RSS at the start. That is the growth of resident memory: pages
the heap kept from earlier work and the call reuses do not count, unless the meter is asked for a ``fresh_heap``
(:func:`release_free_heap` first: the report and ``xaudit explain`` do, so their figures do not depend on what
ran before; ``explain(..., fresh_heap=True)`` in Python). On CUDA the meter uses
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` and CUDA events for time.
Energy comes from Intel RAPL counters where ``/sys/class/powercap`` is readable, from NVML on NVIDIA
GPUs, and otherwise is an *estimate*: CPU seconds times a stated power per busy core. NVML's energy counter
advances in steps (measured on an H200: one step every ~100 ms), so over a call shorter than
:data:`NVML_COUNTER_MIN_S` its difference is 0 or a whole step; such a call's energy is NVML's board power
reading times the wall time instead, labelled ``nvml_power``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import glob
import math
import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch

#: Assumed power of one fully busy CPU core, used only when no energy counter is readable (the default of
#: :func:`watts_per_core`; the environment variable ``XAUDIT_WATTS_PER_CORE`` overrides it).
ESTIMATED_WATTS_PER_CORE = 12.0


def watts_per_core() -> float:
    """The per-core power of the ``estimate`` energy source: ``XAUDIT_WATTS_PER_CORE`` if set (a positive,
    finite number of watts), else :data:`ESTIMATED_WATTS_PER_CORE`. A bad value is a one-line error, not a
    traceback at import or a negative or missing energy figure."""
    text = os.environ.get("XAUDIT_WATTS_PER_CORE")
    if text is None or not text.strip():
        return ESTIMATED_WATTS_PER_CORE
    try:
        watts = float(text)
    except ValueError:
        watts = math.nan
    if not (math.isfinite(watts) and watts > 0):
        from xaudit.models._errors import XauditError

        raise XauditError(f"XAUDIT_WATTS_PER_CORE={text!r} is not a positive number of watts: set it to one "
                          f"core's power, e.g. 15, or unset it for the default {ESTIMATED_WATTS_PER_CORE:g}")
    return watts

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


@dataclass(frozen=True)
class Cost:
    """What one explanation call cost, in totals over ``n_samples`` inputs.

    ``forward_evals`` and ``backward_evals`` count samples pushed through the model (a batch of 32 counts
    32), so per-sample values compare across batch sizes. ``flops`` is forward plus backward FLOPs.
    ``peak_rss_bytes`` is the growth of resident memory during the call (see the module's notes): measured
    without ``fresh_heap`` after other work in the same process, it can be lower than the call's own need.
    """

    n_samples: int
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    forward_evals: int
    backward_evals: int
    flops: float | None = None
    flops_source: str = "not measured"
    energy_j: float | None = None
    energy_source: str = "estimate"
    memory_source: str = "rss"
    device: str = "cpu"

    def _per(self, value: float | None) -> float | None:
        if value is None:
            return None
        return value / max(self.n_samples, 1)

    def per_sample(self) -> dict[str, Any]:
        """The per-sample view used by report.json's ``cost`` object."""
        return {
            "wall_s_per_sample": self._per(self.wall_s),
            "cpu_s_per_sample": self._per(self.cpu_s),
            "peak_rss_bytes": int(self.peak_rss_bytes),
            "forward_evals_per_sample": self._per(self.forward_evals),
            "backward_evals_per_sample": self._per(self.backward_evals),
            "flops_per_sample": self._per(self.flops),
            "flops_source": self.flops_source,
            "energy_j_per_sample": self._per(self.energy_j),
            "energy_source": self.energy_source,
            "memory_source": self.memory_source,
            "device": self.device,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __add__(self, other: Cost) -> Cost:
        """Combine two measurements of the same kind (e.g. chunks of one call) by summing and taking max peak."""
        if not isinstance(other, Cost):
            return NotImplemented
        flops = None if self.flops is None or other.flops is None else self.flops + other.flops
        energy = None if self.energy_j is None or other.energy_j is None else self.energy_j + other.energy_j
        return dataclasses.replace(
            self,
            n_samples=self.n_samples + other.n_samples,
            wall_s=self.wall_s + other.wall_s,
            cpu_s=self.cpu_s + other.cpu_s,
            peak_rss_bytes=max(self.peak_rss_bytes, other.peak_rss_bytes),
            forward_evals=self.forward_evals + other.forward_evals,
            backward_evals=self.backward_evals + other.backward_evals,
            flops=flops,
            energy_j=energy,
        )


# ---------------------------------------------------------------------------------------------- memory


# Descriptors of /proc/self/status and /proc/self/clear_refs, opened once per process: opening them was half
# of a meter's ~60 µs, and more right after a call had filled the caches. /proc/self resolves when opened,
# so a forked child (a sweep worker) opens its own: the pid is part of the key.
_FDS: dict[tuple[int, str], int] = {}


def _proc_fd(path: str, flags: int) -> int:
    key = (os.getpid(), path)
    fd = _FDS.get(key)
    if fd is None:
        fd = _FDS[key] = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    return fd


def _read_status_kb(field: str) -> int | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        text = os.pread(_proc_fd(_STATUS, os.O_RDONLY), 1 << 16, 0)  # one read and a search
    except OSError:
        return None
    at = text.find(b"\n" + field.encode() + b":")
    if at < 0:
        return None
    return int(text[at:text.index(b"\n", at + 1)].split()[1])


@functools.lru_cache(maxsize=1)  # each check is a syscall, and a meter asks twice per call
def _can_reset_peak() -> bool:
    return sys.platform.startswith("linux") and os.access(_CLEAR_REFS, os.W_OK)


# Meters that are measuring right now. A nested meter resets the kernel's high-water mark, so before it
# does, it hands the mark seen so far to every enclosing meter.
_ACTIVE: list[CostMeter] = []


def _hwm_bytes() -> int:
    kb = _read_status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss is the lifetime peak (kB on Linux, bytes on macOS)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    return kb * 1024


def _rss_bytes() -> int:
    kb = _read_status_kb("VmRSS")
    return 0 if kb is None else kb * 1024


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None (another C library, another system)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Give the pages the C heap holds free back to the system (glibc's ``malloc_trim(0)``); False where that
    is not available.

    A call's peak is measured as the growth of resident memory. Memory an earlier call freed stays resident in
    the heap, and a later call that reuses it does not grow RSS: measured after a larger call in the same process,
    deeplift on 60 inputs of 64×64 read 0.0 MiB instead of 12.8. Released first, every page the call touches
    is counted. It costs the page faults of touching them again (0.1-2 µs a page, more on virtual machines), so
    :class:`CostMeter` does it only when asked (``fresh_heap``): the report and ``xaudit explain`` do.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _reset_peak() -> None:
    if _ACTIVE:  # reading /proc costs ~0.1 ms, so only when an enclosing meter needs the mark
        hwm = _hwm_bytes()
        for meter in _ACTIVE:
            meter._hwm_seen = max(meter._hwm_seen, hwm)
    if _can_reset_peak():
        os.write(_proc_fd(_CLEAR_REFS, os.O_WRONLY), b"5")


# ---------------------------------------------------------------------------------------------- energy


class _Rapl:
    """Package-level RAPL energy counters, with wrap-around handled."""

    def __init__(self) -> None:
        self.zones = [
            z for z in sorted(glob.glob("/sys/class/powercap/intel-rapl:*"))
            if z.count(":") == 1 and os.access(os.path.join(z, "energy_uj"), os.R_OK)
        ]

    def read(self) -> list[int]:
        out = []
        for z in self.zones:
            with open(os.path.join(z, "energy_uj")) as fh:
                out.append(int(fh.read()))
        return out

    def joules(self, before: list[int], after: list[int]) -> float:
        total = 0
        for z, b, a in zip(self.zones, before, after):
            if a < b:
                with open(os.path.join(z, "max_energy_range_uj")) as fh:
                    a += int(fh.read())
            total += a - b
        return total / 1e6


@functools.lru_cache(maxsize=1)  # the zones do not change while we run; globbing sysfs cost ~70 µs per meter
def _rapl() -> _Rapl | None:
    try:
        rapl = _Rapl()
        if rapl.zones:
            rapl.read()
            return rapl
    except (OSError, ValueError):
        return None
    return None


def _nvml_read(device: torch.device, reading: str) -> float | None:
    """One NVML reading of ``device`` (``reading`` names a ``pynvml.nvmlDevice...(handle)`` function), or None
    without NVML."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        return float(getattr(pynvml, reading)(_nvml_handle(pynvml, device)))
    except (pynvml.NVMLError, AttributeError):  # AttributeError: a pynvml without this reading
        return None


def _nvml_handle(pynvml: Any, device: torch.device) -> Any:
    """NVML's handle for a torch CUDA device. NVML numbers every GPU on the machine, torch only the visible
    ones: with ``CUDA_VISIBLE_DEVICES=2``, ``cuda:0`` is NVML's GPU 2 (an entry may also be a GPU UUID). NVML
    orders GPUs by PCI bus, as CUDA does with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    if "CUDA_VISIBLE_DEVICES" in os.environ and index < len(visible):
        entry = visible[index]
        if entry.isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(entry))
        return pynvml.nvmlDeviceGetHandleByUUID(entry)
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def _nvml_energy_mj(device: torch.device) -> float | None:
    """Total energy of the GPU since driver load, in millijoules, or None without NVML."""
    return _nvml_read(device, "nvmlDeviceGetTotalEnergyConsumption")


def _nvml_power_w(device: torch.device) -> float | None:
    """NVML's board power reading in watts (an average over the last second on Ampere and newer), or None."""
    milliwatts = _nvml_read(device, "nvmlDeviceGetPowerUsage")
    return None if milliwatts is None else milliwatts / 1e3


#: Shortest call whose energy is NVML's energy-counter difference; shorter calls use power × time.
NVML_COUNTER_MIN_S = 1.0


def nvml_energy(start_mj: float, end_mj: float, wall_s: float, power_w: float | None) -> tuple[float, str]:
    """Joules and source of one call on an NVIDIA GPU: the energy counter's difference when the call lasted
    at least :data:`NVML_COUNTER_MIN_S` (or no power reading exists), else the power reading × the wall time."""
    if wall_s >= NVML_COUNTER_MIN_S or power_w is None:
        return (end_mj - start_mj) / 1e3, "nvml"
    return power_w * wall_s, "nvml_power"


def energy_source_for(device: torch.device | str = "cpu") -> str:
    """Which energy source a measurement on ``device`` will use: ``rapl``, ``nvml`` or ``estimate`` (a call on
    an NVIDIA GPU shorter than :data:`NVML_COUNTER_MIN_S` reports ``nvml_power``: see the module's notes)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and _nvml_energy_mj(device) is not None:
        return "nvml"
    if device.type == "cpu" and _rapl() is not None:
        return "rapl"
    return "estimate"


# ---------------------------------------------------------------------------------------------- meter


class EvalCounter:
    """Counts samples through the model's forward and backward; the counting model wrapper feeds it."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0


class CostMeter:
    """Context manager that measures one block of work and produces a :class:`Cost`.

    ``flops_per_eval`` is (forward, backward) FLOPs of one sample; total FLOPs follow from the counted
    evaluations, so the method itself never runs under the (slow) FLOP counter.

    >>> with CostMeter(n_samples=32) as meter:
    ...     run()
    >>> meter.cost
    """

    def __init__(self, n_samples: int, *, device: torch.device | str = "cpu", counter: EvalCounter | None = None,
                 flops_per_eval: tuple[float, float] | None = None, flops_source: str = "not measured",
                 fresh_heap: bool = False) -> None:
        self.n_samples = n_samples
        self.fresh_heap = fresh_heap
        self.device = torch.device(device)
        self.counter = counter if counter is not None else EvalCounter()
        self.flops_per_eval = flops_per_eval
        self.flops_source = flops_source
        self.cost: Cost | None = None
        self._hwm_seen = 0

    def __enter__(self) -> CostMeter:
        self._watts = watts_per_core()  # a bad setting fails before the work, not after
        self._cuda = self.device.type == "cuda" and torch.cuda.is_available()
        self._rapl = _rapl() if self.device.type == "cpu" else None
        self._nvml_start = _nvml_energy_mj(self.device) if self._cuda else None
        self._rapl_start = self._rapl.read() if self._rapl else None
        if self._cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._mem_start = torch.cuda.memory_allocated(self.device)
            self._ev_start = torch.cuda.Event(enable_timing=True)
            self._ev_end = torch.cuda.Event(enable_timing=True)
            self._ev_start.record()
        else:
            if self.fresh_heap:
                release_free_heap()
            _reset_peak()
            self._mem_start = _rss_bytes()
        _ACTIVE.append(self)
        self._cpu0 = time.process_time()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            self._ev_end.record()
            torch.cuda.synchronize(self.device)
            wall = self._ev_start.elapsed_time(self._ev_end) / 1e3
            peak = torch.cuda.max_memory_allocated(self.device) - self._mem_start
            memory_source = "cuda_max_memory_allocated"
        else:
            wall = time.perf_counter() - self._t0
            self._hwm_seen = max(self._hwm_seen, _hwm_bytes())
            peak = self._hwm_seen - self._mem_start
            memory_source = "rss" if _can_reset_peak() else "rss_lifetime_peak"
        cpu = time.process_time() - self._cpu0
        _ACTIVE.remove(self)
        for outer in _ACTIVE:
            outer._hwm_seen = max(outer._hwm_seen, self._hwm_seen)

        energy: float | None
        if self._rapl is not None and self._rapl_start is not None:
            energy, source = self._rapl.joules(self._rapl_start, self._rapl.read()), "rapl"
        elif self._nvml_start is not None and (end := _nvml_energy_mj(self.device)) is not None:
            energy, source = nvml_energy(self._nvml_start, end, wall, _nvml_power_w(self.device))
        else:
            energy, source = cpu * self._watts, "estimate"

        flops = None
        if self.flops_per_eval is not None:
            fwd, bwd = self.flops_per_eval
            flops = self.counter.forward * fwd + self.counter.backward * bwd
        self.cost = Cost(
            n_samples=self.n_samples,
            wall_s=wall,
            cpu_s=cpu,
            peak_rss_bytes=max(int(peak), 0),
            forward_evals=self.counter.forward,
            backward_evals=self.counter.backward,
            flops=flops,
            flops_source=self.flops_source,
            energy_j=energy,
            energy_source=source,
            memory_source=memory_source,
            device=str(self.device),
        )
