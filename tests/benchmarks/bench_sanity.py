"""Reproduce the cascading-randomization table and deletion AUCs on a digits CNN (issue #4).

Trains the built-in 3-conv CNN on the sklearn digits, then for saliency, guided backprop,
input × gradient, integrated gradients and DeepLift prints the Spearman of |attributions| against the
trained model after randomizing the top 1, 2, …, all layers, the SSIM after full randomization, the
deletion AUC (and a random map's), and what each metric cost next to what the explanation cost.
Exits 1 if the qualitative expectations fail:

- saliency passes, below 0.3 after full randomization;
- guided backprop fails, above 0.5 (mean) with only the top layers randomized;
- input × gradient, IG and DeepLift stay above 0.6 fully randomized and are flagged as input-dominated;
- a random map's deletion AUC is 0.5 ± 0.1 and IG's is well below it.

Run: ``python tests/benchmarks/bench_sanity.py [--epochs 10] [--samples 32]``. A method not yet
registered in ``xaudit.explain`` is stood in for by captum's class called directly (said in the output).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
from captum import attr as captum_attr
from torch import nn

import xaudit.explain as xe

METHODS = ("saliency", "guided_backprop", "input_x_gradient", "integrated_gradients", "deeplift")
INPUT_DOMINATED = ("input_x_gradient", "integrated_gradients", "deeplift")
#: captum class standing in for a method that is not registered yet
_STANDINS = {"saliency": "Saliency", "guided_backprop": "GuidedBackprop", "input_x_gradient": "InputXGradient",
             "integrated_gradients": "IntegratedGradients", "deeplift": "DeepLift"}


class _CaptumStandIn(xe.Explainer):
    """A captum attribution class called directly on the contract (unregistered: no ``name`` in its body)."""

    captum_cls: Any = None

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   ctx: xe.CallContext) -> torch.Tensor:
        return self.captum_cls(model).attribute(inputs, target=targets)


def make_explainer(name: str, model: nn.Module, **params: Any) -> tuple[xe.Explainer, str]:
    """The registered method, or a captum stand-in while it is not registered; and which one it is."""
    if name in xe.available_methods():
        return xe.get_explainer(name)(model, **params), "xaudit"
    cls = type(f"StandIn_{name}", (_CaptumStandIn,), {"captum_cls": getattr(captum_attr, _STANDINS[name])})
    cls.name = name  # set after class creation, so the stand-in never enters the registry
    return cls(model), "captum stand-in"


def train_digits_cnn(*, epochs: int = 10, hidden: int = 32, seed: int = 0) -> tuple[nn.Module, torch.Tensor, float]:
    """The built-in CNN trained on digits: (model in eval mode, test images, test accuracy)."""
    try:
        from xaudit.models import TrainConfig, build_model, load_dataset, train_model
    except ImportError:  # while xaudit.models' public exports are being written
        from xaudit.models._data import load_dataset
        from xaudit.models._nets import build_model
        from xaudit.models._train import TrainConfig, train_model

    data = load_dataset("digits")
    model = build_model("cnn", data.input_shape, data.n_classes, seed=seed, hidden=hidden)
    train_model(model, data, TrainConfig(epochs=epochs, seed=seed))
    model.eval()
    with torch.no_grad():
        accuracy = float((model(data.x_test).argmax(-1) == data.y_test).float().mean())
    return model, data.x_test, accuracy


#: Metrics the benchmark runs by default (every per-method metric that applies to these methods).
METRICS = ("deletion_auc", "insertion_auc", "infidelity", "max_sensitivity", "model_randomization")


@dataclass(frozen=True)
class Row:
    method: str
    source: str
    explanation: xe.Explanation
    results: dict[str, xe.MetricResult]

    @property
    def randomization(self) -> xe.RandomizationResult:
        r = self.results["model_randomization"]
        assert isinstance(r, xe.RandomizationResult)
        return r

    @property
    def deletion(self) -> xe.CurveResult:
        r = self.results["deletion_auc"]
        assert isinstance(r, xe.CurveResult)
        return r


def measure(model: nn.Module, x: torch.Tensor, methods: tuple[str, ...] = METHODS,
            params: dict[str, dict[str, Any]] | None = None,
            metrics: tuple[str, ...] = METRICS) -> tuple[list[Row], xe.CurveResult]:
    """``metrics`` (which must include deletion and randomization) for every method (``params``: per-method
    constructor arguments), and the random-map reference, on inputs ``x``."""
    with torch.no_grad():
        targets = model(x).argmax(-1)
    rows = []
    for name in methods:
        explainer, source = make_explainer(name, model, **(params or {}).get(name, {}))
        exp = explainer.explain(x, targets)
        rows.append(Row(name, source, exp, xe.evaluate_quality(model, exp, explainer=explainer, metrics=metrics)))
    return rows, xe.random_map_auc(model, x, targets)


def failures(rows: list[Row], random: xe.CurveResult) -> list[str]:
    """The issue's qualitative expectations that do not hold (empty = reproduced)."""
    by = {r.method: r for r in rows}
    out = []
    if "saliency" in by:
        s = by["saliency"].randomization
        if not (s.passed and s.spearman[-1] < 0.3):
            out.append(f"saliency should pass with final Spearman < 0.3, got {s.spearman} passed={s.passed}")
    if "guided_backprop" in by:
        g = by["guided_backprop"].randomization
        top = sum(g.spearman[:-1]) / max(len(g.spearman) - 1, 1)
        if g.passed or top <= 0.5:
            out.append(f"guided_backprop should fail with top-layer Spearman > 0.5, got {g.spearman} passed={g.passed}")
    for name in INPUT_DOMINATED:
        if name in by:
            r = by[name].randomization
            if not (r.spearman[-1] > 0.6 and r.dominated_by_input and not r.passed):
                out.append(f"{name} should stay > 0.6 fully randomized and be flagged input-dominated, "
                           f"got {r.spearman} dominated={r.dominated_by_input}")
    if abs(random.value - 0.5) > 0.1:
        out.append(f"a random map's deletion AUC should be 0.5 ± 0.1, got {random.value:.3f}")
    if "integrated_gradients" in by and by["integrated_gradients"].deletion.value > random.value - 0.2:
        out.append(f"IG's deletion AUC should be well below the random map's {random.value:.2f}, "
                   f"got {by['integrated_gradients'].deletion.value:.3f}")
    return out


