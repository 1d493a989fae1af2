"""Computing a report: evaluate the model, pick the samples to explain, run every method, meter the cost.

Nothing here draws or writes; :mod:`._report` turns the :class:`ReportContext` into HTML and JSON.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from xaudit.explain import Explainer, Explanation, available_methods, get_explainer, parse_bytes
from xaudit.explain._memory import budget_too_small, current_budget
from xaudit.explain._memory import memory_budget as explain_memory_budget
from xaudit.models._data import Dataset, check_seed
from xaudit.models._errors import XauditError
from xaudit.models._modes import eval_mode
from xaudit.models._nets import MODELS, build_model
from xaudit.models._recipes import default_data
from xaudit.models._sweep_result import accuracy_difference
from xaudit.models._train import evaluate

from ._quality_build import check_quality_mode, compute_quality
from ._runtime import CpuContention, machine_info, resolve_device
from ._subject import ModelSource, Subject, load_data, resolve_subject

#: Training inputs handed to methods that need background data (SHAP-style baselines).
BACKGROUND_SIZE = 64

Progress = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class MethodResult:
    """One method's outcome on the report's samples: an explanation, or the reason there is none.

    ``quality`` holds report.json's quality object once :func:`._quality_build.compute_quality` fills it
    (empty when the quality step is skipped); ``explainer`` is the configured method, kept so quality
    metrics can re-run it (never serialized).
    """

    name: str
    family: str
    paper: str
    capabilities: dict[str, bool]
    explanation: Explanation | None = None
    reason: str | None = None
    #: True when the method supports this kind of model but failed on it (``reason`` says how): the audit
    #: fails such a method's checks instead of skipping them.
    failed: bool = False
    fit_wall_s: float | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    explainer: Explainer | None = field(default=None, repr=False)

    @property
    def supported(self) -> bool:
        return self.explanation is not None


@dataclass(frozen=True, eq=False)
class ReportContext:
    """Everything the sections render: the subject, its metrics, the explained samples and each method's result.

    ``targets`` are the model's predictions for the explained samples (every method explains the predicted
    class); ``labels`` are the true classes. ``quality`` is the report-wide quality part (frontier,
    recommendations, agreement, random-map reference, sample curves, ``quality_config``).
    """

    subject: Subject
    device: torch.device
    metrics: dict[str, float | None]
    indices: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    methods: tuple[MethodResult, ...]
    machine: dict[str, Any]
    seed: int
    created_utc: str
    quality: dict[str, Any] = field(default_factory=dict)
    #: The background data handed to the methods that need it: ``{"n", "source"}`` (see :func:`background_info`).
    background: dict[str, Any] = field(default_factory=dict)
    #: The memory budget every method ran under, in bytes.
    memory_budget_bytes: int | None = None


def resolve_methods(methods: str | Sequence[str] | None) -> tuple[str, ...]:
    """Method names to run (default: every registered one), each checked against the registry."""
    if methods is None:
        return available_methods()
    names = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else [str(m).strip() for m in methods]
    names = [m for m in names if m]
    if not names:
        raise XauditError(f"no explanation method given: pick from {', '.join(available_methods())}")
    # the registered spelling ("LIME" -> "lime"), or the "did you mean" error
    return tuple(dict.fromkeys(get_explainer(name).name for name in names))


def select_samples(n_total: int, n: int, seed: int) -> torch.Tensor:
    """Indices of ``n`` of ``n_total`` samples: a seeded random subset in ascending order (all when n ≥ n_total)."""
    if n >= n_total:
        return torch.arange(n_total)
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=generator)[:n].sort().values


def background_samples(dataset: Dataset, seed: int, explained: torch.Tensor | None = None) -> torch.Tensor:
    """Up to :data:`BACKGROUND_SIZE` seeded training inputs; when the data has no training split, test inputs
    other than the ``explained`` ones (test indices). A sample in its own background pulls its SHAP values
    towards 0: with one test sample every SHAP map was all zeros. May be empty (see :func:`no_background`)."""
    if dataset.n_train:
        pool = dataset.x_train
    else:
        keep = torch.ones(dataset.n_test, dtype=torch.bool)
        if explained is not None:
            keep[explained] = False
        pool = dataset.x_test[keep]
    return pool[select_samples(len(pool), BACKGROUND_SIZE, (seed + 1) % 2**32)]


def background_info(dataset: Dataset, background: torch.Tensor) -> dict[str, Any]:
    """What report.json says of the background data the SHAP methods were given."""
    source = "train" if dataset.n_train else "test, the explained samples left out"
    return {"n": len(background), "source": source}


def no_background(name: str) -> str:
    """The reason a method that needs background data has none."""
    return (f"{name} needs background data and there is none: the data has no training split and every test "
            "sample is explained; add x_train and y_train to the .npz, or explain fewer samples (--n-explain)")


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def compute_metrics(model: nn.Module, dataset: Dataset) -> dict[str, float | None]:
    """Accuracy and loss on the full train and test splits, and the generalization gap (train − test accuracy).

    Train metrics are on every training sample, the validation part included, in eval mode; they are None
    when the data has no training split. (The overfitting section's gap is on the fitted samples where the
    training split is known; the built-in recipes hold out none, so the two agree for them.) The gap is rounded
    as the diagnostics' is, so 100% − 95% is exactly 0.05.
    """
    test_loss, test_acc = evaluate(model, dataset.x_test, dataset.y_test)
    train_loss: float | None = None
    train_acc: float | None = None
    if dataset.n_train:
        train_loss, train_acc = evaluate(model, dataset.x_train, dataset.y_train)
    return {"train_accuracy": train_acc, "test_accuracy": test_acc,
            "generalization_gap": None if train_acc is None else accuracy_difference(train_acc, test_acc),
            "train_loss": train_loss, "test_loss": test_loss}


def predict_classes(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's predicted class per sample (on the CPU), in eval mode without autograd."""
    device = _model_device(model)
    with eval_mode(model), torch.no_grad():
        return torch.cat([model(xb.to(device)).argmax(-1).cpu() for xb in x.split(512)])


