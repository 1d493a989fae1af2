"""DeepLift and DeepSHAP through the native rescale rule (``explain/_rescale.py``): the libraries' values, one
reference pass per call, and the private model copy left as it was."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import DeepLift as CaptumDeepLift
from torch import nn

from xaudit.explain import explain, get_explainer
from xaudit.explain._compat import _SAFE_COPIES
from xaudit.models import build_model
from xaudit.models._errors import XauditError

warnings.filterwarnings("ignore", message=r"Setting (forward, )?backward hooks")


def _captum(model: nn.Module, x: torch.Tensor, target: torch.Tensor | int, baseline: float = 0.0) -> torch.Tensor:
    return CaptumDeepLift(model).attribute(x.clone().requires_grad_(True), baselines=baseline, target=target)


def _shap_deep(model: nn.Module, x: torch.Tensor, background: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    shap = pytest.importorskip("shap")
    values = np.asarray(shap.DeepExplainer(model, background).shap_values(x, check_additivity=False))
    return torch.tensor(values[np.arange(len(x)), ..., target.numpy()]).float()


def _mixed() -> nn.Module:
    """Every elementwise activation the native rule covers, convolutional and linear layers between them."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ELU(), nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(),
                         nn.Flatten(), nn.Linear(256, 8), nn.Sigmoid(), nn.Linear(8, 6), nn.Softplus(),
                         nn.Linear(6, 6), nn.LeakyReLU(0.1), nn.Linear(6, 3)).eval()


@pytest.mark.parametrize("baseline", [0.0, 0.3])
def test_deeplift_equals_captum_on_the_builtin_cnn_with_one_baseline_pass_per_call(baseline: float) -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0, hidden=8).eval()
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    target = model(x).argmax(-1)
    exp = get_explainer("deeplift")(model, baseline=baseline).explain(x, target, batch_size=5)  # 3 chunks
    torch.testing.assert_close(exp.attributions, _captum(model, x, target, baseline), atol=1e-7, rtol=1e-5)
    # the baseline once for the whole call (not per chunk, not per sample), every input once each way
    assert (exp.cost.forward_evals, exp.cost.backward_evals) == (12 + 1, 12)
    gap = exp.attributions.flatten(1).sum(1) - (model(x) - model(torch.full_like(x, baseline)))[range(12), target]
    torch.testing.assert_close(exp.extras["convergence_delta"], gap.detach(), atol=1e-5, rtol=0)
    assert exp.extras["convergence_delta"].abs().max() < 1e-5  # summation-to-delta


def test_deeplift_equals_captum_for_every_elementwise_activation() -> None:
    model = _mixed()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    exp = explain(model, x, "deeplift", target=1)
    ours, theirs = exp.attributions, _captum(model, x, 1)
    assert theirs.abs().max() > 1e-4  # not a vacuous comparison
    # saturating activations amplify float32 rounding in Δy/Δx: captum itself moves by 2.7e-7 (of 6e-4) when
    # the same inputs are explained one at a time, since the batch changes the convolutions' rounding
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-4)
    assert exp.cost.forward_evals == 6 + 1


