"""The quality-metric contract: one base class, a registry, one result type family — the way explainers work.

A metric subclasses :class:`QualityMetric`, sets ``name`` (which registers it), ``paper`` and capability
flags, stores its configuration in the constructor (validated, one-line :class:`XauditError` on bad
values) and implements ``_compute``. The base class validates the request (does the metric apply to this
method? was the explainer passed when the metric must re-run it?), puts the model in eval mode with frozen
parameters, counts model evaluations, and meters the metric's *own* cost with the same :class:`CostMeter`
explanations use, so a report can put a metric's cost next to the cost of the explanation it scores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from xaudit.models._errors import XauditError, did_you_mean

from ._base import CountingModel, Explainer, Explanation, _model_device, available_methods, get_explainer
from ._base import model_guard, seeded
from ._cost import Cost, CostMeter, EvalCounter
from ._flops import flop_profile

_METRICS: dict[str, type[QualityMetric]] = {}


def available_metrics() -> tuple[str, ...]:
    """Registered quality-metric names, in registration order."""
    return tuple(_METRICS)


def get_metric(name: str) -> type[QualityMetric]:
    """The metric class registered as ``name`` (with a "did you mean" error for unknown names)."""
    try:
        return _METRICS[name]
    except KeyError:
        raise did_you_mean("quality metric", name, _METRICS) from None


@dataclass(frozen=True, kw_only=True)
class MetricResult:
    """One metric's value for one method (or a set of methods), with its configuration and its own cost.

    ``value`` is the headline number (see ``higher_is_better``); ``per_sample`` holds the per-input values
    it is the mean of, where the metric has them.
    """

    metric: str
    method: str
    value: float
    cost: Cost
    config: Mapping[str, Any] = field(default_factory=dict)
    per_sample: tuple[float, ...] = ()
    higher_is_better: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: value, configuration and the metric's per-sample cost."""
        return {"metric": self.metric, "method": self.method, "value": _json_float(self.value),
                "higher_is_better": self.higher_is_better, "config": dict(self.config),
                "cost": self.cost.per_sample()}


@dataclass
class MetricContext:
    """What ``_compute`` gets: the counting model, the counter behind it, the device and the call's settings.

    A metric that re-runs an explainer adds the inner explanations' evaluations with :meth:`add_cost`, so
    its own cost counts every model evaluation it caused.
    """

    model: nn.Module | None
    raw_model: nn.Module | None
    counter: EvalCounter
    device: torch.device
    seed: int
    background: torch.Tensor | None = None

    def add_cost(self, cost: Cost) -> None:
        self.counter.forward += cost.forward_evals
        self.counter.backward += cost.backward_evals


