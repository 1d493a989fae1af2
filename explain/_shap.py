"""The SHAP family on the common contract: expected gradients (shap's GradientExplainer estimator, batched
here) and DeepLIFT-style SHAP (shap's DeepExplainer values, natively on elementwise-activation models).

All four SHAP methods (these two and the batched Kernel/Partition estimators in ``_shap_fast``) share
:class:`ShapExplainer`: background data is given once with :meth:`ShapExplainer.fit` and validated there.

shap explains every output class by default (about ten times the work on a 10-class model; FIELD_NOTES
measured ~2000 evaluations per sample for GradientExplainer at 200 samples). We hand shap a module that
returns only the explained target's logit, one sample at a time, so it explains one output.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xaudit.models._errors import XauditError

from ._base import CallContext, CountingModel, Explainer
from ._compat import cached_hook_safe_copy, copy_refusal, hook_safe_copy, library
from ._model_call import manual_seed, rng_devices, target_gradient
from ._params import integer_param, number_param
from ._rescale import SHAP_RESCALE_MODULES, rescale_ready, rescale_rule

#: The activation modules shap's DeepExplainer has a DeepLIFT rule for (``deep_pytorch.op_handler``); any
#: other activation module would silently get its plain gradient, so such models are refused.
_DEEP_RULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softmax, nn.SELU, nn.GELU,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
)


class ShapExplainer(Explainer):
    """Base of the SHAP methods: background data given once with :meth:`fit`, stored as ``background_``."""

    family = "shap"
    needs_background = True

    def fit(self, background: Any) -> ShapExplainer:
        """Store validated background samples (a batch shaped like the inputs: N×C×H×W or N×T×F)."""
        if isinstance(background, np.ndarray):
            background = torch.from_numpy(background)
        if not isinstance(background, torch.Tensor):
            raise XauditError(f"background must be a torch.Tensor or numpy array, got {type(background).__name__}")
        if background.dim() not in (3, 4):
            raise XauditError(f"background must be a batch of samples (N×C×H×W or N×T×F), got shape "
                              f"{tuple(background.shape)}: add the batch dimension")
        if background.shape[0] == 0 or background.numel() == 0:
            raise XauditError("background is empty: pass at least one sample (a few dozen training inputs)")
        if not background.dtype.is_floating_point:
            background = background.float()
        if not torch.isfinite(background).all():
            raise XauditError("background contains NaN or Inf values: clean it before fitting")
        with torch.inference_mode(False):  # a normal tensor even when fitted inside torch.inference_mode()
            self.background_ = background.detach().clone()
        return self

    def _background_for(self, inputs: torch.Tensor) -> torch.Tensor:
        """The background on the inputs' device and dtype, checked against their per-sample shape."""
        background = getattr(self, "background_", None)
        if background is None:
            raise XauditError(f"{self.name} needs background data: call fit(background) with a few training "
                              "inputs first (or pass background= to explain)")
        if background.shape[1:] != inputs.shape[1:]:
            raise XauditError(f"background samples have shape {tuple(background.shape[1:])} but the inputs have "
                              f"{tuple(inputs.shape[1:])}: draw the background from the same data as the inputs")
        return background.to(inputs.device, inputs.dtype)

    def _n_background(self, default: int = 1) -> int:
        background = getattr(self, "background_", None)
        return default if background is None else int(background.shape[0])


class _TargetLogit(nn.Module):
    """Returns only the logit of ``target`` (one column), so shap explains one output instead of all.

    shap's explainers evaluate the whole background in their constructor only to learn the number of
    outputs; with ``target`` unset we answer that probe (one output) without running the model, so every
    evaluation that is counted is one the method needs. Outputs of real passes are kept in ``outputs``
    (DeepExplainer's single pass holds f(x) and f(background), which gives the additivity check for free).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.target: int | None = None
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.target is None:
            return x.new_zeros(x.shape[0], 1)
        out = self.net(x)[:, self.target:self.target + 1]
        self.outputs.append(out.detach())
        return out

    def zero_grad(self, set_to_none: bool = True) -> None:
        """A no-op: shap calls it before every gradient, which would drop the user's own ``.grad``; the
        parameters are frozen for the call, so there is nothing of ours to clear."""


def _counted(model: nn.Module, copy: nn.Module) -> nn.Module:
    """``copy`` counted by the same counter as the wrapper the base class handed to ``_attribute``."""
    return CountingModel(copy, model.counter) if isinstance(model, CountingModel) else copy


@functools.lru_cache(maxsize=64)
def _shap_draws(rseed: int, n_background: int, nsamples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(background index, interpolation weight) per point as ``shap.GradientExplainer`` draws them after
    ``np.random.seed(rseed)``, from a private stream. Cached: the Python loop was ~6% of an 8-sample call on the
    digits CNN, and a seeded call draws the same points every time. The tensors are shared: read them only."""
    stream = np.random.RandomState(rseed)
    index = np.empty(nsamples, dtype=np.int64)
    weight = np.empty(nsamples, dtype=np.float64)
    for k in range(nsamples):  # interleaved as shap draws them: choice, then uniform
        index[k] = stream.choice(n_background)
        weight[k] = stream.uniform()
    return torch.from_numpy(index), torch.from_numpy(weight)


