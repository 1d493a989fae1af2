"""Sanity and consistency checks: cascading model randomization, seed stability and method agreement.

The randomization check (Adebayo et al. 2018, §3) re-initialises the model's parametrized layers from the
output down, cumulatively, re-runs the method after each step and compares the new map with the trained
model's: Spearman rank correlation of |attributions| (per sample, averaged) and SSIM of the maps scaled to
[0, 1]. A method whose map survives the destruction of what the model learned is showing something else —
typically the input itself (input × gradient, IG and DeepLift on a digits CNN stay near 0.8).

All randomization happens on a deep copy; the user's model is never touched.
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from xaudit.models._errors import XauditError

from ._base import Explainer, Explanation
from ._quality import MetricContext, MetricResult, QualityMetric
from ._quality_stats import mean_finite, relevance_map, spearman_rows, ssim_maps

#: Fewest seeds a stability estimate is made from.
MIN_SEEDS = 5


# ---------------------------------------------------------------------------------------------- layers


def parametrized_layers(model: nn.Module, sample: torch.Tensor) -> list[str]:
    """Names of the modules that own parameters, in the order a forward pass of ``sample`` first calls them.

    Registration order is not execution order (a head may be defined first), so the order is observed.
    A module the forward pass never calls is left out of the list; its parameters are randomized with its
    nearest called ancestor's (:func:`layer_parameters`): ``nn.MultiheadAttention`` reads ``out_proj.weight``
    without calling ``out_proj``.
    """
    if isinstance(model, torch.jit.ScriptModule):
        # the call order is observed with forward hooks, which TorchScript modules cannot take
        raise XauditError("the model-randomization check cannot run on a TorchScript model (it needs forward "
                          "hooks to find the layer order): pass the nn.Module, e.g. a file saved by `xaudit "
                          "train` or a module:callable factory with --state-dict")
    owners = {m: name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))}
    seen: list[str] = []

    def record(module: nn.Module, _args: Any, _out: Any) -> None:
        name = owners[module]
        if name not in seen:
            seen.append(name)

    handles = [m.register_forward_hook(record) for m in owners]
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    return seen


def layer_parameters(model: nn.Module, layers: Sequence[str]) -> dict[str, list[str]]:
    """For each called layer, the modules randomized with it: itself and every parametrized descendant that is
    never called on its own (nearest called ancestor wins). Parametrized modules with no called ancestor among
    ``layers`` (their weights read by a parameterless parent's ``forward``) go with the first layer the pass
    calls, so the fully randomized model keeps no trained weight."""
    called = set(layers)
    groups: dict[str, list[str]] = {name: [name] for name in layers}
    for name, module in model.named_modules():
        if name in called or not any(True for _ in module.parameters(recurse=False)):
            continue
        parts = name.split(".")
        owner = next((".".join(parts[:k]) for k in range(len(parts) - 1, -1, -1) if ".".join(parts[:k]) in called),
                     None)
        if owner is None and layers:
            owner = layers[0]
        if owner is not None:
            groups[owner].append(name)
    return groups


def reinitialize(module: nn.Module, seed: int) -> None:
    """Re-draw ``module``'s own parameters under ``seed`` without touching the global random stream.

    The layer's own ``reset_parameters()`` gives the distribution it was initialised from; a module
    without one gets each parameter re-drawn from a normal distribution with the parameter's own std.
    """
    with torch.random.fork_rng(devices=[p.device for p in module.parameters() if p.device.type == "cuda"]):
        torch.manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            return
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                std = float(p.std()) if p.numel() > 1 else 0.0
                p.normal_(0.0, std if std > 0 else 0.01)


def layer_seed(seed: int, layer: str) -> int:
    """The seed a layer is re-drawn under: mixed with the layer's name, so it never equals the small seed
    (0, 1, 42…) the model was likely initialised with — re-drawing under that would give the trained
    model's *initial* weights back, and a linear model its very own."""
    return zlib.crc32(f"xaudit-randomization:{seed}:{layer}".encode())


def rebuild_explainer(explainer: Explainer, model: nn.Module, background: torch.Tensor | None) -> Explainer:
    """The same configured method on a copy of its model.

    The explainer is deep-copied with every module, parameter and buffer of its original model mapped to
    the one of the same name in ``model``: nested references (a Grad-CAM layer, a wrapped base method's
    model) follow to the copy, and the rebuilt method can never hook or read the original. A method that
    needs background data is fitted again, since what it fitted came from the original model.
    """
    original = explainer.model
    memo: dict[int, Any] = {id(m): model.get_submodule(n) for n, m in original.named_modules()}
    for tensors in ("named_parameters", "named_buffers"):
        copied = dict(getattr(model, tensors)(remove_duplicate=False))
        for name, t in getattr(original, tensors)(remove_duplicate=False):
            memo[id(t)] = copied[name]
    new = copy.deepcopy(explainer, memo)
    if new.needs_background:
        if background is None:
            raise XauditError(f"{explainer.name} needs background data to be re-run on the randomized model: "
                              "pass background=<the data it was fitted on>")
        new.fit(background)
    return new


# ---------------------------------------------------------------------------------------------- randomization


@dataclass(frozen=True, kw_only=True)
class RandomizationResult(MetricResult):
    """Cascading randomization: per step (top layer, top two, …, all), the layer randomized at that step,
    the mean Spearman of |attributions| and the mean SSIM against the trained model's map.

    ``value`` is the final (fully randomized) Spearman. ``passed`` and ``dominated_by_input`` follow the
    thresholds in ``config``; ``verdict`` says it in words.
    """

    layers: tuple[str, ...]
    spearman: tuple[float, ...]
    ssim: tuple[float, ...]
    passed: bool
    dominated_by_input: bool
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "layers": list(self.layers), "spearman": list(self.spearman),
                "ssim": list(self.ssim), "passed": self.passed, "dominated_by_input": self.dominated_by_input,
                "verdict": self.verdict}


