"""Every registered explanation method on a CNN and a GRU on CUDA, with what each cost (issue #3).

A prepared device check of at most ~5 minutes, without network: trains the built-in CNN on sklearn's
bundled 8×8 digits and the built-in GRU on digits-seq (8 steps × 8 features) for a few epochs on the device,
then explains a few test inputs with every method in the registry (the settings of ``bench_explain.py``)
and prints, per method, what :class:`xaudit.explain.Cost` measured there: ms/sample (CUDA events),
peak device memory (``torch.cuda.max_memory_allocated`` above the start), energy and its source (NVML
when ``pynvml`` is importable, otherwise an estimate), and model evaluations.

It also checks the cuDNN RNN workaround on the GRU (captum #564: cuDNN refuses RNN backward in eval mode):
xaudit must run every gradient method on the GRU, and the same captum call made directly, in eval mode
with cuDNN on, is shown as the control (it is expected to raise). Then three checks with oracles:

- FLOPs: a GRU, an LSTM and an RNN (2 layers, bidirectional) counted on the device (through ``flop_profile``,
  through cuDNN's fused kernel, with cuDNN off) must equal the analytic formula, which equals the counter's
  own count of the decomposed layers on CPU;
- memory budget: every method on a 32×32 CNN under a small budget, and IG with 128 steps on 2,000 inputs of
  32×32 under 256 MiB, must stay within the budget (peak device memory);
- energy: how often NVML's energy counter steps; a 2.5 s call measured by the counter, a 5 ms call by power ×
  time (``nvml_power``), neither zero;
- the model is left as it was: parameters, mode, device and the cuDNN switch.

Run: ``python tests/benchmarks/gpu_check.py [--device cuda] [--samples 16] [--epochs 3] [--budget-s 270]``.
``--device cpu`` runs the same path on the CPU (to shake out bugs without a GPU). Exits 0 with "no CUDA
device: skipped" when CUDA is asked for and absent; exits 1 if any method fails, a cost on CUDA is not
measured the CUDA way, or the time budget runs out first.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import traceback
import warnings

import torch

import xaudit.explain as xe
from xaudit.explain._base import needs_cudnn_rnn_workaround

SKIPPED = "no CUDA device: skipped"


def cuda_missing(device: torch.device) -> bool:
    """True when ``device`` is a CUDA device and this machine has none (the check is then skipped)."""
    return device.type == "cuda" and not torch.cuda.is_available()


def cudnn_control(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> str:
    """What captum called directly on the GRU does in eval mode with cuDNN on (the failure xaudit avoids)."""
    from captum.attr import Saliency

    if not needs_cudnn_rnn_workaround(model, device):
        return f"not needed on {device.type} (xaudit leaves cuDNN as it is)"
    model.eval()
    with torch.backends.cudnn.flags(enabled=True):
        try:
            Saliency(model).attribute(x, target=0)
        except RuntimeError as err:
            return f"direct captum raised as expected: {str(err).splitlines()[0][:90]}"
    return "direct captum did NOT raise in eval mode with cuDNN on (this cuDNN/torch accepts it)"


def check_cost(exp: xe.Explanation, device: torch.device) -> list[str]:
    """Problems with a Cost measured on ``device`` (empty when it was measured the way the device needs)."""
    c = exp.cost
    problems = []
    if device.type == "cuda":
        if not c.device.startswith("cuda") or c.memory_source != "cuda_max_memory_allocated":
            problems.append(f"cost measured as device={c.device}, memory_source={c.memory_source}")
    if not (c.wall_s > 0 and math.isfinite(c.wall_s)):
        problems.append(f"wall time {c.wall_s}")
    if not torch.isfinite(exp.attributions).all():
        problems.append("non-finite attributions")
    return problems


def flops_check(device: torch.device) -> list[str]:
    """The FLOPs of recurrent layers on ``device`` against the analytic formula: through ``flop_profile`` as a
    user calls it (eval mode, cuDNN on: xaudit turns cuDNN off for it), through cuDNN's fused kernel (train
    mode, where cuDNN has a backward: the counter sees nothing and the formula stands in) and with cuDNN off."""
    from xaudit.explain._flops import _measure_flops, rnn_backward_flops, rnn_forward_flops

    class LastStep(torch.nn.Module):
        def __init__(self, rnn: torch.nn.RNNBase) -> None:
            super().__init__()
            self.rnn = rnn

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(x)[0][:, -1]

    problems = []
    steps, inp, hidden = 12, 8, 32
    print("\n### FLOPs of recurrent layers (2 layers, bidirectional; one sample of 12 steps)\n")
    print("| layer | how | forward | backward | formula fwd / bwd | analytic? |")
    print("|---|---|---|---|---|---|")
    for cls in (torch.nn.GRU, torch.nn.LSTM, torch.nn.RNN):
        torch.manual_seed(0)
        rnn = cls(inp, hidden, num_layers=2, bidirectional=True, batch_first=True)
        fwd, bwd = rnn_forward_flops(rnn, steps), rnn_backward_flops(rnn, steps)
        ways = {"flop_profile, eval, cuDNN on": (False, True, True)}
        if device.type == "cuda":
            ways["fused cuDNN (train mode)"] = (True, True, False)
        ways["cuDNN off, eval"] = (False, False, False)
        for how, (train, cudnn, public) in ways.items():
            model = LastStep(copy.deepcopy(rnn)).to(device).train(train)
            sample = torch.rand(1, steps, inp, device=device)
            with torch.backends.cudnn.flags(enabled=cudnn):
                p = xe.flop_profile(model, sample) if public else _measure_flops(model, sample, 0)
            print(f"| {cls.__name__} | {how} | {p.forward:.0f} | {p.backward:.0f} | {fwd:.0f} / {bwd:.0f} | "
                  f"{', '.join(p.analytic_layers) or 'no (counted)'} |")
            if (p.forward, p.backward) != (fwd, bwd):
                problems.append(f"FLOPs of {cls.__name__} ({how}): {p.forward:.0f}/{p.backward:.0f}, "
                                f"formula {fwd:.0f}/{bwd:.0f}")
    return problems


def energy_check(device: torch.device) -> list[str]:
    """NVML: how often its energy counter steps; a >2 s call's counter energy against power × time; a short
    call's energy (power × time, labelled nvml_power) is not zero."""
    from xaudit.explain._cost import _nvml_energy_mj, _nvml_power_w

    if device.type != "cuda" or _nvml_energy_mj(device) is None:
        print(f"\nenergy check: no NVML on {device}: skipped")
        return []
    problems = []
    changes, last = [], _nvml_energy_mj(device)
    end = time.perf_counter() + 1.0
    while time.perf_counter() < end:
        e = _nvml_energy_mj(device)
        if e != last:
            changes.append(time.perf_counter())
            last = e
    period = (changes[-1] - changes[0]) / (len(changes) - 1) if len(changes) > 1 else float("nan")
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)

    def work(seconds: float) -> None:
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            for _ in range(10):
                a @ a
            torch.cuda.synchronize(device)

    with xe.CostMeter(n_samples=1, device=device) as long_call:
        work(2.5)
    power = _nvml_power_w(device)
    c = long_call.cost
    with xe.CostMeter(n_samples=1, device=device) as short_call:
        work(0.005)
    s = short_call.cost
    print(f"\n### Energy (NVML) on {device}\n\nenergy counter: {len(changes)} steps in 1 s idle "
          f"(one every {period * 1e3:.0f} ms)\n2.5 s of bf16 matrix products: {c.energy_j:.1f} J ({c.energy_source}), "
          f"{c.energy_j / c.wall_s:.0f} W on average; power reading afterwards {power:.0f} W\n"
          f"a {s.wall_s * 1e3:.1f} ms call: {s.energy_j:.3f} J ({s.energy_source})")
    if c.energy_source != "nvml" or not c.energy_j > 0:
        problems.append(f"energy of a 2.5 s call: {c.energy_j} J from {c.energy_source}")
    if s.energy_source != "nvml_power" or not s.energy_j > 0:
        problems.append(f"energy of a short call: {s.energy_j} J from {s.energy_source}")
    return problems


