"""Can a hook-based attribution rule (DeepLift, guided backprop, SHAP's DeepExplainer) run on this model?

Those rules replace the gradient of each activation *module* through module hooks. They silently give
wrong answers, or crash, on common models (shap #3466, #1479): an in-place activation overwrites the
tensor a backward hook needs; an activation module called at several places keeps only one call's
input and output; an activation written as ``F.relu(x)`` in a ``forward`` has no module to hook, so the
rule is not applied there. :func:`check_hook_compat` finds these, and :func:`hook_safe_copy` returns a
copy of the model's modules with what can be fixed fixed (the user's model is never modified) or refuses with
a one-line error naming the module and the fix.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import sys
import types
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from xaudit.models._errors import XauditError
from xaudit.models._walk import per_generation

from ._base import model_guard


def library(name: str) -> types.ModuleType:
    """Import ``name`` (captum or shap, loaded when a method first needs them) without tqdm's notebook warning.

    Both import ``tqdm.auto``, which in a Jupyter kernel without ipywidgets warns "IProgress not found.
    Please update jupyter and ipywidgets" into the first cell that explains anything. It is about progress
    bars that xaudit never shows, so it is silenced for this import only (the user's filters stay as they are).
    """
    module = sys.modules.get(name)
    if module is not None:  # imported already: catch_warnings alone cost ~25 µs, and a call asks several times
        return module
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        return importlib.import_module(name)

#: Modules a hook-based rule treats as nonlinearities (DeepLift's rescale/maxpool rules, guided ReLU).
ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softmax,
    nn.LogSoftmax, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
)

#: Functions that compute a ReLU (or a clipped one) without an activation module.
RELU_LIKE_FUNCTIONS = frozenset({
    "clamp", "clamp_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_", "clip", "clip_", "maximum",
    "minimum", "fmax", "fmin", "threshold", "threshold_", "_threshold",
})
#: Names of torch functions that are nonlinearities when called outside an activation module.
NONLINEAR_FUNCTIONS = frozenset({
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "prelu", "elu", "elu_", "selu", "celu", "gelu",
    "silu", "mish", "sigmoid", "sigmoid_", "tanh", "tanh_", "softplus", "hardtanh", "hardtanh_",
    "hardswish", "hardsigmoid", "softmax", "log_softmax", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "_max_pool1d", "_max_pool2d", "_max_pool3d",
    # ReLU and its kin written without F.relu: x.clamp(min=0), torch.maximum(x, zero), F.threshold. The model
    # computes the same, but no activation module sees it, so DeepLift's rescale rule and guided backprop's
    # clamp are skipped there and the maps come out silently wrong (completeness off by 0.085 on a digits CNN)
    *RELU_LIKE_FUNCTIONS,
    # absolute value and max reductions (a global max pool written as x.amax((2, 3))): piecewise-linear, no rule
    "abs", "abs_", "amax", "amin", "max", "min",
})


#: Functions with no DeepLift/DeepSHAP rule that are not linear in the input: normalisations (they divide by a
#: statistic of the input), exponentials, logarithms, powers, attention. The rescale rule passes gradients
#: through them as if they were linear, so attributions stop summing to f(x) − f(reference) (off by the size
#: of the attributions themselves behind an nn.LayerNorm); captum and shap do the same. Recorded only when an
#: argument depends on the input (a positional encoding's exp over a constant is fine).
UNRULED_FUNCTIONS = frozenset({
    "layer_norm", "group_norm", "instance_norm", "rms_norm", "local_response_norm", "normalize",
    "cosine_similarity", "exp", "exp_", "exp2", "expm1", "log", "log_", "log2", "log10", "log1p", "logsumexp",
    "sqrt", "sqrt_", "rsqrt", "pow", "pow_", "__pow__", "__rpow__", "__ipow__", "square", "reciprocal",
    "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "erf", "erfc", "logit", "logaddexp",
    "hypot", "floor", "ceil", "round", "trunc", "frac", "sign", "remainder", "fmod", "cumprod", "sort", "topk",
    "norm", "cdist", "softmin", "multi_head_attention_forward", "scaled_dot_product_attention",
    "var", "std", "var_mean", "std_mean", "linalg_vector_norm", "vector_norm", "glu", "log_sigmoid", "logsigmoid",
    "softshrink", "hardshrink", "tanhshrink", "softsign", "special_expit", "expit", "addcdiv", "addcdiv_",
    "logcumsumexp", "cummax", "cummin", "sinc", "xlogy", "special_xlogy",
})
#: Comparisons: their result, turned into a mask, makes a ReLU by hand (x * (x > 0), torch.where(x > 0, ...)).
COMPARISONS = frozenset({"gt", "lt", "ge", "le", "eq", "ne", "__gt__", "__lt__", "__ge__", "__le__", "__eq__",
                         "__ne__", "greater", "less", "greater_equal", "less_equal", "sign", "signbit", "heaviside"})
#: Operations that carry a mask along (a conversion, a negation) or apply one.
_MASK_CARRIERS = frozenset({"float", "to", "type", "type_as", "double", "half", "bfloat16", "int", "long", "bool",
                            "logical_not", "__invert__", "__and__", "__or__", "logical_and", "logical_or",
                            "clone", "detach", "contiguous", "view", "reshape", "expand", "expand_as", "unsqueeze",
                            "squeeze", "flatten", "__getitem__"})
#: Products: nonlinear when two factors depend on the input (a squeeze-and-excitation gate x · σ(W·pool(x)),
#: attention's q·kᵀ, a GLU); a product with a constant or a parameter is linear.
PRODUCT_FUNCTIONS = frozenset({
    "mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply", "matmul", "__matmul__", "__rmatmul__",
    "mm", "bmm", "einsum", "addcmul", "addcmul_", "addmm", "baddbmm", "addbmm", "linear", "bilinear",
    "conv1d", "conv2d", "conv3d", "prod", "outer", "kron",
})
#: Operations a mask computed from the input makes nonlinear.
_MASK_USERS = frozenset({"where", "masked_fill", "masked_fill_", "masked_select", "masked_scatter"}) | PRODUCT_FUNCTIONS
#: Divisions: nonlinear when the divisor depends on the input (the divisor is the first argument of the
#: reflected operator).
_DIVISIONS = {"div": 1, "div_": 1, "divide": 1, "true_divide": 1, "__truediv__": 1, "__itruediv__": 1,
              "__rtruediv__": 0, "__rdiv__": 0}


def _input_dependent(value: Any) -> int:
    """How many tensors in ``value`` (an argument, or a list of them as einsum takes) depend on the input."""
    if isinstance(value, torch.Tensor):
        return int(value.requires_grad)
    if isinstance(value, (list, tuple)):
        return sum(isinstance(v, torch.Tensor) and v.requires_grad for v in value)
    return 0


def _unruled(name: str, args: tuple, kwargs: dict) -> str | None:
    """What makes this call nonlinear in the input with no rule for it, or None."""
    if name in _DIVISIONS:
        at = _DIVISIONS[name]
        divisor = args[at] if len(args) > at else kwargs.get("other")
        return f"a division by an input-dependent tensor ({name})" if _input_dependent(divisor) else None
    if name == "batch_norm":  # batch statistics (train mode, or no running statistics): divides by them
        training = args[5] if len(args) > 5 else kwargs.get("training", False)
        return "batch_norm with batch statistics" if training and _input_dependent(args[:1]) else None
    if name in UNRULED_FUNCTIONS:
        dependent = sum(_input_dependent(a) for a in args) + sum(_input_dependent(v) for v in kwargs.values())
        return f"{name}()" if dependent else None
    if name in PRODUCT_FUNCTIONS:
        dependent = sum(_input_dependent(a) for a in args) + sum(_input_dependent(v) for v in kwargs.values())
        return f"a product of two input-dependent tensors ({name})" if dependent >= 2 else None
    return None


@dataclass(frozen=True)
class CompatReport:
    """What stands between a model and a hook-based attribution rule.

    ``reused`` maps module names to forward calls per forward pass; ``functional`` lists
    ``(function, module it was called in)`` for nonlinearities called outside an activation module.
    ``probed`` is False when no sample was given, so reuse and functional calls were not looked for.
    ``unruled`` lists ``(operation, module it was called in)`` for operations outside activation modules that are
    nonlinear in the input with no DeepLift/DeepSHAP rule (:data:`UNRULED_FUNCTIONS`, products and divisions of
    input-dependent tensors, batch statistics): rules that claim summation-to-delta refuse these models.
    """

    inplace: tuple[str, ...]
    reused: dict[str, int]
    functional: tuple[tuple[str, str], ...]
    recurrent: tuple[str, ...]
    probed: bool
    unruled: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        """True when a hook-based rule can run on the model as it is."""
        return not (self.inplace or self.reused or self.functional)


def _named_activations(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, ACTIVATION_MODULES):
            yield name or type(model).__name__, module


class _FunctionalSpy(TorchFunctionMode):
    """Records nonlinear torch functions called while no activation module is running."""

    def __init__(self, stack: list[str], depth: list[int]) -> None:
        super().__init__()
        self.stack, self.depth = stack, depth
        self.found: dict[tuple[str, str], None] = {}
        self.unruled: dict[tuple[str, str], None] = {}
        # masks computed from the input by a comparison, kept alive (so their ids stay theirs) for the probe
        self.masks: dict[int, torch.Tensor] = {}

    def _is_mask(self, value: Any) -> bool:
        if isinstance(value, torch.Tensor):
            return id(value) in self.masks
        return isinstance(value, (list, tuple)) and any(self._is_mask(v) for v in value)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = getattr(func, "__name__", "")
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth[0] == 0:
            where = self.stack[-1] if self.stack else "forward"
            masked = any(self._is_mask(a) for a in args) or any(self._is_mask(v) for v in kwargs.values())
            if name in NONLINEAR_FUNCTIONS:
                self.found[(name, where)] = None
            elif masked and name in _MASK_USERS:
                self.unruled[(f"a mask computed from the input ({name}; a ReLU written by hand?)", where)] = None
            else:
                what = _unruled(name, args, kwargs)
                if what is not None:
                    self.unruled[(what, where)] = None
            if isinstance(out, torch.Tensor) and ((name in COMPARISONS and (sum(map(_input_dependent, args)) or masked))
                                                  or (masked and name in _MASK_CARRIERS)):
                self.masks[id(out)] = out
        return out


def check_hook_compat(model: nn.Module, sample: torch.Tensor | None = None) -> CompatReport:
    """Report in-place and reused activation modules, functional nonlinearities and recurrent layers.

    Reuse and functional calls are found by one probe forward pass of ``sample`` (batch of one is
    enough) in eval mode with temporary hooks, all removed and restored before returning; without a
    sample only the static checks run.
    """
    inplace = tuple(name for name, m in _named_activations(model) if getattr(m, "inplace", False))
    recurrent = tuple(name for name, m in model.named_modules() if isinstance(m, nn.RNNBase))
    if sample is None:
        return CompatReport(inplace, {}, (), recurrent, probed=False)

    calls: Counter[str] = Counter()
    stack: list[str] = []
    depth = [0]
    handles = []
    names = {id(m): n for n, m in _named_activations(model)}

    def enter(mod: nn.Module, _args: object, _name: str) -> None:
        stack.append(_name)
        if id(mod) in names:
            calls[names[id(mod)]] += 1
            depth[0] += 1

    def leave(mod: nn.Module, _args: object, _out: object) -> None:
        stack.pop()
        if id(mod) in names:
            depth[0] -= 1

    try:
        for name, module in model.named_modules():
            label = name or type(model).__name__
            handles.append(module.register_forward_pre_hook(lambda m, a, _n=label: enter(m, a, _n)))
            handles.append(module.register_forward_hook(leave))
        spy = _FunctionalSpy(stack, depth)
        # eval mode for the probe: a BatchNorm in train mode would update its running statistics. Gradients on
        # (parameters frozen): what depends on the input requires grad, which tells a product of two activations
        # from a product with a weight. A clone, so an in-place first operation does not hit a leaf.
        with model_guard(model), torch.inference_mode(False), torch.enable_grad():
            probe = sample[:1].detach()
            if probe.is_floating_point():
                probe = probe.clone().requires_grad_(True).clone()
            with spy:
                model(probe)
    finally:
        for h in handles:
            h.remove()
    reused = {name: n for name, n in calls.items() if n > 1}
    return CompatReport(inplace, reused, tuple(spy.found), recurrent, probed=True, unruled=tuple(spy.unruled))


def _split_reused(model: nn.Module, reused: set[int]) -> None:
    """Give every registration after the first of a reused module its own copy (in place, on a copy)."""
    seen: set[int] = set()
    for parent in list(model.modules()):
        # _modules, not named_children(): the latter lists a module registered twice only once
        for child_name, child in list(parent._modules.items()):
            if child is None or id(child) not in reused:
                continue
            if id(child) in seen:
                setattr(parent, child_name, copy.deepcopy(child))
            seen.add(id(child))


#: The attributes every nn.Module has (its registries and hook dicts): the copy gets its own. Anything else is
#: the user's state, shared with the copy (a private dict of tensors included: copied, an in-place update of one
#: of its tensors did not reach the cached copy, and attributions came out stale by up to 0.07).
_MODULE_INTERNALS = frozenset(vars(nn.Module()))


def _shareable(value: Any) -> bool:
    """Whether a user attribute can be shared with the copy: not a module, and nothing that points back at the
    user's modules (a bound method, or a container holding a module or one), which would keep the model alive
    from its cached copy and make the copy run the user's modules."""
    def points_back(v: Any) -> bool:
        return isinstance(v, (nn.Module, types.MethodType))

    if points_back(value):
        return False
    if isinstance(value, dict):
        return not any(points_back(v) for v in value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return not any(points_back(v) for v in value)
    return True


def hook_safe_copy(model: nn.Module, sample: torch.Tensor, method: str, *,
                   rule_modules: tuple[type[nn.Module], ...] = ACTIVATION_MODULES,
                   functions: frozenset[str] = NONLINEAR_FUNCTIONS, one_call_per_module: bool = True,
                   linear_elsewhere: bool = False) -> nn.Module:
    """A copy of ``model`` on which ``method``'s module hooks are safe, or a one-line XauditError.

    Modules are deep-copied; parameters and buffers are shared with ``model`` (no rule writes to them).

    In-place activations become out-of-place; a module registered at several places (the same
    ``nn.ReLU`` put twice into an ``nn.Sequential``) gets one copy per place. What cannot be fixed from
    outside the model's code is refused: a module called twice in a custom ``forward`` (only when
    ``one_call_per_module``: rules that keep each call's input and output on the module, like DeepLift's),
    a nonlinearity among ``functions`` called as a function, or an activation module the rule has no case
    for (not an instance of ``rule_modules``), and with ``linear_elsewhere`` (rules that promise summation-to-delta)
    an operation outside the rule's modules that is nonlinear in the input (``CompatReport.unruled``). Hooks
    are the copy's business only: the user's model keeps its modules, hooks and flags. The user's backward
    hooks are not carried over to the copy: they watch or rewrite gradients, not the function explained, and
    next to a rule's own hooks they changed captum's DeepLift values (by up to 0.07 on a small CNN).
    """
    # parameters and buffers are shared, not copied: the copy always computes with the model's current values
    # and so is every other plain attribute (a normalisation tensor, a list, a numpy array, a config object):
    # changed in place, the copy reads it current too. Only the modules and their registries and hook dicts
    # are the copy's own.
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    memo.update((id(v), v) for m in model.modules() for k, v in vars(m).items()
                if k not in _MODULE_INTERNALS and _shareable(v))
    # hook objects too (a callable instance with state, a pruning mask): copied, a change of their state did not
    # reach the cached copy (0.30 off). Bound methods stay copied, bound to the copy's own module
    memo.update((id(hook), hook) for m in model.modules() for k, registry in vars(m).items()
                if "hooks" in k and isinstance(registry, dict) for hook in registry.values()
                if not isinstance(hook, (types.MethodType, nn.Module)))
    try:
        safe = copy.deepcopy(model, memo)
    except Exception as err:  # noqa: BLE001 - any failure to copy means we cannot run hooks safely
        raise XauditError(f"{method} runs on a copy of the model to attach hooks, but the model cannot be "
                          f"deep-copied ({type(err).__name__}: {err}): make it copyable") from err
    for module in safe.modules():
        module._backward_hooks.clear()
        module._backward_pre_hooks.clear()
        module._is_full_backward_hook = None
    for name, module in _named_activations(safe):
        if getattr(module, "inplace", False):
            module.inplace = False
        if not isinstance(module, rule_modules):
            kind = type(module).__name__
            raise XauditError(f"{method} has no rule for the {kind} activation {name!r}: "
                              "choose a gradient method (e.g. integrated_gradients) for this model")
    report = check_hook_compat(safe, sample)
    if report.reused and one_call_per_module:
        by_name = dict(_named_activations(safe))
        _split_reused(safe, {id(by_name[n]) for n in report.reused})
        report = check_hook_compat(safe, sample)
    if report.reused and one_call_per_module:
        name, n = next(iter(report.reused.items()))
        kind = type(dict(_named_activations(safe))[name]).__name__
        raise XauditError(f"{method} needs each activation module called once per forward pass, but "
                          f"{name!r} ({kind}) is called {n} times: use a separate nn.{kind}() per call site")
    for func, where in report.functional:
        if func in functions:
            raise XauditError(f"{method} applies its rule through activation modules, but {where} calls "
                              f"{func}() as a function: use an activation module there (e.g. nn.ReLU())")
    if linear_elsewhere and report.unruled:
        what, where = report.unruled[0]
        raise XauditError(f"{method} has no rule for {what} in module {where!r} (it would pass gradients through as "
                          "if it were linear, and the attributions would not sum to the output difference): choose "
                          "integrated_gradients or shap_gradient for this model")
    return safe


def copy_refusal(make_copy: Callable[[torch.Tensor], nn.Module], model: nn.Module,
                 sample_shape: Sequence[int]) -> str | None:
    """The one-line reason ``make_copy`` (a method's cached hook-safe copy) refuses ``model``, or None: an
    activation the rule has no case for, a functional nonlinearity, a module called twice where hooks keep one."""
    floating = next((t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()), None)
    sample = (torch.zeros(1, *sample_shape) if floating is None
              else torch.zeros(1, *sample_shape, device=floating.device, dtype=floating.dtype))
    try:
        make_copy(sample)
    except XauditError as err:
        return str(err)
    return None


# Hook-safe copies per model: rule settings -> (the model's generation when copied, copy). Deep-copying and
# probing the model on every call was a third of a 256-sample guided-backprop call on the digits CNN.
_SAFE_COPIES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[int, nn.Module]]] = weakref.WeakKeyDictionary()