class ShapGradient(ShapExplainer):
    """Expected gradients: gradients at random points between the input and background samples, times the
    difference (Erion et al. 2021; Lundberg & Lee 2017, SHAP): ``shap.GradientExplainer``'s estimator.

    shap builds each sample's ``nsamples`` interpolation points one at a time in a Python loop and calls the
    model per sample, which made it the slowest method per model evaluation (4.8× the batched evaluation
    time on the digits CNN). This class draws the same points (the background index and the interpolation
    weight from numpy's legacy stream seeded with ``seed``, local-smoothing noise from torch's stream
    seeded the same way, in shap's order), evaluates them ``row_batch`` rows at a time across samples, and
    averages gradient × (x − background) in float64 as shap does, so the values equal
    ``shap.GradientExplainer(...).shap_values(x, nsamples, rseed=seed)`` for the target class (tested).
    Every sample uses the same draws, so a sample's attributions do not depend on the batch it is in.
    Attributions sum to f(x) − E[f(background)] in expectation only.
    """

    name = "shap_gradient"
    paper = "Erion et al. 2021 (expected gradients); Lundberg & Lee 2017"
    is_stochastic = True
    streams_rows = True
    # float64 products per row on top of the gradient: measured up to 1.9× the row estimate (32×32 digits CNN)
    memory_factor = 1.2

    def __init__(self, model: nn.Module, *, nsamples: int = 200, local_smoothing: float = 0.0) -> None:
        super().__init__(model)
        self.nsamples = integer_param("nsamples", nsamples, minimum=1, example=200)
        self.local_smoothing = number_param("local_smoothing", local_smoothing, minimum=0.0, example=0.0)

    def get_params(self) -> dict[str, Any]:
        return {"nsamples": self.nsamples, "local_smoothing": self.local_smoothing}

    def rows_per_sample(self, sample_shape: Sequence[int] | None = None) -> int:
        return self.nsamples

    def expected_evals(self, sample_shape: Sequence[int] | None = None) -> tuple[float, float]:
        return float(self.nsamples), float(self.nsamples)

    def _draws(self, n_background: int, seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """shap's draws for one sample: (background index, interpolation weight) per point, in its order."""
        rseed = int(np.random.randint(0, 1_000_000)) if seed is None else seed  # shap's own fallback
        return _shap_draws(rseed, n_background, self.nsamples)

    def _noise(self, shape: Sequence[int], n_rows: int, ctx: CallContext) -> torch.Tensor:
        """Local-smoothing noise, one standard-normal draw per point in shap's order (``n_rows`` points)."""
        with torch.random.fork_rng(devices=rng_devices(ctx.device)):
            if ctx.seed is not None:
                manual_seed(ctx.seed, ctx.device)
            # one small draw per point, as shap makes them: a single large draw would give other numbers
            return torch.stack([torch.empty(tuple(shape), device=ctx.device).normal_() for _ in range(n_rows)])

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   ctx: CallContext) -> torch.Tensor:
        background = self._background_for(inputs)
        ns, shape = self.nsamples, inputs.shape[1:]
        index, weight = self._draws(background.shape[0], ctx.seed)
        index = index.to(inputs.device)
        # shap multiplies float32 tensors by float64 scalars t and 1 - t: each is rounded to float32 once
        lead = (-1, *[1] * len(shape))
        t_all = weight.to(inputs.device, inputs.dtype).view(lead)
        u_all = (1 - weight).to(inputs.device, inputs.dtype).view(lead)
        noise = None
        if self.local_smoothing > 0:
            # with a seed every sample is reseeded (batch invariance); without one the stream runs on
            noise = (self._noise(shape, ns, ctx) if ctx.seed is not None
                     else self._noise(shape, ns * len(inputs), ctx).view(len(inputs), ns, *shape))
        x = inputs.detach()
        total = torch.zeros(len(inputs), *shape, dtype=torch.float64, device=inputs.device)
        n_rows = len(inputs) * ns
        for start in range(0, n_rows, max(1, ctx.row_batch)):
            rows = torch.arange(start, min(start + ctx.row_batch, n_rows), device=inputs.device)
            j, k = rows // ns, rows % ns
            xj = x[j]
            if noise is not None:
                xj = xj + (noise[k] if noise.dim() == len(shape) + 1 else noise[j, k]) * self.local_smoothing
            ref = background[index[k]]
            points = (t_all[k] * xj + u_all[k] * ref).requires_grad_(True)
            out = model(points).gather(1, targets[j].view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(out, points)
            total.index_add_(0, j, grad.double() * (xj - ref).double())
        return (total / ns).to(inputs.dtype)


class ShapDeep(ShapExplainer):
    """DeepLIFT multipliers averaged over background references (Lundberg & Lee 2017, DeepSHAP;
    Shrikumar et al. 2017, rescale rule): ``shap.DeepExplainer``'s values.

    The rule runs on a private copy of the model (``hook_safe_copy``: in-place activations made
    out-of-place, shared modules split, shap #3466, #1479), never on the user's model. On models whose
    activations are all elementwise (the built-in CNN) it runs natively (``_rescale``): the background goes
    through the model once per call, and each input, tiled against the references, once forward and
    backward, with shap's rule (eps 1e-6, the multipliers of the reference rows; tested equal to
    ``shap.DeepExplainer``); an activation module applied twice in ``forward`` (ResNet's basic block), which
    shap's hooks get wrong, pairs each of its calls with the references' same call. Models with max-pooling
    or softmax modules go through shap itself, one sample at a time against the background (2 rows per
    reference and sample); in bfloat16 those are refused, as shap converts to numpy, which has no bfloat16.

    shap's own additivity check raises on plain CNNs (shap #3938, #3363); we turn it off and return the
    per-sample gap sum(φ) − (f(x) − E[f(background)]) in ``extras["additivity_error"]`` instead, with
    E[f(background)] in ``extras["base_value"]``, both read from the passes that compute the attributions.
    At most ``row_batch`` rows go through the model at once: the background is split into groups if it must
    be; references are independent, so averaging the groups is exact.
    """

    uses_module_hooks = True

    name = "shap_deep"
    paper = "Lundberg & Lee 2017 (DeepSHAP); Shrikumar et al. 2017 (DeepLIFT)"
    supports_recurrent = False
    recurrent_reason = "shap's DeepExplainer has no LSTM/GRU rules (shap #2653, #3415)"
    #: shap's ``nonlinear_1d``: below this |x − x₀| a module's multiplier is its local derivative.
    eps = 1e-6
    # the background's activations stay for the whole call next to the tiled rows, and the rule makes Δ
    # temporaries: measured 2.4-3.0× the row estimate on the 32×32 digits CNN, against 1.3-1.7× for a gradient
    memory_factor = 1.8

    def _rule_refusal(self, sample_shape: tuple[int, ...]) -> str | None:
        reason = copy_refusal(self._safe_copy, self.model, sample_shape)
        if reason or self._native():
            return reason
        floating = next((t for t in itertools.chain(self.model.parameters(), self.model.buffers())
                         if t.is_floating_point()), None)
        if floating is not None and floating.dtype == torch.bfloat16:
            # shap turns the model's outputs and gradients into numpy arrays; the native rule needs no numpy
            return ("shap_deep runs this model (it has max-pooling or softmax modules) through shap's DeepExplainer, "
                    "which converts outputs to numpy, and numpy has no bfloat16: use model.float() with float32 "
                    "inputs for shap_deep, or choose another method")
        return None

    def _native(self) -> bool:
        return rescale_ready(self.model, SHAP_RESCALE_MODULES)

    def _safe_copy(self, sample: torch.Tensor) -> nn.Module:
        """The cached hook-safe copy the native rule runs on (also the check that the model allows one)."""
        # the native rule pairs each call of a module with the reference's same call (an activation applied
        # twice is fine); shap's hooks keep one input and output per module
        return cached_hook_safe_copy(self.model, sample, self.name, rule_modules=_DEEP_RULES,
                                     one_call_per_module=not self._native(), linear_elsewhere=True)

    def _prepare(self, sample: torch.Tensor) -> None:
        if self._native():
            self._safe_copy(sample)
        else:
            library("shap")

    def rows_per_sample(self, sample_shape: Sequence[int] | None = None) -> int:
        return (1 if self._native() else 2) * self._n_background()

    def expected_evals(self, sample_shape: Sequence[int] | None = None) -> tuple[float, float]:
        rows = float(self.rows_per_sample(sample_shape))
        return rows, rows

    def evals_per_call(self, sample_shape: Sequence[int] | None = None) -> tuple[float, float]:
        return (float(self._n_background()), 0.0) if self._native() else (0.0, 0.0)

    def held_rows(self) -> float:
        # the native rule records every background reference's activations (each rule module's input and
        # output) once per call and keeps them to the end: with 64 references on a 64×64 CNN that was 118 MiB
        # under a 16 MiB budget planned for the rows in flight alone
        # (each rule module's input and output per reference: 0.70 of the model's row estimate per reference
        # measured on that CNN, 1.73-1.78 MiB of 2.53)
        return 0.75 * self._n_background() if self._native() else 0.0

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                   ctx: CallContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self._native():
            return self._attribute_native(model, inputs, targets, ctx)
        return self._attribute_with_shap(model, inputs, targets, ctx)

    def _attribute_native(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                          ctx: CallContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        background = self._background_for(inputs)
        safe = self._safe_copy(inputs[:1].detach())
        counted = _counted(model, safe)
        n, shape = len(inputs), inputs.shape[1:]
        group = max(1, min(len(background), ctx.row_batch))  # references per pass
        x = inputs.detach()
        phi = torch.zeros(n, *shape, dtype=torch.float64, device=inputs.device)
        f_x = torch.empty(n, dtype=torch.float64, device=inputs.device)
        base = torch.zeros(n, dtype=torch.float64, device=inputs.device)
        with rescale_rule(safe, SHAP_RESCALE_MODULES, eps=self.eps, at_reference=True) as rule:
            for g0 in range(0, len(background), group):
                refs = background[g0:g0 + group]
                k = len(refs)
                key = (self.name, g0, k, tuple(shape), inputs.dtype)
                if key in ctx.memo:  # this group's activations, recorded by the call's first chunk
                    rule.references, f_refs = ctx.memo[key]
                else:
                    with torch.no_grad(), rule.recording():
                        f_refs = counted(refs)
                    ctx.memo[key] = (rule.references, f_refs)
                base += f_refs[:, targets].double().sum(0)
                per_pass = max(1, ctx.row_batch // k)  # samples whose k tiled rows fit one pass
                for s0 in range(0, n, per_pass):
                    xs = x[s0:s0 + per_pass]
                    m = len(xs)
                    rows = xs.repeat_interleave(k, dim=0)  # (sample, reference) order
                    grad, out = target_gradient(counted, rows, targets[s0:s0 + m].repeat_interleave(k))
                    diff = xs[:, None] - refs[None]
                    phi[s0:s0 + m] += (grad.view(m, k, *shape) * diff).sum(1).double()  # shap sums in float32
                    f_x[s0:s0 + m] = out.view(m, k)[:, 0].double()
        phi /= len(background)
        base /= len(background)
        gap = phi.flatten(1).sum(1) - (f_x - base)
        return phi.to(inputs.dtype), {"additivity_error": gap.float(), "base_value": base.float()}

    def _attribute_with_shap(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                             ctx: CallContext) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        shap = library("shap")

        background = self._background_for(inputs)
        # a fresh copy per call: shap leaves its hooks' attributes on the modules it ran through
        safe = hook_safe_copy(self.model, inputs[:1].detach(), self.name, rule_modules=_DEEP_RULES,
                              linear_elsewhere=True)
        head = _TargetLogit(_counted(model, safe))
        group = max(1, ctx.row_batch // 2)
        explainers = [(shap.DeepExplainer(head, background[i:i + group]), len(background[i:i + group]))
                      for i in range(0, len(background), group)]
        phis, deltas, bases = [], [], []
        for x, target in zip(inputs.detach(), targets.tolist()):
            head.target = int(target)
            phi = torch.zeros_like(x, dtype=torch.float64)
            fx = base = 0.0
            for explainer, size in explainers:
                head.outputs.clear()
                values = explainer.shap_values(x[None], check_additivity=False)
                phi += torch.as_tensor(np.asarray(values), device=x.device).reshape(x.shape) * size
                out = torch.cat(head.outputs).double().flatten()  # [f(x) tiled `size` times, f(references)]
                fx = float(out[0])
                base += float(out[size:].sum())
            phi /= len(background)
            base /= len(background)
            phis.append(phi)
            bases.append(base)
            deltas.append(float(phi.sum()) - (fx - base))
        attr = torch.stack(phis).to(inputs.dtype)
        return attr, {"additivity_error": torch.tensor(deltas), "base_value": torch.tensor(bases)}
