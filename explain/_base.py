"""The explainer contract: one base class that owns everything common, a registry, and the result type.

A method subclasses :class:`Explainer`, declares its capabilities as class attributes and overrides
:meth:`Explainer._attribute`. The base class puts the model in eval mode (and restores every module's
``training`` flag afterwards), freezes parameter gradients for the call, resolves targets, chunks the
batch, counts model evaluations, meters the cost, and detaches the result to CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import math
import re
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from xaudit.models._errors import XauditError, did_you_mean
from xaudit.models._layout import CHANNELS_FIRST, ChannelsFirst, takes_channels_first
from xaudit.models._walk import modules_of, one_walk_per_call, per_generation

from ._cost import Cost, CostMeter, EvalCounter
from ._flops import FlopProfile, flop_profile
from ._memory import (
    DEFAULT_MEMORY_BUDGET_BYTES,
    GRADIENT_CALL_SLACK,
    bytes_for_one_row,
    current_budget,
    parse_bytes,
    row_memory,
    rows_for_budget,
)
from ._model_call import (  # noqa: F401 - re-exported: the methods import them from here
    CountingModel,
    _as_batch,
    _model_device,
    _n_outputs,
    _synchronize,
    input_kind,
    is_recurrent,
    model_guard,
    needs_cudnn_rnn_workaround,
    seeded,
)

_REGISTRY: dict[str, type[Explainer]] = {}


def available_methods() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(_REGISTRY)


def get_explainer(name: str) -> type[Explainer]:
    """The explainer class registered as ``name`` (with a "did you mean" error for unknown names). Spaces around
    it, letter case, and spaces, hyphens or nothing for underscores are forgiven ("Saliency", "LIME ", "Integrated
    Gradients", "Grad-CAM", "ShapKernel")."""
    found = _REGISTRY.get(name) if isinstance(name, str) else None
    if found is None and isinstance(name, str):
        plain = "_".join(name.replace("-", " ").split()).lower()  # "Integrated Gradients" -> integrated_gradients
        # and with no separators at all: "Grad-CAM" -> gradcam, "ShapKernel" -> shap_kernel (no two collide)
        joined = {key.replace("_", ""): cls for key, cls in _REGISTRY.items()}
        found = _REGISTRY.get(name.strip()) or _REGISTRY.get(plain) or joined.get(plain.replace("_", ""))
    if found is None:
        raise did_you_mean("explanation method", name, _REGISTRY)
    return found


@dataclass(frozen=True)
class CallContext:
    """Per-call settings the base class hands to ``_attribute``.

    ``row_batch`` is the most input rows one model call may take under the memory budget: a method that
    evaluates many perturbed or interpolated rows per sample must batch them by it.
    """

    row_batch: int
    seed: int | None
    device: torch.device
    #: Work shared by every chunk of one call (a reference pass: DeepLift's baseline, DeepSHAP's background).
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class CostPrediction:
    """What a call is expected to cost, before running it (from evaluation counts and a timed probe)."""

    n_samples: int
    forward_evals: float
    backward_evals: float
    wall_s: float
    peak_bytes: int
    samples_per_chunk: int
    row_batch: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True, eq=False)
