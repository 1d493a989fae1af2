"""Where the work runs: resolving ``--device`` and describing the machine a cost was measured on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from typing import Any

import torch

from xaudit.models._errors import XauditError

DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """Turn ``cpu`` / ``cuda`` / ``cuda:N`` / ``auto`` into a usable device, or raise a one-line error."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = (spec or "cpu").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise XauditError(f"unknown device {spec!r}: use {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise XauditError(f"device {spec!r} is not supported: use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise XauditError(f"device {spec!r} was requested but no CUDA GPU is available to this torch "
                          f"(torch {torch.__version__}): use device='cpu' (--device cpu on the command line)")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise XauditError(f"device {spec!r} does not exist: this machine has {count} CUDA device(s) "
                          f"(cuda:0..cuda:{count - 1}); use one of those or --device cpu")
    return device


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def xaudit_version() -> str:
    return _version("xaudit") or "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.read().splitlines()
    except OSError:  # not Linux: platform.processor() below is the portable (if vaguer) answer
        lines = []
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    """What a cost measurement depends on: CPU, core and thread counts, accelerator, library versions."""
    affinity = getattr(os, "sched_getaffinity", None)
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(affinity(0)) if affinity else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": {name: _version(name) for name in ("xaudit", "torch", "captum", "shap", "lime", "numpy")},
    }
    return info


#: Other processes' share of the machine's CPU time above which timings are flagged as measured on a busy
#: machine (a parallel test run took IG from 7 to 635 ms per sample on 2 cores: user test).
BUSY_SHARE = 0.25


def _machine_busy_seconds() -> float | None:
    """CPU seconds every core of the machine has spent busy (user, nice, system, irq, softirq, and steal: time
    a VM's cores were taken by the host), from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat", "rb") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu" or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class CpuContention:
    """Measures what share of the machine's CPU other processes (and a VM host) took during a block.

    >>> with CpuContention() as contention:
    ...     run()
    >>> contention.result   # {"other_cpu_share": 0.03, "busy": False, ...} or None off Linux
    """

    def __init__(self) -> None:
        self.result: dict[str, Any] | None = None

    def __enter__(self) -> CpuContention:
        self._busy0, self._own0 = _machine_busy_seconds(), _own_cpu_seconds()
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy1, own1 = _machine_busy_seconds(), _own_cpu_seconds()
        wall = time.perf_counter() - self._wall0
        cores = os.cpu_count() or 1
        if self._busy0 is None or busy1 is None or wall <= 0:
            return
        other = max(busy1 - self._busy0 - (own1 - self._own0), 0.0)
        share = min(other / (wall * cores), 1.0)
        self.result = {"other_cpu_share": round(share, 3), "busy": share > BUSY_SHARE, "window_s": round(wall, 1),
                       "machine_cores": cores, "threshold": BUSY_SHARE,
                       "source": "/proc/stat busy time (with steal) less this process's CPU time"}


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system