def check_memory_budget(model: nn.Module, x: torch.Tensor, names: Sequence[str],
                        memory_budget: int | str | None) -> None:
    """Raise the one-line budget error if ``memory_budget`` is too small for one sample of ``x`` with any method in
    ``names`` that supports ``model``; methods the model does not support are left to their reason.

    A budget too small is an error of the whole run, not a property of the model, so it must stop the run
    before any explaining instead of showing the method as unsupported. When several methods do not fit,
    the error names the one that needs the most (the amount to raise the budget to). Costs one forward
    pass of one sample (the row estimate, cached for the explanations that follow).
    """
    budget = current_budget(memory_budget)
    needs: dict[str, int] = {}
    for name in names:
        explainer = get_explainer(name)(model)
        if explainer.unsupported_reason(tuple(x.shape[1:])) is None:
            needs[name] = explainer.memory_needed(x[:1])
    too_small = sorted((need, name) for name, need in needs.items() if need > budget)
    if not too_small:
        return
    need, worst = too_small[-1]
    others = [name for _, name in too_small[:-1]]
    raise budget_too_small(budget, worst, need, f" (too small for {', '.join(others)} as well)" if others else "")


def check_budget_before_training(model: ModelSource, data: Dataset | str | os.PathLike[str] | None,
                                 names: Sequence[str], memory_budget: int | str | None, *,
                                 state_dict: str | os.PathLike[str] | None = None, seed: int = 0,
                                 refuse_unsupported: bool = False) -> None:
    """:func:`check_memory_budget` on an untrained copy of a built-in model that would be trained first, so a
    budget too small fails before training: the activations a row holds do not depend on the weights. With
    ``refuse_unsupported`` (``xaudit explain``, one method), a method that cannot explain the architecture is
    refused there too (:func:`unsupported_error`), not after minutes of training.

    Any other model is cheap to load; its budget is checked after loading, before explaining.
    """
    if not (isinstance(model, str) and model in MODELS and state_dict is None):
        return
    # built-in datasets are cached in-process, so resolving the subject next reads them once
    dataset = load_data(data if data is not None else default_data(model), seed=seed)
    fresh = build_model(model, dataset.input_shape, dataset.n_classes)
    if refuse_unsupported:
        for name in names:
            reason = get_explainer(name)(fresh).unsupported_reason(tuple(dataset.x_test.shape[1:]))
            if reason:
                raise unsupported_error(name, reason)
    check_memory_budget(fresh, dataset.x_test[:1], names, memory_budget)