class Explanation:
    """Attributions shaped like ``inputs``, the targets explained, the method's configuration and its cost."""

    method: str
    attributions: torch.Tensor
    inputs: torch.Tensor
    targets: torch.Tensor
    config: Mapping[str, Any]
    cost: Cost
    family: str = "saliency"
    extras: Mapping[str, Any] = field(default_factory=dict)
    plan: Mapping[str, int] = field(default_factory=dict)
    #: What the call ran with (:meth:`Explainer.settings`: automatic values resolved); ``config`` is the
    #: constructor's arguments.
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.attributions.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """Summary without the arrays (for JSON)."""
        return {"name": self.method, "family": self.family, "config": dict(self.config),
                "settings": dict(self.settings), "n_samples": len(self), "cost": self.cost.per_sample()}

    def __repr__(self) -> str:
        # a summary, not the tensors: the dataclass repr printed every attribution (thousands of lines in a
        # notebook); the arrays stay one attribute away
        shape = "×".join(map(str, self.attributions.shape))
        settings = ", ".join(f"{k}={v}" for k, v in (self.settings or self.config).items())
        per = self.cost.per_sample()
        return (f"Explanation(method={self.method!r}, attributions={shape} {str(self.attributions.dtype)[6:]}, "
                f"settings=({settings}), {per['wall_s_per_sample'] * 1e3:.3g} ms/sample, "
                f"{per['forward_evals_per_sample']:.4g}+{per['backward_evals_per_sample']:.4g} evals/sample)")

    def _repr_html_(self) -> str:
        if not bool(torch.isfinite(self.attributions).all()):  # an Explanation built by hand: no colour scale
            import html

            return (f"<pre>{html.escape(repr(self))}</pre><p>The attributions contain NaN or Inf values, so no "
                    "maps are drawn.</p>")
        # imported on demand: explain/ must not import reports/ at module level (models → explain → reports)
        from xaudit.reports._notebook import explanation_html

        return explanation_html(self)