def budget_check(device: torch.device, budget: int = 32 * 2**20) -> list[str]:
    """Every method on an (untrained) 32×32 CNN under ``budget``, and IG 128 steps × 2,000 inputs under 256 MiB."""
    from xaudit.models import build_model

    problems = []
    torch.manual_seed(0)
    model = build_model("cnn", (1, 32, 32), 10, seed=0, hidden=8).to(device).eval()
    x = torch.rand(256, 1, 32, 32, device=device)
    background = torch.rand(20, 1, 32, 32, device=device)
    print(f"\n### Memory budget on {device}: 32×32 CNN, 256 inputs, budget {budget / 2**20:.0f} MiB\n")
    print("| method | peak MiB | within budget |")
    print("|---|---|---|")
    for method in xe.available_methods():
        explainer = xe.get_explainer(method)(model)
        if explainer.unsupported_reason(tuple(x.shape[1:])):
            continue
        try:
            if explainer.needs_background:
                explainer.fit(background)
            n = 16 if method in ("shap_kernel", "lime", "shap_partition") else len(x)
            exp = explainer.explain(x[:n], 0, memory_budget=budget)
        except Exception as err:  # a refusal (budget too small for one sample) is reported, not hidden
            print(f"| {method} | {type(err).__name__}: {str(err)[:70]} | |")
            problems.append(f"budget check: {method} raised {type(err).__name__}: {str(err)[:200]}")
            continue
        peak = exp.cost.peak_rss_bytes
        print(f"| {method} | {peak / 2**20:.1f} | {'yes' if peak <= budget else 'NO'} |")
        if peak > budget:
            problems.append(f"budget check: {method} peaked at {peak / 2**20:.1f} MiB over {budget / 2**20:.0f} MiB")
    big = torch.rand(2000, 1, 32, 32, device=device)
    exp = xe.explain(model, big, "integrated_gradients", target=0, n_steps=128, memory_budget="256MiB")
    peak = exp.cost.peak_rss_bytes
    print(f"\nIG 128 steps on 2,000 inputs of 32×32 under 256 MiB: peak {peak / 2**20:.1f} MiB, "
          f"{exp.cost.wall_s:.2f} s ({exp.cost.memory_source})")
    if peak > 256 * 2**20:
        problems.append(f"IG 2000×32×32 peaked at {peak / 2**20:.1f} MiB over 256 MiB")
    return problems