def _near_tie() -> nn.Module:
    """One hidden ReLU whose input on x differs from the baseline's by ~3e-8 (0.5 − the float32 below 0.5)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 1), nn.ReLU(), nn.Linear(1, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, -1.0]]))
        model[1].bias.zero_()
        model[3].weight.copy_(torch.tensor([[2.0], [0.0]]))
        model[3].bias.zero_()
    return model


def test_the_fallback_to_the_local_derivative_follows_each_library() -> None:
    # Δx ≈ 3e-8 at the ReLU: above captum's eps (1e-10), so captum rescales (multiplier 1); below shap's
    # (1e-6), so shap takes the derivative at the reference (relu'(0) = 0). Each method matches its library.
    model = _near_tie()
    x = torch.tensor([[[0.5, float(np.nextafter(np.float32(0.5), np.float32(0)))]]])  # one step of 2 features
    pre = (x[0, 0, 0] - x[0, 0, 1]).item()
    assert 0 < pre < 1e-6
    ours = explain(model, x, "deeplift", target=0).attributions
    torch.testing.assert_close(ours, _captum(model, x, 0), atol=0, rtol=0)
    assert ours[0, 0, 0].item() == pytest.approx(2 * 0.5)
    background = torch.zeros(1, 1, 2)
    ours_deep = get_explainer("shap_deep")(model).fit(background).explain(x, 0).attributions
    torch.testing.assert_close(ours_deep, _shap_deep(model, x, background, torch.tensor([0])).float(), atol=0, rtol=0)
    assert ours_deep.abs().max().item() == 0.0


def test_maxpool_models_keep_going_through_captum() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(64, 3)).eval()
    x = torch.rand(5, 1, 8, 8)
    exp = explain(model, x, "deeplift", target=2)
    torch.testing.assert_close(exp.attributions, _captum(model, x, 2), atol=1e-7, rtol=1e-5)
    assert (exp.cost.forward_evals, exp.cost.backward_evals) == (10, 10)  # input and baseline side by side


@pytest.mark.parametrize("split", ["one pass", "samples split", "references split"])
def test_shap_deep_equals_shap_with_the_background_once_per_call(split: str) -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0, hidden=8).eval()
    gen = torch.Generator().manual_seed(4)
    x, background = torch.rand(5, 1, 8, 8, generator=gen), torch.rand(12, 1, 8, 8, generator=gen)
    target = model(x).argmax(-1)
    explainer = get_explainer("shap_deep")(model).fit(background)
    kwargs = {"one pass": {}, "samples split": {"batch_size": 2}, "references split": {"memory_budget": 700_000}}
    exp = explainer.explain(x, target, **kwargs[split])
    if split == "references split":
        assert exp.plan["row_batch"] < len(background), "the budget no longer splits the references"
    torch.testing.assert_close(exp.attributions, _shap_deep(model, x, background, target), atol=1e-7, rtol=1e-4)
    assert (exp.cost.forward_evals, exp.cost.backward_evals) == (5 * 12 + 12, 5 * 12)
    f_x, f_bg = model(x)[range(5), target], model(background)[:, target].mean(0)
    torch.testing.assert_close(exp.extras["base_value"], f_bg.detach(), atol=1e-6, rtol=0)
    gap = exp.attributions.double().flatten(1).sum(1) - (f_x - f_bg).double()
    torch.testing.assert_close(exp.extras["additivity_error"].double(), gap.detach(), atol=1e-5, rtol=0)


def test_predicted_evaluations_count_the_reference_pass() -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0, hidden=8).eval()
    x, background = torch.rand(7, 1, 8, 8), torch.rand(4, 1, 8, 8)
    for method, once in (("deeplift", 1), ("shap_deep", 4)):
        explainer = get_explainer(method)(model)
        if explainer.needs_background:
            explainer.fit(background)
        predicted, cost = explainer.predict_cost(x), explainer.explain(x).cost
        assert predicted.forward_evals == cost.forward_evals == 7 * once + once
        assert predicted.backward_evals == cost.backward_evals == 7 * once


def test_the_rule_leaves_the_cached_copy_as_it_was_even_when_the_call_fails() -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0, hidden=8).eval()
    x = torch.rand(3, 1, 8, 8)
    explain(model, x, "deeplift")
    copies = [copy for _, copy in _SAFE_COPIES[model].values()]
    assert copies and all("forward" not in m.__dict__ for c in copies for m in c.modules())
    with pytest.raises(Exception, match="out of range"):
        explain(model, x, "deeplift", target=10)
    bad = get_explainer("deeplift")(model)
    with pytest.raises(RuntimeError, match="boom"):
        original = model.head.forward

        def boom(_: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

        for copy in copies:
            copy.head.forward = boom
        try:
            bad.explain(x)
        finally:
            for copy in copies:
                del copy.head.forward
    assert model.head.forward == original
    assert all("forward" not in m.__dict__ for c in copies for m in c.modules())
    # and the next call is right again
    torch.testing.assert_close(explain(model, x, "deeplift", target=1).attributions, _captum(model, x, 1),
                               atol=1e-7, rtol=1e-5)


def test_smoothgrad_over_deeplift_shares_one_baseline_pass_across_chunks_and_noisy_copies() -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0, hidden=8).eval()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    explainer = get_explainer("smoothgrad")(model, base="deeplift", n_samples=4)
    cost, predicted = explainer.explain(x, batch_size=2).cost, explainer.predict_cost(x, batch_size=2)
    assert (cost.forward_evals, cost.backward_evals) == (5 * 4 + 1, 5 * 4)  # 3 chunks, one baseline pass
    assert (predicted.forward_evals, predicted.backward_evals) == (cost.forward_evals, cost.backward_evals)


class _SequenceFirst(nn.Module):
    """An MLP over time steps that puts time first before its activation (T×N×H), as seq-first code does."""

    def __init__(self) -> None:
        super().__init__()
        self.inner, self.act, self.head = nn.Linear(3, 4), nn.ReLU(), nn.Linear(4 * 5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N×T×F
        h = self.act(self.inner(x).transpose(0, 1))  # T×N×H
        return self.head(h.transpose(0, 1).flatten(1))


def test_an_activation_over_a_sequence_first_tensor_is_refused_in_one_line() -> None:
    torch.manual_seed(6)
    model = _SequenceFirst().eval()
    with pytest.raises(XauditError, match=r"keep the batch as the first dimension") as err:
        explain(model, torch.rand(3, 5, 3), "deeplift", target=0)
    assert "\n" not in str(err.value)


def test_shap_deep_equals_shap_for_every_elementwise_activation_with_exact_ties() -> None:
    # a reference equal to an input makes Δx = 0 everywhere for that pair: shap's fallback (the derivative at
    # the reference) runs through autograd for the non-ReLU activations
    model = _mixed()
    gen = torch.Generator().manual_seed(3)
    x, background = torch.rand(4, 1, 8, 8, generator=gen), torch.rand(6, 1, 8, 8, generator=gen)
    background[0] = x[0]
    target = torch.tensor([1, 0, 2, 1])
    ours = get_explainer("shap_deep")(model).fit(background).explain(x, target).attributions
    theirs = _shap_deep(model, x, background, target)
    assert theirs.abs().max() > 1e-4
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-4)


class _BasicBlock(nn.Module):
    """ResNet's basic block: one nn.ReLU applied twice in forward, around a residual sum."""

    def __init__(self, split: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=not split)  # captum's hooks fail on an in-place ReLU; xaudit copies it
        self.relu2 = nn.ReLU() if split else self.relu
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        out = self.relu(self.conv1(h))
        out = self.relu2(self.conv2(out) + h)
        return self.head(out.flatten(1))


