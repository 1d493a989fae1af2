"""Every registered explanation method on a CNN and a GRU on CUDA, with what each cost (issue #3).

A prepared device check of at most ~5 minutes, without network: trains the built-in CNN on sklearn's
bundled 8×8 digits and the built-in GRU on digits-seq (8 steps × 8 features) for a few epochs on the device,
then explains a few test inputs with every method in the registry (the settings of ``bench_explain.py``)
and prints, per method, what :class:`xaudit.explain.Cost` measured there: ms/sample (CUDA events),
peak device memory (``torch.cuda.max_memory_allocated`` above the start), energy and its source (NVML
when ``pynvml`` is importable, otherwise an estimate), and model evaluations.

It also checks the cuDNN RNN workaround on the GRU (captum #564: cuDNN refuses RNN backward in eval mode):
xaudit must run every gradient method on the GRU, and the same captum call made directly, in eval mode
with cuDNN on, is shown as the control (it is expected to raise).

Run: ``python tests/benchmarks/gpu_check.py [--device cuda] [--samples 16] [--epochs 3] [--budget-s 270]``.
``--device cpu`` runs the same path on the CPU (to shake out bugs without a GPU). Exits 0 with "no CUDA
device: skipped" when CUDA is asked for and absent; exits 1 if any method fails, a cost on CUDA is not
measured the CUDA way, or the time budget runs out first.
"""

from __future__ import annotations

import argparse
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
        print("| method | ms/sample | evals/sample (fwd+bwd) | peak MiB | memory source | J/sample | energy source |")
        print("|---|---|---|---|---|---|---|")
        for method in xe.available_methods():
            if time.perf_counter() - start > args.budget_s:
                failures.append(f"time budget of {args.budget_s:.0f} s spent before {s.name}: {method}")
                break
            explainer = xe.get_explainer(method)(s.model, **PARAMS.get(method, {}))
            reason = explainer.unsupported_reason(tuple(x.shape[1:]))
            if reason:
                print(f"| {method} | unsupported: {reason[:80]} | | | | | |")
                continue
            try:
                if explainer.needs_background:
                    explainer.fit(s.centroids if method == "shap_kernel" else s.background)
                explainer.explain(x[:2], targets[:2])  # first-call overheads (kernels, cuBLAS handles)
                exp = explainer.explain(x, targets)
            except Exception:  # report every method, then fail at the end
                failures.append(f"{s.name}: {method} raised\n{traceback.format_exc(limit=3)}")
                print(f"| {method} | FAILED | | | | | |")
                continue
            failures += [f"{s.name}: {method}: {p}" for p in check_cost(exp, device)]
            c = exp.cost.per_sample()
            energy = c["energy_j_per_sample"]
            print(f"| {method} | {c['wall_s_per_sample'] * 1e3:.3f} | {c['forward_evals_per_sample']:.0f}+"
                  f"{c['backward_evals_per_sample']:.0f} | {exp.cost.peak_rss_bytes / 2**20:.1f} "
                  f"| {c['memory_source']} | {'—' if energy is None else format(energy, '.4f')} "
                  f"| {c['energy_source']} |")
        if any(isinstance(m, torch.nn.RNNBase) for m in s.model.modules()):
            print(f"\ncuDNN RNN workaround: xaudit ran every supported gradient method above on the GRU; "
                  f"control: {cudnn_control(s.model, x[:4], device)}")
    for failure in failures:
        print("FAIL:", failure)
    print(f"\n{'FAIL' if failures else 'OK'}: {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