def unsupported_error(name: str, reason: str) -> XauditError:
    """The one-line error for a method that cannot explain the model (``xaudit explain``)."""
    return XauditError(reason if reason.startswith(f"{name} ") else f"{name} cannot explain this model: {reason}")


#: A method's measured call shorter than this is timed :data:`SHORT_CALL_REPEATS` times and the fastest kept
#: (as timeit and pyperf do): noise from other processes only ever adds time, and on a call of a few
#: milliseconds one burst can multiply it.
SHORT_CALL_S = 0.1
SHORT_CALL_REPEATS = 3
_clock = time.perf_counter  # times the one-sample call (a test substitutes a clock it controls)


def _warm_up(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, memory_budget: int | None) -> None:
    """One untimed saliency pass over ``x`` (through the explainers' own guards: eval mode, frozen parameters,
    the cuDNN RNN workaround). A model saliency cannot run is left cold: its methods report why themselves."""
    explainer = get_explainer("saliency")(model)
    if explainer.unsupported_reason(tuple(x.shape[1:])):
        return
    with contextlib.suppress(XauditError, RuntimeError, ValueError, TypeError):
        explainer.explain(x, targets, memory_budget=memory_budget)


def explain_methods(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, background: torch.Tensor,
                    names: Sequence[str], *, seed: int, progress: Progress | None = None,
                    memory_budget: int | None = None, say_failures: bool = True) -> tuple[MethodResult, ...]:
    """Run each method on ``x`` for ``targets``; unsupported methods and user-level errors become reasons.

    A ``memory_budget`` too small for any supported method raises first (see :func:`check_memory_budget`).

    Each method runs once, untimed, on one sample first, so one-time costs (lazy imports, thread pools,
    allocator warm-up) land on no method's bill; the first method would otherwise pay for all of them. Before
    any method, an untimed gradient pass over all of ``x`` pays what the first call at the batch's shapes
    costs (oneDNN's primitives on CPU; cuDNN's and cuBLAS's set-up on CUDA): without it the first method,
    saliency by default, was billed about twice its time on CPU and 18 times on an H200.
    """
    say = progress or (lambda _msg: None)
    # a budget too small is the caller's error, not the model's: it must never become a method's reason
    check_memory_budget(model, x, names, memory_budget)
    _warm_up(model, x, targets, memory_budget)
    results = []
    for i, name in enumerate(names, 1):
        cls = get_explainer(name)
        explainer = cls(model)
        base = {"name": name, "family": cls.family, "paper": cls.paper,
                "capabilities": {"uses_gradients": cls.uses_gradients, "needs_background": cls.needs_background,
                                 "is_stochastic": cls.is_stochastic}}
        reason = explainer.unsupported_reason(tuple(x.shape[1:]))
        if not reason and cls.needs_background and len(background) == 0:
            reason = no_background(name)
        if reason:
            say(f"method {i}/{len(names)} {name}: skipped: {reason}")
            results.append(MethodResult(**base, reason=reason))
            continue
        say(f"method {i}/{len(names)} {name}: explaining {len(x)} samples")
        try:
            start = time.perf_counter()
            if cls.needs_background:
                explainer.fit(background)
            fit_s = time.perf_counter() - start if cls.needs_background else None
            one = _clock()
            explainer.explain(x[:1], targets[:1], seed=seed, memory_budget=memory_budget)
            one = _clock() - one
            # from a released heap: each method's peak is its own, not what the methods before it left free
            exp = explainer.explain(x, targets, seed=seed, memory_budget=memory_budget, fresh_heap=True)
            # a short call is timed again and the fastest kept: a few milliseconds of another process on a
            # shared core billed saliency 70 times input_x_gradient's time for the same work (user test). Short
            # by the measured call or by the one-sample call times n, so a burst that pushed the measured call
            # past the threshold does not exempt it
            short = min(exp.cost.wall_s, one * len(x)) < SHORT_CALL_S
            for _ in range(SHORT_CALL_REPEATS - 1 if short else 0):
                again = explainer.explain(x, targets, seed=seed, memory_budget=memory_budget, fresh_heap=True)
                if again.cost.wall_s < exp.cost.wall_s:
                    exp = again
        except (XauditError, RuntimeError, ValueError, TypeError) as exc:
            # one method failing on this model should not cost the user every other method's result; the
            # reason goes in the report instead (the memory budget was checked above, for every method). A
            # library error too (shap's hooks on a ResNet block's in-place add): named, in one line
            said = " ".join(str(exc).split())
            reason = said if isinstance(exc, XauditError) else f"{name} failed on this model ({type(exc).__name__}: {said[:300]})"
            if say_failures:  # xaudit explain raises the reason as its error instead: said once
                say(f"method {i}/{len(names)} {name}: failed: {reason}")
            results.append(MethodResult(**base, reason=reason, failed=True))
            continue
        per = exp.cost.per_sample()
        say(f"method {i}/{len(names)} {name}: {exp.cost.wall_s:.2f} s "
            f"({per['wall_s_per_sample'] * 1e3:.2f} ms/sample)")
        results.append(MethodResult(**base, explanation=exp, fit_wall_s=fit_s, explainer=explainer))
    return tuple(results)