def guard_check(model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """Explaining must leave the model as it was: parameters, mode, device and the cuDNN switch."""
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    training, cudnn = model.training, torch.backends.cudnn.enabled
    device = next(model.parameters()).device
    for method in ("saliency", "integrated_gradients", "smoothgrad", "shap_gradient"):
        xe.explain(model, x, method, background=x)
    problems = []
    if any(not torch.equal(before[k], v) for k, v in model.state_dict().items()):
        problems.append("explaining changed the model's parameters")
    if (model.training, torch.backends.cudnn.enabled, next(model.parameters()).device) != (training, cudnn, device):
        problems.append("explaining changed the model's mode, the cuDNN switch or the device")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--samples", type=int, default=16, help="inputs explained per method")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=270.0, help="stop starting new methods after this")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if cuda_missing(device):
        print(SKIPPED)
        return 0
    if device.type == "cpu":  # the shake-down path: one thread, as the CPU benchmark (tiny models, shared cores)
        torch.set_num_threads(1)
    start = time.perf_counter()
    warnings.filterwarnings("ignore")  # captum's per-call hook notices
    from bench_explain import PARAMS, train_subjects  # the same subjects and settings as the CPU benchmark

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# gpu_check on {device} ({name}); torch {torch.__version__}; energy source "
          f"{xe.energy_source_for(device)}")
    subjects = train_subjects(device, epochs=args.epochs, which=("cnn8", "gru"))
    failures: list[str] = []
    for s in subjects:
        x = s.x[:args.samples]
        with torch.no_grad():
            targets = s.model(x).argmax(-1)
        print(f"\n### {s.name} on {device} (test accuracy {s.accuracy:.3f}; {len(x)} inputs)\n")
        print("| method | ms/sample | evals/sample (fwd+bwd) | MFLOPs/sample | peak MiB | memory source "
              "| J/sample | energy source |")
        print("|---|---|---|---|---|---|---|---|")
        for method in xe.available_methods():
            if time.perf_counter() - start > args.budget_s:
                failures.append(f"time budget of {args.budget_s:.0f} s spent before {s.name}: {method}")
                break
            explainer = xe.get_explainer(method)(s.model, **PARAMS.get(method, {}))
            reason = explainer.unsupported_reason(tuple(x.shape[1:]))
            if reason:
                print(f"| {method} | unsupported: {reason[:80]} | | | | | | |")
                continue
            try:
                if explainer.needs_background:
                    explainer.fit(s.centroids if method == "shap_kernel" else s.background)
                explainer.explain(x[:2], targets[:2])  # first-call overheads (kernels, cuBLAS handles)
                exp = explainer.explain(x, targets)
            except Exception:  # report every method, then fail at the end
                failures.append(f"{s.name}: {method} raised\n{traceback.format_exc(limit=3)}")
                print(f"| {method} | FAILED | | | | | | |")
                continue
            failures += [f"{s.name}: {method}: {p}" for p in check_cost(exp, device)]
            c = exp.cost.per_sample()
            energy, flops = c["energy_j_per_sample"], c["flops_per_sample"]
            print(f"| {method} | {c['wall_s_per_sample'] * 1e3:.3f} | {c['forward_evals_per_sample']:.0f}+"
                  f"{c['backward_evals_per_sample']:.0f} | {'—' if flops is None else format(flops / 1e6, '.3f')} "
                  f"| {exp.cost.peak_rss_bytes / 2**20:.1f} "
                  f"| {c['memory_source']} | {'—' if energy is None else format(energy, '.4f')} "
                  f"| {c['energy_source']} |")
        if any(isinstance(m, torch.nn.RNNBase) for m in s.model.modules()):
            print(f"\ncuDNN RNN workaround: xaudit ran every supported gradient method above on the GRU; "
                  f"control: {cudnn_control(s.model, x[:4], device)}")
        failures += [f"{s.name}: {p}" for p in guard_check(s.model, x[:8])]
    for check in (flops_check, energy_check, budget_check):
        if time.perf_counter() - start > args.budget_s:
            failures.append(f"time budget of {args.budget_s:.0f} s spent before {check.__name__}")
            break
        try:
            failures += check(device)
        except Exception:
            failures.append(f"{check.__name__} raised\n{traceback.format_exc(limit=4)}")
    for failure in failures:
        print("FAIL:", failure)
    print(f"\n{'FAIL' if failures else 'OK'}: {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