class ModelRandomization(QualityMetric):
    """Cascading model-randomization sanity check (Adebayo et al. 2018, §3.1, cascading randomization).

    A method passes when its map decorrelates from the trained one as the weights are destroyed: the
    final (all layers randomized) Spearman is below ``final_threshold`` (0.3) *and* the mean Spearman over
    the partial steps (top layers only) is below ``cascade_threshold`` (0.5). The second condition catches
    maps that ignore the top layers, like guided backprop's (0.70/0.78/0.75 on a digits CNN, although it
    ends at 0.19); saliency (0.51/0.32/0.21/−0.03) passes both. A final Spearman above ``input_threshold``
    (0.6) flags the map as dominated by the input (input × gradient, IG, DeepLift: ≈ 0.8 fully randomized).
    """

    name = "model_randomization"
    paper = "Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018, §3.1"
    needs_explainer = True
    higher_is_better = False
    result_type = RandomizationResult

    def __init__(self, *, final_threshold: float = 0.3, cascade_threshold: float = 0.5,
                 input_threshold: float = 0.6) -> None:
        for label, v in (("final_threshold", final_threshold), ("cascade_threshold", cascade_threshold),
                         ("input_threshold", input_threshold)):
            if not -1.0 <= v <= 1.0:
                raise XauditError(f"{label} is a rank correlation and must be in [-1, 1], got {v}")
        self.final_threshold = float(final_threshold)
        self.cascade_threshold = float(cascade_threshold)
        self.input_threshold = float(input_threshold)

    def get_params(self) -> dict[str, Any]:
        return {"final_threshold": self.final_threshold, "cascade_threshold": self.cascade_threshold,
                "input_threshold": self.input_threshold}

    def _compute(self, ctx: MetricContext, explanations: Sequence[Explanation],
                 explainer: Explainer | None) -> dict[str, Any]:
        exp = explanations[0]
        assert explainer is not None and ctx.raw_model is not None
        x = exp.inputs
        layers = parametrized_layers(ctx.raw_model, x[:1].to(ctx.device))
        if not layers:
            raise XauditError("the model has no parametrized layers to randomize: the sanity check needs a "
                              "trained model with weights")
        trained, shape = relevance_map(exp.attributions, absolute=True)
        # a sample whose trained map is constant (a dead, all-zero map) has no ranking to lose: its correlation
        # would read 0, "decorrelated", so it is left out, and a method with no ranked sample cannot pass
        ranked = (trained.amax(1) > trained.amin(1)).numpy()
        if not ranked.any():
            steps = (math.nan,) * len(layers)
            return {"value": math.nan, "layers": tuple(reversed(layers)), "spearman": steps, "ssim": steps,
                    "passed": False, "dominated_by_input": False,
                    "verdict": (f"{exp.method} cannot pass the model-randomization check: its map on the trained "
                                "model is constant for every sample (e.g. all zero), so there is no ranking for "
                                "randomization to destroy.")}
        groups = layer_parameters(ctx.raw_model, layers)
        randomized = copy.deepcopy(ctx.raw_model)
        spearman, ssim = [], []
        for name in reversed(layers):
            for member in groups[name]:
                reinitialize(randomized.get_submodule(member), layer_seed(ctx.seed, member))
            again = rebuild_explainer(explainer, randomized, ctx.background).explain(x, exp.targets, seed=ctx.seed)
            ctx.add_cost(again.cost)
            other, _ = relevance_map(again.attributions, absolute=True)
            spearman.append(mean_finite(spearman_rows(trained, other)[ranked]))
            ssim.append(mean_finite(ssim_maps(trained, other, shape)[ranked]))
        return {"value": spearman[-1], "layers": tuple(reversed(layers)), "spearman": tuple(spearman),
                "ssim": tuple(ssim), **self.judge(exp.method, spearman)}

    def judge(self, method: str, spearman: Sequence[float]) -> dict[str, Any]:
        """``passed``, ``dominated_by_input`` and the ``verdict`` sentence for a cascade of Spearman values."""
        final = float(spearman[-1])
        cascade = float(np.mean(spearman[:-1])) if len(spearman) > 1 else None
        dominated = final > self.input_threshold
        top_only = cascade is not None and cascade >= self.cascade_threshold
        passed = final < self.final_threshold and not top_only
        if passed:
            verdict = (f"{method} passes the model-randomization check: its map decorrelates as the learned weights "
                       f"are destroyed (rank correlation {spearman[0]:.2f} after the top layer, {final:.2f} with "
                       "every layer randomized).")
        elif dominated:
            verdict = (f"{method} fails the model-randomization check: with every layer randomized its map still "
                       f"has rank correlation {final:.2f} with the trained model's — it mostly shows the input and "
                       "the architecture's own structure (a recurrent model's weight on recent time steps survives "
                       "randomization too), not what the model learned.")
        elif top_only:
            verdict = (f"{method} fails the model-randomization check: with only the top layers randomized its map "
                       f"keeps a mean rank correlation of {cascade:.2f} with the trained model's, so it barely "
                       "reflects what those layers learned.")
        else:
            verdict = (f"{method} fails the model-randomization check: its map keeps a rank correlation of "
                       f"{final:.2f} (threshold {self.final_threshold:.2f}) with every layer randomized.")
        return {"passed": passed, "dominated_by_input": dominated, "verdict": verdict}