def _basic_blocks() -> tuple[nn.Module, nn.Module]:
    """The block with its ReLU reused, and the same function with two ReLU modules (what the libraries need)."""
    torch.manual_seed(5)
    reused = _BasicBlock().eval()
    split = _BasicBlock(split=True).eval()
    split.load_state_dict(reused.state_dict())
    return reused, split


def test_an_activation_applied_twice_pairs_each_call_with_the_references_same_call() -> None:
    reused, split = _basic_blocks()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(6)) - 0.3
    target = reused(x).argmax(-1)
    ours = explain(reused, x, "deeplift", target=target, baseline=0.1)
    theirs = _captum(split, x, target, baseline=0.1)  # captum cannot run the reused module itself
    assert theirs.abs().max() > 1e-3
    torch.testing.assert_close(ours.attributions, theirs, atol=1e-6, rtol=1e-5)
    assert ours.extras["convergence_delta"].abs().max() < 1e-5  # summation-to-delta
    background = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(7))
    deep = explain(reused, x, "shap_deep", target=target, background=background)
    torch.testing.assert_close(deep.attributions, _shap_deep(split, x, background, target), atol=1e-6, rtol=1e-5)
    assert deep.extras["additivity_error"].abs().max() < 1e-5
    assert reused.relu is reused.relu2 and reused.relu.inplace  # the user's model as it was


def _relu_ties() -> tuple[nn.Module, torch.Tensor]:
    """A ReLU CNN and inputs whose top half is 0: against a zero reference, Δx = 0 exactly at every unit whose
    receptive field lies there, with units above 0 (relu' = 1) and below (relu' = 0) on both layers."""
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(256, 3)).eval()
    with torch.no_grad():
        model[0].bias.copy_(torch.tensor([0.2, -0.2, 0.1, -0.1]))
        model[2].bias.copy_(torch.tensor([0.3, -0.3, 0.05, -0.05]))
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    x[:, :, :4] = 0.0
    return model, x


def test_relu_ties_take_the_local_derivative_on_both_sides_of_zero() -> None:
    model, x = _relu_ties()
    with torch.no_grad():  # the oracle's premise: exact ties, active and inactive, at both ReLUs
        pre1 = model[0](x)
        pre2 = model[2](model[1](pre1))
        ref1 = model[0](torch.zeros(1, 1, 8, 8))
        ref2 = model[2](model[1](ref1))
    for pre, ref in ((pre1, ref1), (pre2, ref2)):
        tie = pre == ref
        assert (tie & (pre > 0)).any() and (tie & (pre <= 0)).any()
    target = torch.tensor([0, 1, 2, 0, 1])
    ours = explain(model, x, "deeplift", target=target).attributions
    theirs = _captum(model, x, target)
    assert theirs.abs().max() > 1e-3 and torch.isfinite(ours).all()
    torch.testing.assert_close(ours, theirs, atol=1e-7, rtol=1e-5)
    background = torch.cat([torch.zeros(1, 1, 8, 8), x[:1]])  # the second makes Δx = 0 everywhere for x[0]
    ours_deep = get_explainer("shap_deep")(model).fit(background).explain(x, target).attributions
    torch.testing.assert_close(ours_deep, _shap_deep(model, x, background, target), atol=1e-7, rtol=1e-5)


def test_a_difference_of_exactly_eps_is_rescaled_as_the_libraries_compare_it() -> None:
    # Δx = float32(1e-6), shap's eps to the bit: shap tests |Δx| < eps, so it rescales (multiplier 1, not the
    # derivative at the reference, relu'(0) = 0)
    model = _near_tie()
    eps = float(torch.tensor(1e-6, dtype=torch.float32))
    x = torch.tensor([[[eps, 0.0]]])
    background = torch.zeros(1, 1, 2)
    theirs = _shap_deep(model, x, background, torch.tensor([0])).float()
    assert theirs[0, 0, 0].item() == pytest.approx(2 * eps)
    ours = get_explainer("shap_deep")(model).fit(background).explain(x, 0).attributions
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