class Explainer:
    """Base class of every explanation method (captum style: construct with the model, then call).

    Subclasses set ``name`` (which registers them) and capability flags, and implement ``_attribute``.
    Constructor arguments are configuration only; anything that needs data happens in :meth:`fit`.
    """

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"

    name: ClassVar[str] = ""
    family: ClassVar[str] = "saliency"
    paper: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True
    #: it needs the model's output to have a gradient path from the input (every gradient method: with the
    #: parameters frozen while explaining, a path cut from the input leaves even Grad-CAM's layer without one)
    needs_input_gradient: ClassVar[bool] = True
    needs_background: ClassVar[bool] = False
    is_stochastic: ClassVar[bool] = False
    batch_invariant: ClassVar[bool] = True
    supports_images: ClassVar[bool] = True
    supports_sequences: ClassVar[bool] = True
    supports_recurrent: ClassVar[bool] = True
    #: Whether the method registers hooks on the model's modules (impossible on TorchScript models).
    uses_module_hooks: ClassVar[bool] = False
    #: Why recurrent models are not supported, shown to users when ``supports_recurrent`` is False.
    recurrent_reason: ClassVar[str] = ""
    #: Most input samples explained per chunk (the memory budget may lower it).
    default_batch_size: ClassVar[int] = 256
    #: Whether the method evaluates its rows at most ``ctx.row_batch`` at a time across all samples of a chunk,
    #: never all of one sample's rows at once; then chunks need not shrink with ``rows_per_sample``.
    streams_rows: ClassVar[bool] = False
    #: Memory per row in flight relative to a plain gradient call's (a rule that keeps more per activation, or
    #: reference activations held for the whole call, declares more); scales the memory budget's planning.
    memory_factor: ClassVar[float] = 1.0
    #: Whether the method groups neighbouring input elements (time windows, patches, segments). On a model that
    #: hands its N×C×L input to an ``nn.Conv1d`` such a method runs on the data read as N×L×C, so its windows
    #: run along the length; per-element methods (gradients) need no such care.
    groups_regions: ClassVar[bool] = False
    # the method on ChannelsFirst(model), made on first need: (params repr, background, twin)
    _twin: tuple[str, Any, Explainer] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        name = cls.__dict__.get("name")
        if name:
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise RuntimeError(f"explanation method {name!r} registered twice")
            _REGISTRY[name] = cls

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise XauditError(f"{type(self).__name__} needs a torch.nn.Module, got {type(model).__name__}: "
                              "pass the model itself")
        self.model = model

    # -- configuration ----------------------------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        """The method's configuration (constructor arguments other than the model)."""
        return {}

    def unsupported_reason(self, sample_shape: Sequence[int]) -> str | None:
        """Why this method cannot explain this model on inputs of ``sample_shape``, or None if it can."""
        kind = input_kind(sample_shape)
        if kind == "image" and not self.supports_images:
            return f"{self.name} does not support image inputs"
        if kind == "sequence" and not self.supports_sequences:
            return f"{self.name} does not support sequence inputs"
        if not self.supports_recurrent and is_recurrent(self.model):
            return f"{self.name} does not support recurrent models: {self.recurrent_reason}"
        if self.uses_module_hooks and isinstance(self.model, torch.jit.ScriptModule):
            return (f"{self.name} needs module hooks, which TorchScript models do not allow; "
                    "pass the nn.Module itself (e.g. as a module:callable factory with --state-dict)")
        return self._rule_refusal(tuple(sample_shape))

    def _rule_refusal(self, sample_shape: tuple[int, ...]) -> str | None:
        """Why the method's rule refuses this model (an activation it has no case for, say), or None. Methods
        that run on a hook-safe copy check it here, so the refusal is said before running, as a capability."""
        return None

    def fit(self, background: torch.Tensor) -> Explainer:
        """Give a method its background data (SHAP-style methods); a no-op for the others."""
        return self

    def rows_per_sample(self, sample_shape: Sequence[int] | None = None) -> int:
        """Model input rows evaluated per explained sample (IG: n_steps; a sampler: its sample count).

        A method whose count depends on the input size (occlusion: one row per window) accepts
        ``sample_shape``; the base class passes it to overrides that take it (see :meth:`counts_for`).
        """
        return 1

    def expected_evals(self, sample_shape: Sequence[int] | None = None) -> tuple[float, float]:
        """Forward and backward evaluations per sample this method makes (for prediction and tests)."""
        return (1.0, 1.0) if self.uses_gradients else (1.0, 0.0)

    def evals_per_call(self, sample_shape: Sequence[int] | None = None) -> tuple[float, float]:
        """Forward and backward evaluations made once per call, shared by all its samples (a reference
        pass: DeepLift's baseline, DeepSHAP's background); a call on n samples makes
        ``n × expected_evals + evals_per_call``."""
        return 0.0, 0.0

    def counts_for(self, sample_shape: Sequence[int]) -> tuple[int, tuple[float, float]]:
        """(rows per sample, (forward, backward) evaluations per sample) for inputs of ``sample_shape``.

        Overrides written without a ``sample_shape`` parameter are called without it.
        """
        shape = tuple(int(s) for s in sample_shape)
        rows, evals = (_call_with_shape(f, shape) for f in (self.rows_per_sample, self.expected_evals))
        return int(rows), (float(evals[0]), float(evals[1]))

    def _prepare(self, sample: torch.Tensor) -> None:
        """One-time setup before the clock starts (``sample``: one input on the model's device): import the
        library the method calls, build a private model copy. Not part of a call's cost: captum's import
        alone (~0.5 s) made the first method of a report cost 4 ms per sample where it takes 0.03 ms."""

    # -- the one thing a method implements --------------------------------------------------------------

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   ctx: CallContext) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Attributions shaped like ``inputs`` for the given per-sample ``targets``.

        May also return a dict of per-sample extras (e.g. IG's convergence delta), concatenated over chunks.

        ``model`` is the counting wrapper around the user's model, already in eval mode with frozen
        parameters; ``inputs`` and ``targets`` are on the model's device. Batch model calls by
        ``ctx.row_batch`` rows at most.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _attribute")

    # -- public calls -------------------------------------------------------------------------------------

    def attribute(self, inputs: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None,
                  **kwargs: Any) -> torch.Tensor:
        """Attributions only (captum's call); see :meth:`explain` for the arguments."""
        return self.explain(inputs, target, **kwargs).attributions

    def _plan(self, inputs: torch.Tensor, batch_size: int | None,
              memory_budget: int | str | None) -> tuple[int, int]:
        """(samples per chunk, rows per model call) under the memory budget; inside the model guard."""
        budget = current_budget(memory_budget)
        memory = self._with_held(row_memory(self.model, inputs[:1]))
        row_batch = rows_for_budget(memory, budget, self.name, inputs[:1].numel() * inputs.element_size(),
                                    device=inputs.device, factor=self._memory_factor())
        if batch_size is not None and int(batch_size) < 1:
            raise XauditError(f"batch_size must be at least 1, got {batch_size}")
        rows = 1 if self.streams_rows else max(self.counts_for(inputs.shape[1:])[0], 1)
        per_chunk = max(1, row_batch // rows)
        per_chunk = min(per_chunk, int(batch_size or self.default_batch_size))
        return per_chunk, row_batch

    def settings(self, sample_shape: Sequence[int]) -> dict[str, Any]:
        """The settings a call on samples of ``sample_shape`` runs with: :meth:`get_params` with automatic
        values (None) resolved and parameters that do not apply to this kind of input left out. What a report
        shows; ``get_params`` stays the constructor's arguments, as in scikit-learn."""
        return self.get_params()

    def memory_needed(self, inputs: torch.Tensor) -> int:
        """The smallest memory budget (bytes) a call on inputs shaped like ``inputs`` runs under: one sample's
        row in flight, the model's parameters and the input (one forward pass of one sample, cached)."""
        twin, batch = self._channels_first_twin(inputs)
        if twin is not None:
            return twin.memory_needed(batch.transpose(1, 2))
        sample = batch[:1].to(_model_device(self.model))
        with self._call_guard(sample.device, None):
            _n_outputs(self.model, sample)  # the inputs fit the model, or a one-line error
            memory = self._with_held(row_memory(self.model, sample))
        return bytes_for_one_row(memory, sample.numel() * sample.element_size(), self._memory_factor())

    def _flop_profile(self, sample: torch.Tensor) -> FlopProfile:
        """FLOPs of one forward and one backward evaluation as this method runs them (by default the backward
        goes to the input; Grad-CAM's stops at its layer)."""
        return flop_profile(self.model, sample)

    def held_rows(self) -> float:
        """Rows of activations a call keeps for its whole length, beyond the rows in flight (DeepSHAP's recorded
        background references), in units of the model's row estimate; 0 for most methods."""
        return 0.0

    def _with_held(self, memory: RowMemory) -> RowMemory:
        """``memory`` with :meth:`held_rows` added to the fixed cost the budget plans around."""
        held = self.held_rows()
        if not held:
            return memory
        return dataclasses.replace(memory, fixed_bytes=memory.fixed_bytes + int(held * memory.bytes_per_row))

    def _call_guard(self, device: torch.device, seed: int | None) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        # a call made inside the caller's torch.no_grad() or torch.inference_mode() block (a notebook's evaluation
        # loop) still needs autograd: the methods switch gradients off themselves where they need none
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad())
        stack.enter_context(model_guard(self.model))
        if needs_cudnn_rnn_workaround(self.model, device):
            stack.enter_context(torch.backends.cudnn.flags(enabled=False))
        stack.enter_context(seeded(seed if self.is_stochastic else None, device))
        return stack

    def predict_cost(self, inputs: torch.Tensor, *, batch_size: int | None = None,
                     memory_budget: int | str | None = None, probe_samples: int = 4) -> CostPrediction:
        """Predict the cost of explaining ``inputs`` from evaluation counts and two timed probes.

        Wall time is modelled as ``n_chunks × per_call + n × per_sample``: a call on one sample and a call
        on ``probe_samples`` samples separate the per-call overhead (which dominates cheap methods on a
        tiny probe) from the per-sample cost, each the fastest of three timings where they are short. An
        untimed call on one sample absorbs first-call overheads.
        """
        twin, inputs = self._channels_first_twin(inputs)
        if twin is not None:
            return twin.predict_cost(inputs.transpose(1, 2), batch_size=batch_size, memory_budget=memory_budget,
                                     probe_samples=probe_samples)
        device = _model_device(self.model)
        with self._call_guard(device, 0):
            _n_outputs(self.model, inputs[:2].to(device))  # the inputs fit the model, or a one-line error
            per_chunk, row_batch = self._plan(inputs, batch_size, memory_budget)
            probe = inputs[:max(1, min(probe_samples, per_chunk))].to(device)
            targets = self._resolve_targets(probe, None)
            counting = CountingModel(self.model, EvalCounter())
            ctx = CallContext(row_batch=row_batch, seed=0, device=device)

            def timed(k: int) -> float:
                x = probe[:k].detach().requires_grad_(self.uses_gradients)
                _synchronize(device)
                t0 = time.perf_counter()
                self._attribute(counting, x, targets[:k], ctx)
                _synchronize(device)
                return time.perf_counter() - t0

            def fastest(k: int) -> float:
                # the fastest of three where a timing is short: one timing each made a scheduler hiccup the
                # per-sample time, then × n (guided_backprop on 400 inputs: predicted 0.75 s, then 62.5 s, for
                # 5.6 s measured); a probe of a quarter second or more is timed once
                t = timed(k)
                return t if t >= 0.25 else min(t, timed(k), timed(k))

            timed(1)
            t_one = fastest(1)
            t_probe = fastest(len(probe)) if len(probe) > 1 else t_one
        if len(probe) > 1:
            per_sample = max((t_probe - t_one) / (len(probe) - 1), 0.0)
            per_call = max(t_one - per_sample, 0.0)
        else:
            per_sample, per_call = t_one, 0.0
        rows, (fwd, bwd) = self.counts_for(inputs.shape[1:])
        once_fwd, once_bwd = _call_with_shape(self.evals_per_call, tuple(inputs.shape[1:]))
        n = len(inputs)
        n_chunks = -(-n // per_chunk)
        memory = self._with_held(row_memory(self.model, inputs[:1]))
        per_row = memory.bytes_per_row * self._memory_factor()
        rows_in_flight = min(row_batch, per_chunk * rows)
        # the attributions returned, filled in place chunk by chunk (see explain)
        result_bytes = inputs[:1].numel() * _attribution_dtype(inputs.dtype).itemsize * n
        return CostPrediction(n_samples=n, forward_evals=fwd * n + once_fwd, backward_evals=bwd * n + once_bwd,
                              wall_s=n_chunks * per_call + n * per_sample,
                              peak_bytes=int(memory.fixed_bytes + rows_in_flight * per_row + result_bytes),
                              samples_per_chunk=per_chunk, row_batch=row_batch)

    def _memory_factor(self) -> float:
        """Bytes per row in flight, per byte of the model's row estimate, that the budget plans with."""
        return self.memory_factor * (GRADIENT_CALL_SLACK if self.uses_gradients else 1.0)

    def _checked(self, inputs: Any) -> torch.Tensor:
        raw_dtype = getattr(inputs, "dtype", None)
        integer = raw_dtype is not None and not (raw_dtype.is_floating_point if isinstance(raw_dtype, torch.dtype)
                                                 else np.issubdtype(raw_dtype, np.floating))
        if integer and any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in modules_of(self.model)):
            raise XauditError("the inputs are integer token ids for an nn.Embedding, which no attribution method "
                              "can vary: explain the model from the embedding output on (a module that takes the "
                              "embedded N×T×F sequence), as captum's LayerIntegratedGradients does")
        inputs = _as_batch(inputs)
        dtype = _model_dtype(self.model)
        if dtype is not None and inputs.dtype != dtype:
            # numpy's float64 for a float32 model, say: the model computes in its own dtype, and torch would
            # refuse the mix inside the first layer
            inputs = inputs.to(dtype)
        reason = self.unsupported_reason(tuple(inputs.shape[1:]))
        if reason:
            # a rule's refusal names its own fix ("choose a gradient method", "use a separate nn.ReLU()")
            says_fix = re.search(r": (choose|use|make|pass) ", reason) is not None
            raise XauditError(reason if says_fix else f"{reason}: choose another method (xaudit explain --help "
                                                        "lists them)")
        return inputs

    def explain(self, inputs: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None, *,
                batch_size: int | None = None, seed: int | None = 0,
                memory_budget: int | str | None = None, fresh_heap: bool = False) -> Explanation:
        """Explain ``inputs`` for ``target`` (None: the model's predicted class) and measure the cost.

        ``memory_budget`` (bytes or a string like ``"2GiB"``; default: the enclosing
        :func:`~xaudit.explain.memory_budget` block's, else 2 GiB) bounds the memory the call may take; inputs
        are chunked to fit. ``seed`` makes stochastic methods reproducible without touching
        the caller's random state. ``fresh_heap=True`` gives the heap's free pages back to the system before
        measuring, so ``cost.peak_rss_bytes`` is the call's own peak whatever ran before it in the process
        (otherwise memory freed by earlier calls is reused unseen); the call then pays the page faults of
        touching its memory afresh.
        """
        with one_walk_per_call(self.model):  # the checks below ask about the model ~15 times
            twin, batch = self._channels_first_twin(inputs)
            if twin is not None:
                exp = twin.explain(batch.transpose(1, 2), target, batch_size=batch_size, seed=seed,
                                   memory_budget=memory_budget, fresh_heap=fresh_heap)
                return dataclasses.replace(
                    exp, attributions=exp.attributions.transpose(1, 2).contiguous(),
                    inputs=exp.inputs.transpose(1, 2).contiguous(), config=self.get_params(),
                    settings={**exp.settings, "input_layout": CHANNELS_FIRST})
            return self._explain(batch, target, batch_size=batch_size, seed=seed, memory_budget=memory_budget,
                                 fresh_heap=fresh_heap)

    def _channels_first_twin(self, inputs: Any) -> tuple[Explainer | None, torch.Tensor]:
        """(this method on :class:`~xaudit.models._layout.ChannelsFirst` of the model, the checked batch) when the
        method groups neighbouring elements and the model hands its N×C×L input to an ``nn.Conv1d``: the
        windows must run along L, not along the channels. (None, the batch) otherwise."""
        batch = self._checked(inputs)
        if not self.groups_regions or batch.dim() != 3 or not _takes_channels_first(self.model, batch):
            return None, batch
        background = getattr(self, "background_", None)
        params = repr(self.get_params())
        if (self._twin is None or self._twin[0] != params or self._twin[1] is not background
                or self._twin[2].model.model is not self.model):  # the same settings, background and model
            twin = type(self)(ChannelsFirst(self.model), **self.get_params())
            if isinstance(background, torch.Tensor) and background.dim() == 3:
                twin.background_ = background.transpose(1, 2)
            self._twin = (params, background, twin)
        return self._twin[2], batch

    def _explain(self, inputs: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None, *,
                 batch_size: int | None, seed: int | None, memory_budget: int | str | None,
                 fresh_heap: bool = False) -> Explanation:
        """:meth:`explain` on a batch :meth:`_checked` already."""
        device = _model_device(self.model)
        counter = EvalCounter()
        counting = CountingModel(self.model, counter)
        with self._call_guard(device, seed):
            x_dev = inputs.to(device)
            _n_outputs(self.model, x_dev)  # the inputs fit the model, or a one-line error (cached per shape)
            per_chunk, row_batch = self._plan(x_dev, batch_size, memory_budget)
            ctx = CallContext(row_batch=row_batch, seed=seed, device=device)
            profile = self._flop_profile(x_dev[:1])
            if self.needs_input_gradient and not profile.input_gradient:
                raise XauditError(
                    f"{self.name} needs the gradient of the model's output with respect to its input, and this "
                    "model's output has none (its forward detaches the input or runs under torch.no_grad()): "
                    "choose a method that only runs the model forward (occlusion, shap_kernel, shap_partition, "
                    "lime)")
            self._prepare(x_dev[:1].detach())
            # Target resolution is outside the meter: a report resolves predictions once for all methods,
            # and the cost should be the method's own.
            targets = self._resolve_targets(x_dev, target)
            with CostMeter(len(inputs), device=device, counter=counter,
                           flops_per_eval=(profile.forward, profile.backward),
                           flops_source=profile.source, fresh_heap=fresh_heap) as meter:
                # one result tensor filled chunk by chunk: no second copy from concatenating, and no small
                # results pinning heap pages between a chunk's temporaries (IG's peak RSS grew with n)
                attributions = torch.empty(inputs.shape, dtype=_attribution_dtype(inputs.dtype))
                extras: dict[str, torch.Tensor] = {}
                for start in range(0, len(x_dev), per_chunk):
                    sl = slice(start, start + per_chunk)
                    # inputs that already require grad keep captum from warning on every chunk
                    chunk = x_dev[sl].detach().requires_grad_(self.uses_gradients)
                    out = self._attribute(counting, chunk, targets[sl], ctx)
                    attr, more = out if isinstance(out, tuple) else (out, {})
                    if attr.shape != chunk.shape:
                        raise RuntimeError(f"{self.name} returned attributions of shape {tuple(attr.shape)} "
                                           f"for inputs of shape {tuple(chunk.shape)}")
                    attributions[sl] = attr.detach()
                    for key, value in more.items():
                        # per-sample extras are copied into tensors made once, as the attributions are: small
                        # results kept per chunk (or views keeping a chunk's temporaries) grew IG's peak RSS with n
                        if key not in extras:
                            extras[key] = torch.empty((len(inputs), *value.shape[1:]), dtype=value.dtype)
                        extras[key][sl] = value.detach()
        assert meter.cost is not None
        _check_finite(self.name, attributions)
        return Explanation(method=self.name, attributions=attributions, inputs=inputs.detach().cpu(),
                           targets=targets.cpu(), config=self.get_params(), cost=meter.cost, family=self.family,
                           extras=extras,
                           plan={"samples_per_chunk": per_chunk, "row_batch": row_batch},
                           settings=self.settings(tuple(inputs.shape[1:])))

    def _resolve_targets(self, x: torch.Tensor, target: Any) -> torch.Tensor:
        n = len(x)
        if target is None:
            with torch.no_grad():
                return torch.cat([self.model(x[i:i + 512]).argmax(-1) for i in range(0, n, 512)])
        try:
            t = torch.as_tensor(target, device=x.device)
        except (TypeError, ValueError, RuntimeError):
            raise XauditError(f"target must be integer class indices, got {target!r:.60}") from None
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise XauditError(f"target must be integer class indices, got dtype {t.dtype}")
        if t.dim() > 1:
            raise XauditError(f"target must be one class index or a flat list of one per input, got shape "
                              f"{tuple(t.shape)}")
        t = t.long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(n).clone()
        if t.numel() != n:
            raise XauditError(f"got {t.numel()} targets for {n} inputs: pass one target or one per input")
        n_classes = _n_outputs(self.model, x)
        if int(t.min()) < 0 or int(t.max()) >= n_classes:
            bad = t[(t < 0) | (t >= n_classes)]
            raise XauditError(f"target {int(bad[0])} is out of range: the model has {n_classes} classes "
                              f"(0..{n_classes - 1})")
        return t


_CHANNELS_FIRST: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[int, bool]]] = weakref.WeakKeyDictionary()