# ---------------------------------------------------------------------------------------------- consistency


def _pairwise_spearman(maps: Sequence[torch.Tensor]) -> np.ndarray:
    """M×M matrix of the mean (over samples) Spearman between every pair of N×D relevance maps."""
    m = len(maps)
    out = np.eye(m)
    for i in range(m):
        for j in range(i + 1, m):
            out[i, j] = out[j, i] = mean_finite(spearman_rows(maps[i], maps[j]))
    return out


def _off_diagonal_mean(matrix: np.ndarray) -> float:
    return float(matrix[np.triu_indices(len(matrix), 1)].mean())


@dataclass(frozen=True, kw_only=True)
class StabilityResult(MetricResult):
    """Seed stability: ``value`` is the mean pairwise Spearman of |attributions| over the seeds run."""

    seeds: tuple[int, ...]
    matrix: tuple[tuple[float, ...], ...]
    min_pair: float

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "seeds": list(self.seeds), "matrix": [list(r) for r in self.matrix],
                "min_pair": self.min_pair}


class SeedStability(QualityMetric):
    """How much a stochastic method's map depends on its seed: mean pairwise Spearman of |attributions|
    across ``n_seeds`` (≥ 5) runs (1 = identical rankings). Smilkov et al. 2017 (SmoothGrad) motivate
    averaging noise away; this measures how far that succeeded."""

    name = "seed_stability"
    paper = "rank-correlation stability across seeds (cf. Smilkov et al. 2017; Adebayo et al. 2018)"
    needs_explainer = True
    higher_is_better = True
    result_type = StabilityResult

    def __init__(self, *, n_seeds: int = MIN_SEEDS) -> None:
        if int(n_seeds) < MIN_SEEDS:
            raise XauditError(f"seed stability needs at least {MIN_SEEDS} seeds for an estimate, got {n_seeds}: "
                              f"pass n_seeds={MIN_SEEDS} or more")
        self.n_seeds = int(n_seeds)

    def get_params(self) -> dict[str, Any]:
        return {"n_seeds": self.n_seeds}

    @classmethod
    def applies_to(cls, explainer_cls: type[Explainer]) -> str | None:
        if not explainer_cls.is_stochastic:
            return ("it is deterministic (is_stochastic is False), so every seed gives the same map; "
                    "seed stability is measured for stochastic methods only")
        return None

    def _compute(self, ctx: MetricContext, explanations: Sequence[Explanation],
                 explainer: Explainer | None) -> dict[str, Any]:
        exp = explanations[0]
        assert explainer is not None
        seeds = tuple((ctx.seed + i) % 2**32 for i in range(self.n_seeds))  # numpy takes 32-bit seeds
        maps = []
        for s in seeds:
            again = explainer.explain(exp.inputs, exp.targets, seed=s)
            ctx.add_cost(again.cost)
            maps.append(relevance_map(again.attributions, absolute=True)[0])
        matrix = _pairwise_spearman(maps)
        upper = matrix[np.triu_indices(len(matrix), 1)]
        return {"value": _off_diagonal_mean(matrix), "seeds": seeds,
                "matrix": tuple(tuple(map(float, r)) for r in matrix), "min_pair": float(upper.min())}


