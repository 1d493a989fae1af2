"""Sanity-check oracles: a method that ignores the model fails the randomization check, one that reads the
learned weights passes; the user's model is never touched; seed stability and method agreement."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import xaudit.explain as xe
from xaudit.explain._quality_stats import spearman_rows, ssim_maps
from xaudit.explain._sanity import parametrized_layers, rebuild_explainer, reinitialize
from xaudit.models._errors import XauditError


class InputCopy(xe.Explainer):
    """Returns the input as its map: the extreme case of a map that shows the input, not the model."""

    def _attribute(self, model, inputs, targets, ctx):
        model(inputs)  # one evaluation, as any method makes
        return inputs.detach().clone()


InputCopy.name = "test_input_copy"  # set after creation: stays out of the registry


class NoisyGradient(xe.Explainer):
    is_stochastic = True

    def __init__(self, model: nn.Module, *, noise: float) -> None:
        super().__init__(model)
        self.noise = noise

    def get_params(self) -> dict:
        return {"noise": self.noise}

    def _attribute(self, model, inputs, targets, ctx):
        (grad,) = torch.autograd.grad(model(inputs).gather(1, targets[:, None]).sum(), inputs)
        return grad + self.noise * grad.abs().mean() * torch.randn_like(grad)


NoisyGradient.name = "test_noisy_gradient"


class HeadFirst(nn.Module):
    """Registers its head before its body, so registration order is not execution order."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(8, 3)
        self.body = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2, padding=1),
                                  nn.ReLU(), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _x(n: int = 10) -> torch.Tensor:
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))


def test_layers_are_found_in_execution_order_and_randomized_top_down() -> None:
    model = HeadFirst()
    assert parametrized_layers(model, _x(1)) == ["body.0", "body.2", "head"]
    explainer = xe.get_explainer("saliency")(model)
    r = xe.ModelRandomization().compute(model, explainer.explain(_x()), explainer=explainer)
    assert r.layers == ("head", "body.2", "body.0")
    assert len(r.spearman) == len(r.ssim) == 3


def test_torchscript_model_is_refused_with_the_fix() -> None:
    scripted = torch.jit.script(HeadFirst().eval())
    explainer = xe.get_explainer("saliency")(scripted)
    with pytest.raises(XauditError, match="TorchScript.*pass the nn.Module") as info:
        xe.ModelRandomization().compute(scripted, explainer.explain(_x()), explainer=explainer)
    assert "\n" not in str(info.value)


def test_a_map_that_ignores_the_model_fails_and_is_flagged_as_the_input() -> None:
    model = HeadFirst()
    explainer = InputCopy(model)
    r = xe.ModelRandomization().compute(model, explainer.explain(_x()), explainer=explainer)
    assert r.spearman == pytest.approx((1.0, 1.0, 1.0)) and r.ssim == pytest.approx((1.0, 1.0, 1.0))
    assert not r.passed and r.dominated_by_input
    assert "mostly shows the input" in r.verdict


