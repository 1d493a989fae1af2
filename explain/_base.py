"""The explainer contract: one base class that owns everything common, a registry, and the result type.

A method subclasses :class:`Explainer`, declares its capabilities as class attributes and overrides
:meth:`Explainer._attribute`. The base class puts the model in eval mode (and restores every module's
``training`` flag afterwards), freezes parameter gradients for the call, resolves targets, chunks the
batch, counts model evaluations, meters the cost, and detaches the result to CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from xaudit.models._errors import XauditError, did_you_mean

from ._cost import Cost, CostMeter, EvalCounter
from ._flops import flop_profile

_REGISTRY: dict[str, type[Explainer]] = {}


def available_methods() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    return tuple(_REGISTRY)


def get_explainer(name: str) -> type[Explainer]:
    """The explainer class registered as ``name`` (with a "did you mean" error for unknown names)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise did_you_mean("explanation method", name, _REGISTRY) from None


def input_kind(sample_shape: Sequence[int]) -> str:
    """``image`` for per-sample C×H×W inputs, ``sequence`` for T×F inputs."""
    if len(sample_shape) == 3:
        return "image"
    if len(sample_shape) == 2:
        return "sequence"
    raise XauditError(
        f"inputs with per-sample shape {tuple(sample_shape)} are neither images (C×H×W) nor sequences (T×F): "
        "reshape them to one of those layouts"
    )


def is_recurrent(model: nn.Module) -> bool:
    return any(isinstance(m, nn.RNNBase) for m in model.modules())


def needs_cudnn_rnn_workaround(model: nn.Module, device: torch.device) -> bool:
    """cuDNN refuses RNN backward in eval mode ("cudnn RNN backward can only be called in training mode",
    captum #564); on CUDA we keep eval mode (no dropout) and disable cuDNN for the call instead."""
    return device.type == "cuda" and is_recurrent(model)


