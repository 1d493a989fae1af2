"""The hook-safe copy behind DeepLift and guided backprop is reused across calls, never stale."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xaudit.explain import explain
from xaudit.models import XauditError
from xaudit.explain._compat import cached_hook_safe_copy

X = torch.rand(3, 1, 6, 6)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).eval()


def test_the_copy_is_reused_until_the_models_structure_changes() -> None:
    model = _net()
    first = cached_hook_safe_copy(model, X[:1], "deeplift")
    assert cached_hook_safe_copy(model, X[:1], "deeplift") is first
    assert cached_hook_safe_copy(model, X[:1], "guided_backprop") is not first  # per rule
    assert not first[1].inplace and model[1].inplace  # fixed on the copy only
    model[1] = nn.ReLU()
    assert cached_hook_safe_copy(model, X[:1], "deeplift") is not first
    model[3].weight = nn.Parameter(torch.zeros(4, 48))
    assert cached_hook_safe_copy(model, X[:1], "deeplift")[3].weight is model[3].weight


def test_new_parameter_values_reach_the_cached_copy() -> None:
    model = _net()
    for method in ("deeplift", "guided_backprop"):
        before = explain(model, X, method=method, target=0).attributions
        with torch.no_grad():
            model[0].weight.mul_(-2.0)  # an in-place update, as an optimizer step or load_state_dict makes
        after = explain(model, X, method=method, target=0).attributions
        fresh = explain(_copy_of(model), X, method=method, target=0).attributions
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, fresh)


def _copy_of(model: nn.Module) -> nn.Module:
    clone = _net()
    clone.load_state_dict(model.state_dict())
    return clone


class _CountingWalks(nn.Sequential):
    """Counts walks of its own module tree (``modules()``, which the structure checks use); the private copies
    a call makes, walked by design, are not counted."""

    def modules(self):  # type: ignore[no-untyped-def]
        if self is _WATCHED[0]:
            _WATCHED[1] += 1
        return super().modules()


_WATCHED: list = [None, 0]


def test_one_call_walks_the_models_tree_once_and_the_next_call_sees_a_changed_model() -> None:
    torch.manual_seed(0)
    model = _CountingWalks(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).eval()
    explain(model, X, method="deeplift", target=0)  # first call: copies and probes the model
    _WATCHED[:] = [model, 0]
    native = explain(model, X, method="deeplift", target=0)
    # the recurrence, rule-coverage, copy-currency and train-mode checks all read one walk
    assert _WATCHED[1] == 1
    assert native.cost.forward_evals == len(X) + 1  # the native rule: the baseline once per call

    model[1] = nn.Softmax(dim=1)  # an activation the native rule has no case for: captum's path, 2 rows a sample
    through_captum = explain(model, X, method="deeplift", target=0)
    assert through_captum.cost.forward_evals == 2 * len(X)
    model[1] = nn.GELU()  # one no DeepLift rule covers: refused, not explained with a stale copy
    with pytest.raises(XauditError, match="GELU"):
        explain(model, X, method="deeplift", target=0)


class _Calibrated(nn.Module):
    """A CNN whose forward reads a plain float and a plain (unregistered) tensor, as calibration code leaves them."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = _net()
        self.temperature = 1.0
        self.mean = torch.zeros(1, 1, 6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x - self.mean) / self.temperature


@pytest.mark.parametrize("method", ["deeplift", "guided_backprop", "shap_deep"])
def test_plain_attributes_forward_reads_reach_the_copy(method: str) -> None:
    model, background = _Calibrated(), torch.rand(4, 1, 6, 6)

    def run(m: nn.Module) -> torch.Tensor:
        return explain(m, X, method=method, target=1, background=background).attributions

    first = run(model)
    model.temperature = 4.0  # a new value: a new copy
    model.mean.add_(0.25)  # the same tensor changed in place: the copy shares it
    fresh = _Calibrated()
    fresh.temperature, fresh.mean = 4.0, torch.full((1, 1, 6, 6), 0.25)
    again = run(model)
    assert not torch.allclose(again, first)
    torch.testing.assert_close(again, run(fresh))


def test_a_new_head_on_the_same_object_is_probed_again() -> None:
    from xaudit.explain import get_explainer

    model = _net()
    before = explain(model, X, method="saliency", target=3)
    model[3] = nn.Sequential(nn.Linear(48, 512), nn.ReLU(), nn.Linear(512, 2))  # fine-tuning: a new 2-class head
    with pytest.raises(XauditError, match="target 3 is out of range: the model has 2 classes"):
        explain(model, X, method="saliency", target=3)
    after = explain(model, X, method="saliency", target=1)
    fresh = nn.Sequential(*model)  # the same modules in a new object: nothing cached for it
    assert after.cost.flops == explain(fresh, X, method="saliency", target=1).cost.flops
    assert after.cost.flops > 10 * before.cost.flops
    explainer = get_explainer("saliency")
    assert explainer(model).memory_needed(X) == explainer(fresh).memory_needed(X)