def _takes_channels_first(model: nn.Module, batch: torch.Tensor) -> bool:
    """:func:`~xaudit.models._layout.takes_channels_first`, probed once per model generation and sample shape."""
    if not any(isinstance(m, nn.Conv1d) for m in modules_of(model)):
        return False
    return per_generation(_CHANNELS_FIRST, model, (tuple(batch.shape[1:]), batch.dtype),
                          lambda: takes_channels_first(model, batch[:2]))


def _model_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype holding most of the model's parameter elements (of its buffers when it has no floating
    parameters); None for a model with neither. The majority, not the first tensor: a float32 CNN wrapped with a
    float64 temperature computes in float32."""
    sizes: dict[torch.dtype, int] = {}
    for registry in ("_parameters", "_buffers"):
        for module in modules_of(model):
            for t in getattr(module, registry).values():
                if t is not None and t.is_floating_point():
                    sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel()
        if sizes:
            return max(sizes, key=sizes.__getitem__)
    return None


def _check_finite(method: str, attributions: torch.Tensor) -> None:
    """A one-line error naming the samples whose attributions are NaN or Inf (a sum first: the elementwise check
    only runs when the sum is not finite)."""
    if math.isfinite(float(attributions.sum())):
        return
    bad = ~torch.isfinite(attributions.flatten(1)).all(1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise XauditError(f"{method} gave NaN/Inf attributions for {len(rows)} of {len(attributions)} samples "
                          f"(first: #{rows[0]}): the model's output or its gradient is not finite there (a log, "
                          "sqrt or division at 0?); check those inputs and the model's forward")


def _attribution_dtype(input_dtype: torch.dtype) -> torch.dtype:
    """float64 attributions for float64 inputs (as captum returns them); float32 otherwise, half precision
    included, whose sums over many rows would lose digits."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def _init_params(cls: type[Explainer]) -> tuple[list[str], bool]:
    """(keyword parameters of ``cls(model, ...)``, whether it takes any other keyword too)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, model
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def check_params(cls: type[Explainer], params: Mapping[str, Any]) -> None:
    """A one-line error, with the closest name, for a parameter ``cls`` does not take (a wrapper such as
    smoothgrad passes the rest on to its base method, whose parameters count too)."""
    names, open_ended = _init_params(cls)
    if open_ended and "base" in names:
        base = params.get("base", inspect.signature(cls.__init__).parameters["base"].default)
        if isinstance(base, str) and base in _REGISTRY:
            names = names + _init_params(_REGISTRY[base])[0]
            open_ended = False
    if open_ended:
        return
    names = [n for n in names if n != "method"]  # explain()'s own argument: IG's old name for quadrature
    for key in params:
        if key == "device" and key not in names:
            raise XauditError(f"{cls.name} takes no device: explanations run where the model's parameters are; "
                              "move the model (model.to('cuda')) and the inputs follow it")
        if key not in names:
            err = did_you_mean(f"{cls.name} parameter", key, names or ["(none)"])
            raise XauditError(f"{err}; see help(xaudit.explain.{cls.__name__})")


def _call_with_shape(count: Any, shape: tuple[int, ...]) -> Any:
    """Call a per-sample count method with ``sample_shape`` if it takes one (older overrides do not)."""
    if _takes_sample_shape(getattr(count, "__func__", count)):
        return count(sample_shape=shape)
    return count()


@functools.lru_cache(maxsize=256)
def _takes_sample_shape(function: Any) -> bool:
    # inspect.signature on every call was ~0.1 ms per explain()
    return "sample_shape" in inspect.signature(function).parameters


def explain(model: nn.Module, inputs: torch.Tensor, method: str = "saliency",
            target: int | Sequence[int] | torch.Tensor | None = None, *, background: torch.Tensor | None = None,
            batch_size: int | None = None, seed: int | None = 0, memory_budget: int | str | None = None,
            fresh_heap: bool = False, **params: Any) -> Explanation:
    """Explain ``inputs`` with the registered ``method`` (one call; captum-like keyword arguments).

    >>> exp = explain(model, x, method="integrated_gradients", target=3, n_steps=64)
    >>> exp.attributions.shape == x.shape
    """
    cls = get_explainer(method)
    check_params(cls, params)
    explainer = cls(model, **params)
    if explainer.needs_background:
        if background is None:
            raise XauditError(f"{method} needs background data: pass background=<a few training inputs>")
        explainer.fit(background)
    return explainer.explain(inputs, target, batch_size=batch_size, seed=seed, memory_budget=memory_budget,
                             fresh_heap=fresh_heap)