class QualityMetric:
    """Base class of every quality metric (construct with its configuration, then :meth:`compute`).

    Capabilities: ``needs_explainer`` — the metric re-runs the method (randomization, stability,
    sensitivity), so :meth:`compute` needs the configured :class:`Explainer`, not only its
    :class:`Explanation`; ``compares_methods`` — the metric takes several explanations of the same inputs
    (agreement). ``higher_is_better`` says which way the headline value points.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs_explainer: ClassVar[bool] = False
    compares_methods: ClassVar[bool] = False
    higher_is_better: ClassVar[bool | None] = None
    result_type: ClassVar[type[MetricResult]] = MetricResult

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            if name in _METRICS and _METRICS[name] is not cls:
                raise RuntimeError(f"quality metric {name!r} registered twice")
            _METRICS[name] = cls

    def get_params(self) -> dict[str, Any]:
        """The metric's configuration (constructor arguments)."""
        return {}

    @classmethod
    def applies_to(cls, explainer_cls: type[Explainer]) -> str | None:
        """Why this metric does not apply to methods of ``explainer_cls``, or None if it does."""
        return None

    def _compute(self, ctx: MetricContext, explanations: Sequence[Explanation],
                 explainer: Explainer | None) -> dict[str, Any]:
        """The result's fields other than metric, method, cost and higher_is_better (``config`` entries added
        here extend the constructor's)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _compute")

    def compute(self, model: nn.Module | None, explanation: Explanation | Sequence[Explanation], *,
                explainer: Explainer | None = None, background: torch.Tensor | None = None,
                seed: int = 0) -> MetricResult:
        """Score ``explanation`` of ``model`` and measure what scoring it cost.

        ``explainer`` is the configured method that produced the explanation (required when
        ``needs_explainer``); ``background`` is the data to fit a re-built method on when it
        ``needs_background``. ``seed`` fixes every random draw the metric makes (noise, tie-breaks).
        """
        explanations = self._checked_explanations(explanation)
        self._check_explainer(explanations[0], explainer)
        if model is None and not self.compares_methods:
            raise XauditError(f"{self.name} evaluates the model: pass the model that was explained")
        if explainer is not None and model is not None and explainer.model is not model:
            raise XauditError(f"the {explainer.name} explainer was built on a different model than the one passed: "
                              "pass the model the explainer explains")
        device = _model_device(model) if model is not None else torch.device("cpu")
        counter = EvalCounter()
        n = len(explanations[0])
        with contextlib.ExitStack() as stack:
            flops = None
            counting = None
            if model is not None:
                stack.enter_context(model_guard(model))
                profile = flop_profile(model, explanations[0].inputs[:1].to(device))
                flops = ((profile.forward, profile.backward), profile.source)
                counting = CountingModel(model, counter)
            stack.enter_context(seeded(seed, device))
            ctx = MetricContext(model=counting, raw_model=model, counter=counter, device=device, seed=seed,
                                background=background)
            with CostMeter(n, device=device, counter=counter, flops_per_eval=flops[0] if flops else None,
                           flops_source=flops[1] if flops else "not measured") as meter:
                fields = self._compute(ctx, explanations, explainer)
        assert meter.cost is not None
        method = "+".join(e.method for e in explanations)
        # a metric may add what it derived from the data (e.g. the absolute noise std) to its config
        config = {**self.get_params(), **fields.pop("config", {})}
        return self.result_type(metric=self.name, method=method, cost=meter.cost, config=config,
                                higher_is_better=self.higher_is_better, **fields)

    def _checked_explanations(self, explanation: Any) -> list[Explanation]:
        if self.compares_methods:
            items = [explanation] if isinstance(explanation, Explanation) else list(explanation)
            if len(items) < 2 or not all(isinstance(e, Explanation) for e in items):
                raise XauditError(f"{self.name} compares methods: pass two or more Explanations of the same inputs")
            first = items[0]
            for e in items[1:]:
                if e.attributions.shape != first.attributions.shape or not torch.equal(e.inputs, first.inputs):
                    raise XauditError(f"{self.name} needs explanations of the same inputs: {e.method} explained "
                                      f"inputs of shape {tuple(e.inputs.shape)}, {first.method} of "
                                      f"{tuple(first.inputs.shape)}")
            return items
        if not isinstance(explanation, Explanation):
            raise XauditError(f"{self.name} scores one Explanation, got {type(explanation).__name__}: "
                              "pass the result of Explainer.explain")
        return [explanation]

    def _check_explainer(self, explanation: Explanation, explainer: Explainer | None) -> None:
        if explainer is not None and not isinstance(explainer, Explainer):
            raise XauditError(f"explainer must be an Explainer instance, got {type(explainer).__name__}")
        if self.needs_explainer and explainer is None:
            raise XauditError(f"{self.name} re-runs the method: pass explainer=<the configured Explainer "
                              f"that produced the {explanation.method} explanation>")
        if explainer is not None and explainer.name and explainer.name != explanation.method:
            raise XauditError(f"explainer {explainer.name!r} did not produce this {explanation.method!r} "
                              "explanation: pass the explainer that made it")
        cls: type[Explainer] | None = type(explainer) if explainer is not None else None
        if cls is None and explanation.method in available_methods():
            cls = get_explainer(explanation.method)
        reason = self.applies_to(cls) if cls is not None else None
        if reason:
            raise XauditError(f"{self.name} does not apply to {explanation.method}: {reason}")


def evaluate_quality(model: nn.Module, explanation: Explanation, *, explainer: Explainer | None = None,
                     metrics: Sequence[str] | None = None, params: Mapping[str, Mapping[str, Any]] | None = None,
                     background: torch.Tensor | None = None, seed: int = 0) -> dict[str, MetricResult]:
    """Run several per-method metrics on one explanation: ``{metric name: result}``.

    ``metrics=None`` runs every registered per-method metric that applies: those that re-run the method
    only when ``explainer`` is given, ``seed_stability`` only for stochastic methods. Metrics named
    explicitly must apply, or a one-line error says why not. ``params`` maps a metric name to its
    constructor arguments.
    """
    params = dict(params or {})
    for key in params:
        get_metric(key)
    if metrics is None:
        cls = type(explainer) if explainer is not None else (
            get_explainer(explanation.method) if explanation.method in available_methods() else None)
        names = [n for n, m in _METRICS.items()
                 if not m.compares_methods and (explainer is not None or not m.needs_explainer)
                 and (cls is None or m.applies_to(cls) is None)]
    else:
        names = list(metrics)
    out: dict[str, MetricResult] = {}
    for name in names:
        metric = get_metric(name)(**params.get(name, {}))
        out[name] = metric.compute(model, explanation, explainer=explainer, background=background, seed=seed)
    return out


def _json_float(value: float | None) -> float | None:
    """NaN and infinities are not JSON: they become null."""
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None