@pytest.mark.parametrize("method", ["deeplift", "guided_backprop", "shap_deep", "saliency"])
def test_a_model_nobody_holds_is_freed_after_explaining(method: str) -> None:
    import gc
    import weakref

    model = _net()
    explain(model, X, method=method, target=0, background=torch.rand(4, 1, 6, 6))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the per-model caches must not keep it alive (a sweep explains hundreds)


class _Odd(nn.Module):
    """State a user's model may carry: a list holding itself, a big vocabulary, a config object and a list of
    tensors changed in place, a bound-method hook."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = _net()
        self.loop: list = []
        self.loop.append(self.loop)
        self.vocab = {f"w{i}": i for i in range(100_000)}
        self.config = type("Config", (), {"scale": 1.0})()
        self.shifts = [torch.zeros(1, 1, 6, 6)]
        self.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: object, out: torch.Tensor) -> None:
        self.last_shape = tuple(out.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + self.shifts[0]) * self.config.scale


@pytest.mark.parametrize("method", ["deeplift", "guided_backprop", "saliency"])
def test_odd_attributes_are_followed_and_never_keep_the_model_alive(method: str) -> None:
    import gc
    import weakref

    from xaudit.models._walk import _fingerprint

    model = _Odd()
    first = explain(model, X, method=method, target=1).attributions
    assert sum(map(len, _fingerprint(model))) < 2_000  # the 100,000-entry dict counts by identity, not entry by entry
    model.config.scale = 3.0  # in place, inside objects the copy shares
    model.shifts[0].add_(0.5)
    again = explain(model, X, method=method, target=1).attributions
    fresh = _Odd()
    fresh.config.scale, fresh.shifts[0] = 3.0, torch.full((1, 1, 6, 6), 0.5)
    torch.testing.assert_close(again, explain(fresh, X, method=method, target=1).attributions)
    assert not torch.allclose(again, first)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the bound-method hook and the self-holding list lead back to it: only weakly held


def test_the_generation_changes_with_whatever_forward_may_read_and_only_then() -> None:
    from xaudit.models._walk import model_generation

    model = _net()
    seen = [model_generation(model)]

    def changed() -> bool:
        seen.append(model_generation(model))
        return seen[-1] != seen[-2]

    assert not changed()
    model.scale = 1
    assert changed()
    model.scale = True  # equal to 1, but forward may test `is True`
    assert changed()
    model.scale = True
    assert not changed()
    model[0].padding = (1, 1)
    assert changed()
    model[0].weight = nn.Parameter(model[0].weight.detach().clone())  # a new tensor object
    assert changed()
    handle = model[3].register_forward_hook(lambda *args: None)
    assert changed()
    handle.remove()
    assert changed()
    with torch.no_grad():
        model[0].weight.add_(1.0)  # new values in the same tensor: the copies share it
    model.train()  # explanation calls switch modes themselves
    assert not changed()
    model.nan = float("nan")
    assert changed()
    assert not changed()  # the same NaN object is the same value


class _PrivateState(nn.Module):
    """Normalisation statistics kept in a private dict, and a post-processing step kept as a bound method."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()
        self._stats = {"mean": torch.zeros(1, 1, 6, 6)}
        self.post = self._post  # points back at the model

    def _post(self, out: torch.Tensor) -> torch.Tensor:
        return out * 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.net(x - self._stats["mean"]))


@pytest.mark.parametrize("method", ["deeplift", "guided_backprop"])
def test_private_state_reaches_the_copy_and_a_self_reference_does_not_keep_the_model(method: str) -> None:
    import gc
    import weakref

    model = _PrivateState()
    explain(model, X, method=method, target=1)
    model._stats["mean"].add_(0.5)  # in place: the copy must see it (it deep-copied private dicts before)
    fresh = _PrivateState()
    fresh._stats["mean"] = torch.full((1, 1, 6, 6), 0.5)
    torch.testing.assert_close(explain(model, X, method=method, target=1).attributions,
                               explain(fresh, X, method=method, target=1).attributions)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the bound method is not shared with the cached copy, so it does not hold the model


class _Scale:
    """A stateful forward hook: scales a module's output by ``s``."""

    def __init__(self, s: float) -> None:
        self.s = s

    def __call__(self, module: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor:
        return out * self.s


def test_a_hook_objects_state_reaches_the_copy() -> None:
    def hooked(s: float) -> tuple[nn.Module, _Scale]:
        model, hook = _net(), _Scale(s)
        model[0].register_forward_hook(hook)
        return model, hook

    model, hook = hooked(1.0)
    explain(model, X, method="deeplift", target=0)
    hook.s = -2.0  # the same hook object, new state: the model computes differently now
    torch.testing.assert_close(explain(model, X, method="deeplift", target=0).attributions,
                               explain(hooked(-2.0)[0], X, method="deeplift", target=0).attributions)