def compute_context(subject: Subject, methods: Sequence[str], *, n_explain: int = 32, seed: int = 0,
                    device: torch.device | None = None, progress: Progress | None = None,
                    memory_budget: int | None = None, quality: str = "full") -> ReportContext:
    """Evaluate ``subject``, explain ``n_explain`` seeded test samples with every method in ``methods`` and
    score the explanations (``quality``: ``"full"``, ``"fast"`` = deletion/insertion only, ``"none"``)."""
    check_quality_mode(quality)
    if n_explain < 1:
        raise XauditError(f"n_explain must be at least 1, got {n_explain}: pass e.g. n_explain=32")
    seed = check_seed(seed)
    model = subject.model
    device = device if device is not None else _model_device(model)
    model.to(device)
    dataset = subject.dataset
    check_memory_budget(model, dataset.x_test[:1], methods, memory_budget)  # before evaluating or explaining
    say = progress or (lambda _msg: None)
    say(f"evaluating on {dataset.n_train} train and {dataset.n_test} test samples")
    metrics = compute_metrics(model, dataset)
    indices = select_samples(dataset.n_test, n_explain, seed)
    x = dataset.x_test[indices]
    targets = predict_classes(model, x)
    background = background_samples(dataset, seed, explained=indices)
    # the budget holds for the quality metrics' and sample curves' re-runs too, not only the explanations
    with explain_memory_budget(current_budget(memory_budget)), CpuContention() as contention:
        results = explain_methods(model, x, targets, background, methods, seed=seed,
                                  progress=progress, memory_budget=memory_budget)
        results, summary = compute_quality(model, results, x, targets, background, mode=quality, seed=seed,
                                           progress=progress)
    if contention.result is not None and contention.result["busy"]:
        say(f"warning: other processes took {contention.result['other_cpu_share']:.0%} of the CPU while the "
            "methods were measured: timings may be inflated")
    return ReportContext(subject=subject, device=device, metrics=metrics, indices=indices,
                         labels=dataset.y_test[indices], targets=targets, methods=results,
                         machine={**machine_info(device), "contention": contention.result}, seed=seed,
                         created_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         quality=summary, background=background_info(dataset, background),
                         memory_budget_bytes=current_budget(memory_budget))


def build_context(
    model: ModelSource = "cnn",
    data: Dataset | str | os.PathLike[str] | None = None,
    *,
    methods: str | Sequence[str] | None = None,
    n_explain: int = 32,
    seed: int = 0,
    device: str | torch.device | None = None,
    epochs: int | None = None,
    state_dict: str | os.PathLike[str] | None = None,
    trust_pickle: bool = False,
    use_cache: bool = True,
    progress: Progress | None = None,
    memory_budget: int | str | None = None,
    quality: str = "full",
) -> ReportContext:
    """Validate every argument, resolve the subject (training a built-in model if named), then compute."""
    names = resolve_methods(methods)
    check_quality_mode(quality)
    if n_explain < 1:
        raise XauditError(f"n_explain must be at least 1, got {n_explain}: pass e.g. --n-explain 32")
    seed = check_seed(seed)
    resolved = resolve_device(device) if device is not None else None
    budget = parse_bytes(memory_budget) if memory_budget is not None else None
    check_budget_before_training(model, data, names, budget, state_dict=state_dict, seed=seed)
    subject = resolve_subject(model, data, state_dict=state_dict, trust_pickle=trust_pickle, seed=seed,
                              epochs=epochs, use_cache=use_cache, progress=progress)
    return compute_context(subject, names, n_explain=n_explain, seed=seed, device=resolved, progress=progress,
                           memory_budget=budget, quality=quality)