@contextlib.contextmanager
def model_guard(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration; every module's flags restored afterwards.

    Freezing parameters means backward passes compute input gradients only (faster, and no parameter's
    ``.grad`` is ever touched).
    """
    training = [(m, m.training) for m in model.modules()]
    requires = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in requires:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for m, flag in training:
            m.training = flag
        for p, flag in requires:
            p.requires_grad_(flag)


class CountingModel(nn.Module):
    """Wraps the user's model to count samples through forward and backward. Adds no hook to the model."""

    def __init__(self, model: nn.Module, counter: EvalCounter) -> None:
        super().__init__()
        self.model = model
        self.counter = counter

    def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        out = self.model(x, *args)
        n = int(out.shape[0])
        self.counter.forward += n
        if out.requires_grad:
            def count_backward(grad: torch.Tensor, _n: int = n) -> None:
                self.counter.backward += _n
            out.register_hook(count_backward)
        return out


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Seed torch's and numpy's global generators for the block, then give the caller's states back."""
    if seed is None:
        yield
        return
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


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

    def __len__(self) -> int:
        return int(self.attributions.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """Summary without the arrays (for JSON)."""
        return {"name": self.method, "family": self.family, "config": dict(self.config),
                "n_samples": len(self), "cost": self.cost.per_sample()}


class Explainer:
    """Base class of every explanation method (captum style: construct with the model, then call).

    Subclasses set ``name`` (which registers them) and capability flags, and implement ``_attribute``.
    Constructor arguments are configuration only; anything that needs data happens in :meth:`fit`.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = "saliency"
    paper: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True
    needs_background: ClassVar[bool] = False
    is_stochastic: ClassVar[bool] = False
    batch_invariant: ClassVar[bool] = True
    supports_images: ClassVar[bool] = True
    supports_sequences: ClassVar[bool] = True
    supports_recurrent: ClassVar[bool] = True
    #: Why recurrent models are not supported, shown to users when ``supports_recurrent`` is False.
    recurrent_reason: ClassVar[str] = ""
    #: Default number of input samples explained per chunk.
    default_batch_size: ClassVar[int] = 64

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
        return None

    def fit(self, background: torch.Tensor) -> Explainer:
        """Give a method its background data (SHAP-style methods); a no-op for the others."""
        return self

    # -- the one thing a method implements --------------------------------------------------------------

    def _attribute(self, model: nn.Module, inputs: torch.Tensor,
                   targets: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Attributions shaped like ``inputs`` for the given per-sample ``targets``.

        May also return a dict of per-sample extras (e.g. IG's convergence delta), concatenated over chunks.

        ``model`` is the counting wrapper around the user's model, already in eval mode with frozen
        parameters; ``inputs`` and ``targets`` are on the model's device.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement _attribute")

    # -- public calls -------------------------------------------------------------------------------------

    def attribute(self, inputs: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None,
                  **kwargs: Any) -> torch.Tensor:
        """Attributions only (captum's call); see :meth:`explain` for the arguments."""
        return self.explain(inputs, target, **kwargs).attributions

    def explain(self, inputs: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None = None, *,
                batch_size: int | None = None, seed: int | None = 0) -> Explanation:
        """Explain ``inputs`` for ``target`` (None: the model's predicted class) and measure the cost."""
        inputs = _as_batch(inputs)
        reason = self.unsupported_reason(tuple(inputs.shape[1:]))
        if reason:
            raise XauditError(f"{reason}: choose another method (xaudit explain --help lists them)")
        device = _model_device(self.model)
        counter = EvalCounter()
        counting = CountingModel(self.model, counter)
        batch_size = int(batch_size or self.default_batch_size)
        if batch_size < 1:
            raise XauditError(f"batch_size must be at least 1, got {batch_size}")
        cudnn = (torch.backends.cudnn.flags(enabled=False) if needs_cudnn_rnn_workaround(self.model, device)
                 else contextlib.nullcontext())
        with model_guard(self.model), cudnn, seeded(seed if self.is_stochastic else None):
            x_dev = inputs.to(device)
            profile = flop_profile(self.model, x_dev[:1])
            # Target resolution is outside the meter: a report resolves predictions once for all methods,
            # and the cost should be the method's own.
            targets = self._resolve_targets(x_dev, target)
            with CostMeter(len(inputs), device=device, counter=counter,
                           flops_per_eval=(profile.forward, profile.backward),
                           flops_source=profile.source) as meter:
                chunks: list[torch.Tensor] = []
                extras: dict[str, list[torch.Tensor]] = {}
                for start in range(0, len(x_dev), batch_size):
                    sl = slice(start, start + batch_size)
                    # inputs that already require grad keep captum from warning on every chunk
                    chunk = x_dev[sl].detach().requires_grad_(self.uses_gradients)
                    out = self._attribute(counting, chunk, targets[sl])
                    attr, more = out if isinstance(out, tuple) else (out, {})
                    chunks.append(attr.detach().to("cpu", torch.float32))
                    for key, value in more.items():
                        extras.setdefault(key, []).append(value.detach().to("cpu"))
                attributions = torch.cat(chunks)
        if attributions.shape != inputs.shape:
            raise RuntimeError(f"{self.name} returned attributions of shape {tuple(attributions.shape)} "
                               f"for inputs of shape {tuple(inputs.shape)}")
        assert meter.cost is not None
        return Explanation(method=self.name, attributions=attributions, inputs=inputs.detach().cpu(),
                           targets=targets.cpu(), config=self.get_params(), cost=meter.cost, family=self.family,
                           extras={k: torch.cat(v) for k, v in extras.items()})

    def _resolve_targets(self, x: torch.Tensor, target: Any) -> torch.Tensor:
        n = len(x)
        with torch.no_grad():
            n_classes = int(self.model(x[:1]).shape[-1])
            if target is None:
                return torch.cat([self.model(x[i:i + 512]).argmax(-1) for i in range(0, n, 512)])
        t = torch.as_tensor(target, device=x.device)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise XauditError(f"target must be integer class indices, got dtype {t.dtype}")
        t = t.long().reshape(-1)
        if t.numel() == 1:
            t = t.expand(n).clone()
        if t.numel() != n:
            raise XauditError(f"got {t.numel()} targets for {n} inputs: pass one target or one per input")
        bad = t[(t < 0) | (t >= n_classes)]
        if bad.numel():
            raise XauditError(f"target {int(bad[0])} is out of range: the model has {n_classes} classes "
                              f"(0..{n_classes - 1})")
        return t


def _as_batch(inputs: Any) -> torch.Tensor:
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(inputs)
    if not isinstance(inputs, torch.Tensor):
        raise XauditError(f"inputs must be a torch.Tensor or numpy array, got {type(inputs).__name__}")
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise XauditError("the batch to explain is empty: pass at least one input")
    if not inputs.dtype.is_floating_point:
        inputs = inputs.float()
    if not torch.isfinite(inputs).all():
        raise XauditError("inputs contain NaN or Inf values: clean them before explaining")
    return inputs


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def explain(model: nn.Module, inputs: torch.Tensor, method: str = "saliency",
            target: int | Sequence[int] | torch.Tensor | None = None, *, background: torch.Tensor | None = None,
            batch_size: int | None = None, seed: int | None = 0, **params: Any) -> Explanation:
    """Explain ``inputs`` with the registered ``method`` (one call; captum-like keyword arguments).

    >>> exp = explain(model, x, method="integrated_gradients", target=3, n_steps=64)
    >>> exp.attributions.shape == x.shape
    """
    explainer = get_explainer(method)(model, **params)
    if explainer.needs_background:
        if background is None:
            raise XauditError(f"{method} needs background data: pass background=<a few training inputs>")
        explainer.fit(background)
    return explainer.explain(inputs, target, batch_size=batch_size, seed=seed)
