"""The quality-metric contract: registry, capability flags, one-line errors, own cost, model left untouched."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import xaudit.explain as xe
from xaudit.models._errors import XauditError

PER_METHOD = [n for n in xe.available_metrics() if not xe.get_metric(n).compares_methods]


class Stochastic(xe.Explainer):
    """Gradient plus Gaussian noise: the smallest stochastic method (unregistered: ``name`` set below)."""

    is_stochastic = True

    def __init__(self, model: nn.Module, *, noise: float = 0.5) -> None:
        super().__init__(model)
        self.noise = noise

    def get_params(self) -> dict:
        return {"noise": self.noise}

    def _attribute(self, model, inputs, targets, ctx):
        out = model(inputs).gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(out, inputs)
        return grad + self.noise * torch.randn_like(grad)


Stochastic.name = "test_noisy_gradient"  # after creation: stays out of the registry


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def tiny_gru() -> nn.Module:
    class GRUClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 5, batch_first=True)
            self.head = nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    torch.manual_seed(0)
    return GRUClassifier()


CASES = {"cnn": (tiny_cnn, (6, 1, 6, 6)), "gru": (tiny_gru, (6, 7, 3))}


def _case(kind: str) -> tuple[nn.Module, torch.Tensor]:
    build, shape = CASES[kind]
    return build(), torch.rand(shape, generator=torch.Generator().manual_seed(1))


def test_registry_lists_the_issue_metrics() -> None:
    assert set(xe.available_metrics()) >= {"deletion_auc", "insertion_auc", "infidelity", "max_sensitivity",
                                            "model_randomization", "seed_stability", "method_agreement"}
    for name in xe.available_metrics():
        cls = xe.get_metric(name)
        assert cls.name == name and cls.paper, name


def test_unknown_metric_suggests_the_closest() -> None:
    with pytest.raises(XauditError, match="did you mean 'deletion_auc'"):
        xe.get_metric("deletion_acu")


@pytest.mark.parametrize("kind", sorted(CASES))
@pytest.mark.parametrize("name", PER_METHOD)
def test_every_metric_on_cnn_and_rnn(name: str, kind: str) -> None:
    """Each per-method metric runs on a tiny CNN and GRU, returns a finite value with its own cost, is
    deterministic under a seed, and leaves the model's weights and training flags as they were."""
    model, x = _case(kind)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explainer = Stochastic(model) if name == "seed_stability" else xe.get_explainer("saliency")(model)
    exp = explainer.explain(x)
    metric = xe.get_metric(name)()
    results = [metric.compute(model, exp, explainer=explainer, seed=3) for _ in range(2)]
    r = results[0]
    assert r.metric == name and r.method == exp.method
    assert torch.isfinite(torch.tensor(r.value)), r
    assert r.value == results[1].value, "not deterministic under a seed"
    assert r.cost.n_samples == len(x) and r.cost.wall_s > 0 and r.cost.forward_evals > 0
    assert all(m.training for m in model.modules()), "training flags not restored"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "model weights changed"
    json.dumps(r.to_dict())


def test_metric_needing_the_explainer_says_so() -> None:
    model, x = _case("cnn")
    exp = xe.get_explainer("saliency")(model).explain(x)
    with pytest.raises(XauditError, match="re-runs the method: pass explainer="):
        xe.get_metric("model_randomization")().compute(model, exp)


def test_explainer_of_another_model_is_refused() -> None:
    model, x = _case("cnn")
    explainer = xe.get_explainer("saliency")(model)
    with pytest.raises(XauditError, match="different model"):
        xe.get_metric("max_sensitivity")().compute(tiny_cnn(), explainer.explain(x), explainer=explainer)


def test_seed_stability_refuses_a_deterministic_method_with_the_reason() -> None:
    model, x = _case("cnn")
    explainer = xe.get_explainer("saliency")(model)
    with pytest.raises(XauditError, match="seed_stability does not apply to saliency: it is deterministic"):
        xe.get_metric("seed_stability")().compute(model, explainer.explain(x), explainer=explainer)


