"""CPU-only checks of device-dependent logic: when tests/benchmarks/gpu_check.py skips, what it calls a cost
measured the CUDA way, what its cuDNN control reports off CUDA, and the CPU-only cap on rows per model call."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn

import xaudit.explain as xe

BENCHMARKS = Path(__file__).parent / "benchmarks"


@pytest.fixture(scope="module")
def gpu_check() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCHMARKS))  # gpu_check imports its sibling bench_explain lazily
    try:
        spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def _explanation(device: str, memory_source: str, wall_s: float = 0.01) -> xe.Explanation:
    cost = xe.Cost(n_samples=2, wall_s=wall_s, cpu_s=wall_s, peak_rss_bytes=1024, forward_evals=2,
                   backward_evals=2, memory_source=memory_source, device=device)
    x = torch.zeros(2, 1, 4, 4)
    return xe.Explanation(method="saliency", attributions=x, inputs=x, targets=torch.zeros(2, dtype=torch.long),
                          config={}, cost=cost)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_skips_with_exit_0_when_cuda_is_asked_for_and_absent(gpu_check: ModuleType,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--device", "cuda"]) == 0
    assert capsys.readouterr().out.strip() == "no CUDA device: skipped"
    assert gpu_check.main(["--device", "cuda:1"]) == 0


def test_cuda_missing_only_for_cuda_devices(gpu_check: ModuleType) -> None:
    assert not gpu_check.cuda_missing(torch.device("cpu"))
    assert gpu_check.cuda_missing(torch.device("cuda")) is (not torch.cuda.is_available())


def test_a_cost_on_cuda_must_come_from_the_cuda_meter(gpu_check: ModuleType) -> None:
    cuda = torch.device("cuda", 0)
    assert gpu_check.check_cost(_explanation("cuda:0", "cuda_max_memory_allocated"), cuda) == []
    problems = gpu_check.check_cost(_explanation("cpu", "rss"), cuda)
    assert len(problems) == 1 and "memory_source=rss" in problems[0]
    # on the CPU the RSS meter is the right one
    assert gpu_check.check_cost(_explanation("cpu", "rss"), torch.device("cpu")) == []
    assert gpu_check.check_cost(_explanation("cpu", "rss", wall_s=0.0), torch.device("cpu")) == ["wall time 0.0"]


def test_cudnn_control_is_not_run_off_cuda(gpu_check: ModuleType) -> None:
    gru = nn.Sequential(nn.GRU(3, 4, batch_first=True))
    assert gpu_check.cudnn_control(gru, torch.zeros(1, 5, 3), torch.device("cpu")).startswith("not needed on cpu")


def test_rows_per_call_are_capped_for_the_cpu_cache_but_not_on_cuda() -> None:
    from xaudit.explain._memory import MAX_ROW_BATCH, MIN_CPU_ROW_BATCH, RowMemory, cpu_row_cap, rows_for_budget

    budget = 2 * 1024**3
    wide = RowMemory(bytes_per_row=180_000, fixed_bytes=0)  # the 32×32 digits CNN's estimate
    assert rows_for_budget(wide, budget, "m", device="cpu") == cpu_row_cap(wide) == 128
    assert rows_for_budget(wide, budget, "m", device=torch.device("cuda", 0)) == MAX_ROW_BATCH
    assert rows_for_budget(wide, budget, "m") == MAX_ROW_BATCH  # callers that name no device: as before
    assert cpu_row_cap(RowMemory(bytes_per_row=100, fixed_bytes=0)) == MAX_ROW_BATCH
    assert cpu_row_cap(RowMemory(bytes_per_row=2**30, fixed_bytes=0)) == MIN_CPU_ROW_BATCH
    # a tight budget still wins over the cap
    assert rows_for_budget(wide, 20 * 180_000, "m", device="cpu") == 20


def test_explain_plans_cpu_calls_with_the_cpu_cap() -> None:
    from xaudit.explain._memory import cpu_row_cap, row_memory

    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 32 * 32, 3))
    x = torch.rand(4, 1, 32, 32)
    exp = xe.explain(model, x, method="integrated_gradients", n_steps=8)
    assert exp.plan["row_batch"] == cpu_row_cap(row_memory(model, x[:1])) < 512


def test_nvml_energy_uses_the_counter_only_over_calls_long_enough_for_its_steps() -> None:
    from xaudit.explain._cost import NVML_COUNTER_MIN_S, nvml_energy

    # NVML's counter advanced by one whole ~100 ms step, or not at all, during calls of a few milliseconds:
    # the GPU check printed 0.0000 J for most methods and 0.76 J/sample for others
    assert nvml_energy(5_000.0, 5_000.0, 0.004, 120.0) == (pytest.approx(0.48), "nvml_power")
    assert nvml_energy(5_000.0, 17_000.0, 0.004, 120.0) == (pytest.approx(0.48), "nvml_power")
    # a long call: the counter's difference, whatever the power reading says
    assert nvml_energy(5_000.0, 305_000.0, NVML_COUNTER_MIN_S * 2, 120.0) == (pytest.approx(300.0), "nvml")
    # no power reading: the counter is all there is, still labelled as NVML's
    assert nvml_energy(5_000.0, 5_000.0, 0.004, None) == (0.0, "nvml")


def test_flop_profile_of_a_recurrent_model_on_cuda_runs_with_cudnn_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # cuDNN refuses an RNN's backward in eval mode: flop_profile called on CUDA raised where explanations did
    # not; the same workaround as the explanations' must be entered around the measurement
    import xaudit.explain._flops as flops
    import xaudit.explain._model_call as model_call

    seen = []
    real = flops._measure_flops

    def spy(model: nn.Module, sample: torch.Tensor, target: int) -> object:
        seen.append(torch.backends.cudnn.enabled)
        return real(model, sample, target)

    monkeypatch.setattr(flops, "_measure_flops", spy)
    monkeypatch.setattr(model_call, "needs_cudnn_rnn_workaround", lambda model, device: True)

    class LastStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0][:, -1]

    with torch.backends.cudnn.flags(enabled=True):
        p = xe.flop_profile(LastStep().eval(), torch.rand(1, 5, 3))
        assert torch.backends.cudnn.enabled
    assert seen == [False] and p.forward == 2 * 5 * 3 * 4 * (3 + 4)


def test_nvml_readings_are_taken_through_pynvml_in_its_units(monkeypatch: pytest.MonkeyPatch) -> None:
    # no NVIDIA GPU here: a stand-in pynvml with NVML's units (millijoules since driver load, milliwatts)
    import types

    from xaudit.explain._cost import _nvml_energy_mj, _nvml_power_w

    class NVMLError(Exception):
        pass

    asked: list[object] = []
    fake = types.SimpleNamespace(NVMLError=NVMLError, nvmlInit=lambda: None,
                                 nvmlDeviceGetHandleByIndex=lambda index: asked.append(index) or ("gpu", index),
                                 nvmlDeviceGetTotalEnergyConsumption=lambda handle: 123456,
                                 nvmlDeviceGetPowerUsage=lambda handle: 250000)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    device = torch.device("cuda", 1)
    assert _nvml_energy_mj(device) == 123456.0 and _nvml_power_w(device) == 250.0 and asked == [1, 1]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert xe.energy_source_for(device) == "nvml"

    def refused(handle: object) -> int:
        raise NVMLError("Not Supported")

    fake.nvmlDeviceGetPowerUsage = refused
    assert _nvml_power_w(device) is None


def test_nvml_reads_the_gpu_cuda_visible_devices_maps_to(monkeypatch: pytest.MonkeyPatch) -> None:
    # NVML numbers every GPU on the machine, torch only the visible ones: with CUDA_VISIBLE_DEVICES=2, cuda:0 read
    # physical GPU 0's energy
    import types

    from xaudit.explain._cost import _nvml_energy_mj, _nvml_power_w

    class NVMLError(Exception):
        pass

    fake = types.SimpleNamespace(NVMLError=NVMLError, nvmlInit=lambda: None,
                                 nvmlDeviceGetHandleByIndex=lambda index: ("index", index),
                                 nvmlDeviceGetHandleByUUID=lambda uuid: ("uuid", uuid),
                                 nvmlDeviceGetTotalEnergyConsumption=lambda handle: {("index", 2): 7.0,
                                                                                     ("uuid", "GPU-abc"): 9.0}[handle])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-abc")
    assert _nvml_energy_mj(torch.device("cuda", 0)) == 7.0
    assert _nvml_energy_mj(torch.device("cuda", 1)) == 9.0
    assert _nvml_power_w(torch.device("cuda", 0)) is None  # this pynvml has no power reading: None, not a crash


def test_the_energy_source_without_a_usable_cuda_is_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    # with pynvml installed and no CUDA, "cuda" raised torch's AssertionError and "cuda:0" answered nvml
    import types

    fake = types.SimpleNamespace(NVMLError=RuntimeError, nvmlInit=lambda: None,
                                 nvmlDeviceGetHandleByIndex=lambda index: index,
                                 nvmlDeviceGetTotalEnergyConsumption=lambda handle: 1.0)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert xe.energy_source_for("cuda") == xe.energy_source_for("cuda:0") == "estimate"