def test_a_map_that_reads_the_learned_weights_passes() -> None:
    """A linear model's gradient is its weight row: re-drawing the weights re-draws the map."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))  # 64 weights: two random rows rank-correlate ±0.13
    explainer = xe.get_explainer("saliency")(model)
    x = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    r = xe.ModelRandomization().compute(model, explainer.explain(x, 0), explainer=explainer)
    assert r.passed and not r.dominated_by_input and abs(r.value) < 0.3
    assert "passes" in r.verdict


def test_user_model_is_never_touched_and_the_check_is_seeded() -> None:
    model = HeadFirst()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explainer = xe.get_explainer("saliency")(model)
    exp = explainer.explain(_x())
    a = xe.ModelRandomization().compute(model, exp, explainer=explainer, seed=5)
    b = xe.ModelRandomization().compute(model, exp, explainer=explainer, seed=5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert a.spearman == b.spearman and a.ssim == b.ssim


def test_reinitialize_uses_the_layers_own_init_under_a_seed() -> None:
    a, b = nn.Linear(5, 4), nn.Linear(5, 4)
    reinitialize(a, 7)
    reinitialize(b, 7)
    assert torch.equal(a.weight, b.weight)
    state = torch.random.get_rng_state()
    reinitialize(a, 8)
    assert torch.equal(state, torch.random.get_rng_state()), "reinitialize touched the global RNG"


def test_judge_thresholds_follow_the_issue() -> None:
    judge = xe.ModelRandomization().judge
    assert judge("saliency", [0.51, 0.32, 0.21, -0.03])["passed"]
    gbp = judge("guided_backprop", [0.70, 0.78, 0.75, 0.19])
    assert not gbp["passed"] and not gbp["dominated_by_input"] and "top layers" in gbp["verdict"]
    ixg = judge("input_x_gradient", [0.8, 0.8, 0.8, 0.8])
    assert not ixg["passed"] and ixg["dominated_by_input"]
    middling = judge("m", [0.2, 0.45])
    assert not middling["passed"] and not middling["dominated_by_input"]


def test_spearman_and_ssim_oracles() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0]])
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [4.0, 3.0, 2.0, 1.0]])
    np.testing.assert_allclose(spearman_rows(a, b), [1.0, 0.0])  # monotone → 1; constant row → 0
    np.testing.assert_allclose(spearman_rows(a[:1], -a[:1]), [-1.0])
    maps = torch.rand(3, 36, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(ssim_maps(maps, 5 * maps, (6, 6)), 1.0, rtol=1e-9)  # scale-free
    assert (ssim_maps(maps, maps.flip(1), (6, 6)) < 0.5).all()
    assert ssim_maps(maps, maps, (36, 1)).shape == (3,)  # T×1 sequence maps: 1-D SSIM


def test_seed_stability_orders_methods_by_their_noise() -> None:
    model = HeadFirst()
    x = _x()
    values = {}
    for noise in (0.0, 0.3, 5.0):
        explainer = NoisyGradient(model, noise=noise)
        r = xe.SeedStability(n_seeds=5).compute(model, explainer.explain(x), explainer=explainer)
        assert r.seeds == (0, 1, 2, 3, 4) and len(r.matrix) == 5
        values[noise] = r.value
    assert values[0.0] == pytest.approx(1.0)
    assert values[0.0] > values[0.3] > values[5.0]


def test_method_agreement_matrix() -> None:
    model = HeadFirst()
    x = _x()
    sal = xe.get_explainer("saliency")(model).explain(x, 0)
    ig = xe.get_explainer("integrated_gradients")(model, n_steps=16).explain(x, 0)
    r = xe.method_agreement([sal, sal, ig])
    m = np.array(r.matrix)
    assert r.methods == ("saliency", "saliency", "integrated_gradients")
    np.testing.assert_allclose(np.diag(m), 1.0)
    np.testing.assert_allclose(m, m.T)
    assert m[0, 1] == pytest.approx(1.0) and m[0, 2] < 1.0
    with pytest.raises(XauditError, match="two or more"):
        xe.method_agreement([sal])
    other = xe.get_explainer("saliency")(model).explain(_x(4), 0)
    with pytest.raises(XauditError, match="same inputs"):
        xe.method_agreement([sal, other])


class Wrapper(xe.Explainer):
    """Holds a layer of its model and a wrapped inner method, as Grad-CAM and SmoothGrad do; its
    ``get_params`` does not round-trip into the constructor, so it cannot be rebuilt from its params."""

    def __init__(self, model: nn.Module, *, layer_index: int = 0) -> None:
        super().__init__(model)
        self.layer = model.body[layer_index]
        self.inner = xe.get_explainer("saliency")(model)

    def get_params(self) -> dict:
        return {"layer": self.layer, "inner": self.inner.get_params()}

    def _attribute(self, model, inputs, targets, ctx):
        return self.inner._attribute(model, inputs, targets, ctx)


class NeedsData(InputCopy):
    needs_background = True

    def fit(self, background):
        self.background_ = background
        return self


def test_rebuilt_method_points_at_the_copy_only() -> None:
    model = HeadFirst()
    twin = copy.deepcopy(model)
    wrapper = Wrapper(model)
    rebuilt = rebuild_explainer(wrapper, twin, None)
    assert rebuilt.model is twin and rebuilt.inner.model is twin and rebuilt.layer is twin.body[0]
    assert wrapper.model is model and wrapper.layer is model.body[0] and wrapper.inner.model is model
    r = xe.ModelRandomization().compute(model, wrapper.explain(_x()), explainer=wrapper)
    assert len(r.spearman) == 3


def test_a_method_with_background_is_refitted_or_refused() -> None:
    model = HeadFirst()
    explainer = NeedsData(model).fit(_x(3))
    exp = explainer.explain(_x())
    with pytest.raises(XauditError, match="needs background data to be re-run"):
        xe.ModelRandomization().compute(model, exp, explainer=explainer)
    background = _x(5)
    assert rebuild_explainer(explainer, copy.deepcopy(model), background).background_ is background


class _Attention(nn.Module):
    """nn.MultiheadAttention reads out_proj.weight without calling out_proj: a module the pass never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.att, self.head = nn.Linear(2, 8), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h, _ = self.att(h, h, h)
        return self.head(h.mean(1))


def test_the_fully_randomized_model_keeps_no_trained_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    import xaudit.explain._sanity as sanity

    torch.manual_seed(0)
    model, x = _Attention(), torch.randn(4, 6, 2)
    redrawn: list[nn.Module] = []
    original = sanity.reinitialize

    def spy(module: nn.Module, seed: int) -> None:
        redrawn.append(module)
        original(module, seed)

    monkeypatch.setattr(sanity, "reinitialize", spy)
    explainer = xe.get_explainer("saliency")(model)
    xe.get_metric("model_randomization")().compute(model, explainer.explain(x), explainer=explainer)
    names = {type(m).__name__ + ":" + str(tuple(p.shape for p in m.parameters(recurse=False))) for m in redrawn}
    owners = {type(m).__name__ + ":" + str(tuple(p.shape for p in m.parameters(recurse=False)))
              for m in model.modules() if any(True for _ in m.parameters(recurse=False))}
    assert names == owners  # out_proj (NonDynamicallyQuantizableLinear) included, through its parent "att"


def test_a_constant_trained_map_cannot_pass() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].bias.fill_(-100.0)  # every ReLU dead: the gradient, and so the saliency map, is zero everywhere
    explainer = xe.get_explainer("saliency")(model)
    result = xe.get_metric("model_randomization")().compute(model, explainer.explain(torch.rand(3, 6, 2)),
                                                             explainer=explainer)
    assert result.passed is False and "constant" in result.verdict