@dataclass(frozen=True, kw_only=True)
class AgreementResult(MetricResult):
    """Method agreement: the M×M mean Spearman matrix of |attributions|; ``value`` is its off-diagonal mean."""

    methods: tuple[str, ...]
    matrix: tuple[tuple[float, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "methods": list(self.methods), "matrix": [list(r) for r in self.matrix]}


class MethodAgreement(QualityMetric):
    """Pairwise rank agreement of several methods on the same inputs: Spearman of |attributions| per
    sample, averaged (cf. Krishna et al. 2022, "The Disagreement Problem in Explainable ML", rank metrics)."""

    name = "method_agreement"
    paper = "Krishna et al. 2022 (disagreement problem); Spearman rank correlation"
    compares_methods = True
    higher_is_better = True
    result_type = AgreementResult

    def _compute(self, ctx: MetricContext, explanations: Sequence[Explanation],
                 explainer: Explainer | None) -> dict[str, Any]:
        if any(not torch.equal(e.targets, explanations[0].targets) for e in explanations):
            raise XauditError("method agreement compares maps of the same targets: explain every method for the "
                              "same target classes")
        matrix = _pairwise_spearman([relevance_map(e.attributions, absolute=True)[0] for e in explanations])
        return {"value": _off_diagonal_mean(matrix), "methods": tuple(e.method for e in explanations),
                "matrix": tuple(tuple(map(float, r)) for r in matrix)}


def method_agreement(explanations: Sequence[Explanation]) -> AgreementResult:
    """Pairwise Spearman matrix of several methods' |attributions| (see :class:`MethodAgreement`)."""
    result = MethodAgreement().compute(None, explanations)
    assert isinstance(result, AgreementResult)
    return result