def table(rows: list[Row], random: xe.CurveResult) -> str:
    """The randomization cascade, sanity outcome and deletion AUC per method."""
    steps = len(rows[0].randomization.spearman) if rows else 0
    heads = [f"top-{k}" for k in range(1, steps)] + ["all"]
    lines = [f"{'method':22} " + " ".join(f"{h:>7}" for h in heads)
             + f" {'SSIM all':>8} {'sanity':>8} {'del AUC':>8} {'ins AUC':>8}  source"]
    for r in rows:
        rnd = r.randomization
        sanity = "pass" if rnd.passed else ("input" if rnd.dominated_by_input else "fail")
        ins = r.results.get("insertion_auc")
        lines.append(f"{r.method:22} " + " ".join(f"{v:7.2f}" for v in rnd.spearman)
                     + f" {rnd.ssim[-1]:8.2f} {sanity:>8} {r.deletion.value:8.3f}"
                     + (f" {ins.value:8.3f}" if ins else f" {'':8}") + f"  {r.source}")
    lines.append(f"{'random map':22} " + " " * (8 * steps) + f" {'':8} {'':>8} {random.value:8.3f}")
    return "\n".join(lines)


def cost_table(rows: list[Row]) -> str:
    """Milliseconds per sample: the explanation, then each metric scoring it (its own cost)."""
    names = list(rows[0].results) if rows else []
    lines = [f"{'method':22} {'explain':>9} " + " ".join(f"{n[:13]:>13}" for n in names)]
    for r in rows:
        per = [1e3 * r.results[n].cost.wall_s / len(r.explanation) for n in names]
        lines.append(f"{r.method:22} {1e3 * r.explanation.cost.wall_s / len(r.explanation):9.3f} "
                     + " ".join(f"{v:13.3f}" for v in per))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, x_test, accuracy = train_digits_cnn(epochs=args.epochs, hidden=args.hidden, seed=args.seed)
    t1 = time.perf_counter()
    rows, random = measure(model, x_test[:args.samples])
    t2 = time.perf_counter()
    print(f"digits CNN (hidden {args.hidden}, {args.epochs} epochs): test accuracy {accuracy:.3f}, "
          f"trained in {t1 - t0:.1f} s; checks on {args.samples} test images in {t2 - t1:.1f} s "
          f"({torch.get_num_threads()} torch threads)")
    print("Spearman of |attr| against the trained model after randomizing the top k layers:")
    print(table(rows, random))
    print("cost, ms per sample (each metric's own, next to the explanation's):")
    print(cost_table(rows))
    for r in rows:
        print("-", xe.method_verdict(r.results, random_deletion_auc=random.value))
    frontier = xe.pareto_frontier(xe.frontier_point(r.method, r.explanation.cost, r.results,
                                                    random_deletion_auc=random.value) for r in rows)
    print("Pareto set over (faithfulness, sanity, cost):", ", ".join(frontier.pareto))
    for rec in xe.recommend(frontier.points):
        print("-", rec.reason)
    bad = failures(rows, random)
    for line in bad:
        print("FAIL:", line)
    print("reproduced" if not bad else "NOT reproduced")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