@pytest.mark.parametrize("n_seeds", [0, 1, 4])
def test_seed_stability_needs_five_seeds(n_seeds: int) -> None:
    with pytest.raises(XauditError, match="at least 5 seeds"):
        xe.SeedStability(n_seeds=n_seeds)


def test_evaluate_quality_runs_what_applies() -> None:
    model, x = _case("cnn")
    sal = xe.get_explainer("saliency")(model)
    assert set(xe.evaluate_quality(model, sal.explain(x))) == {"deletion_auc", "insertion_auc", "infidelity"}
    assert "seed_stability" not in xe.evaluate_quality(model, sal.explain(x), explainer=sal)
    noisy = Stochastic(model)
    assert "seed_stability" in xe.evaluate_quality(model, noisy.explain(x), explainer=noisy)
    with pytest.raises(XauditError, match="did you mean 'infidelity'"):
        xe.evaluate_quality(model, sal.explain(x), params={"infidelty": {}})


def test_metric_cost_counts_the_evaluations_it_caused() -> None:
    """Deletion builds 2 × (n_steps + 1) rows per sample; randomization re-runs the method once per layer."""
    model, x = _case("cnn")
    explainer = xe.get_explainer("saliency")(model)
    exp = explainer.explain(x)
    deletion = xe.DeletionAUC(n_steps=8).compute(model, exp)
    assert deletion.cost.forward_evals == len(x) * 2 * 9
    rnd = xe.ModelRandomization().compute(model, exp, explainer=explainer)
    n_layers = 2  # conv and linear
    assert rnd.cost.forward_evals >= n_layers * exp.cost.forward_evals
    assert rnd.cost.backward_evals == n_layers * exp.cost.backward_evals


@pytest.mark.parametrize("method", ["smoothgrad", "lime", "saliency"])
def test_max_sensitivity_vanishes_with_the_radius_for_seeded_methods(method: str) -> None:
    # Yeh et al. 2019, eq. 5: max over ||y - x|| <= r of ||Phi(y) - Phi(x)|| goes to 0 with r for a method that is a
    # function of (input, seed); a stochastic method must give a perturbed input the draws its original got
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))
    x, t = torch.randn(4, 6, 2), torch.tensor([0, 1, 2, 0])
    explainer = xe.get_explainer(method)(model)
    exp = explainer.explain(x, t, seed=0)
    metric = xe.get_metric("max_sensitivity")
    tiny = metric(radius_scale=1e-6).compute(model, exp, explainer=explainer).value
    usual = metric(radius_scale=0.02).compute(model, exp, explainer=explainer).value
    assert tiny < 1e-3 and usual > 10 * tiny


def test_smoothgrad_noise_does_not_depend_on_the_batch() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.randn(5, 6, 2)
    explainer = xe.get_explainer("smoothgrad")(model, n_samples=8)
    whole = explainer.explain(x, 1, seed=3).attributions
    torch.testing.assert_close(explainer.explain(x[3:4], 1, seed=3).attributions, whole[3:4])
    torch.testing.assert_close(explainer.explain(x, 1, seed=3, batch_size=2).attributions, whole)
    assert not torch.allclose(explainer.explain(x, 1, seed=4).attributions, whole)


def test_seed_stability_at_the_top_of_the_seed_range() -> None:
    # seeds seed..seed+4 wrap within numpy's 32 bits instead of failing inside shap's RandomState
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))
    x, background = torch.randn(3, 6, 2), torch.randn(8, 6, 2)
    explainer = xe.get_explainer("shap_gradient")(model, nsamples=20).fit(background)
    top = 2**32 - 1
    result = xe.get_metric("seed_stability")().compute(model, explainer.explain(x, seed=top), explainer=explainer,
                                                       background=background, seed=top)
    assert -1.0 <= result.value <= 1.0 and result.seeds == (top, 0, 1, 2, 3)