def cached_hook_safe_copy(model: nn.Module, sample: torch.Tensor, method: str, *,
                          rule_modules: tuple[type[nn.Module], ...] = ACTIVATION_MODULES,
                          functions: frozenset[str] = NONLINEAR_FUNCTIONS,
                          one_call_per_module: bool = True, linear_elsewhere: bool = False) -> nn.Module:
    """:func:`hook_safe_copy`, made once per model generation, sample shape and rule, then reused.

    The copy shares the model's parameter, buffer and other tensors, so in-place updates (training steps,
    ``load_state_dict``) reach it; anything else that changes (a module, parameter or buffer replaced, a flag
    or plain attribute set, a hook added: :func:`~xaudit.models._walk.model_generation`) makes a new copy. Only
    for rules that leave no state on the copy's modules after a call (captum's remove their hooks and
    attributes in ``finally`` blocks).
    """
    key = (tuple(sample.shape[1:]), sample.dtype, method, rule_modules, functions, one_call_per_module,
           linear_elsewhere)

    def copy_once() -> nn.Module:
        safe = hook_safe_copy(model, sample, method, rule_modules=rule_modules, functions=functions,
                              one_call_per_module=one_call_per_module, linear_elsewhere=linear_elsewhere)
        return safe.eval()  # once: nothing puts the private copy back in training mode

    return per_generation(_SAFE_COPIES, model, key, copy_once)
