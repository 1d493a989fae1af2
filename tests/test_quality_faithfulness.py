"""Faithfulness oracles: a model whose important input is known by construction, the random-map reference,
baselines, vectorization, and captum's infidelity / max-sensitivity on a linear model where they are exact."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xaudit.explain as xe
from xaudit.explain._faithfulness import gaussian_blur, make_baseline
from xaudit.models._errors import XauditError

N_CLASSES = 10
KEY = (2, 1)  # the one pixel (row, column) class 0 depends on


class OnePixel(nn.Module):
    """Class 0's logit is 10 × one pixel (or one sequence element); every other logit is 0.

    With that input at 1 the model is sure of class 0 (p ≈ 1); without it, it is uniform (p = 0.1).
    """

    def __init__(self, index: tuple[int, ...]) -> None:
        super().__init__()
        self.index = index
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = self.scale * x[(slice(None), *self.index)]
        return torch.cat([logit[:, None], torch.zeros(len(x), N_CLASSES - 1)], 1)


class Calls(nn.Module):
    """Counts model calls (to prove deletion does not loop over pixels)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.model(x)


def _images(n: int = 12) -> torch.Tensor:
    x = 0.5 * torch.rand(n, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    x[:, 0, KEY[0], KEY[1]] = 1.0
    return x


def _explanation(x: torch.Tensor, attributions: torch.Tensor, method: str = "oracle") -> xe.Explanation:
    zero = xe.Cost(n_samples=len(x), wall_s=0.0, cpu_s=0.0, peak_rss_bytes=0, forward_evals=0, backward_evals=0)
    return xe.Explanation(method=method, attributions=attributions, inputs=x,
                          targets=torch.zeros(len(x), dtype=torch.long), config={}, cost=zero)


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_faithful_method_ranks_the_key_pixel_first_and_deletion_drops_at_once(method: str) -> None:
    model, x = OnePixel((0, *KEY)), _images()
    exp = xe.get_explainer(method)(model).explain(x, 0)
    top = exp.attributions.flatten(1).abs().argmax(1)
    assert (top == KEY[0] * 5 + KEY[1]).all()
    deletion = xe.DeletionAUC().compute(model, exp)
    assert deletion.curve[0] > 0.99 and deletion.curve[1] == pytest.approx(0.1, abs=1e-6)
    # 25 pixels, 25 steps: the probability falls after the first of 25 steps
    assert deletion.value == pytest.approx((deletion.curve[0] + 0.1) / 2 / 25 + 0.1 * 24 / 25, abs=1e-6)
    assert deletion.reverse_auc > 0.9  # least relevant first: the key pixel goes last
    insertion = xe.InsertionAUC().compute(model, exp)
    assert insertion.value > 0.9 and insertion.reverse_auc < 0.2


def test_unfaithful_map_scores_worse_than_random_and_random_is_about_half() -> None:
    model, x = OnePixel((0, *KEY)), _images(200)
    backwards = torch.ones_like(x)
    backwards[:, 0, KEY[0], KEY[1]] = 0.0  # the key pixel ranked last
    worst = xe.DeletionAUC().compute(model, _explanation(x, backwards))
    random = xe.random_map_auc(model, x, torch.zeros(len(x), dtype=torch.long))
    assert random.method == "random"
    assert random.value == pytest.approx(0.5, abs=0.1)
    assert worst.value > 0.9 > random.value


def test_a_flat_map_breaks_its_ties_independently_of_the_random_reference() -> None:
    # a flat map's removal order is its random tie-breaking; drawn from the same numbers as the random map, it
    # was exactly the random order reversed (per-input AUCs correlated at -1: the key pixel removed at step k
    # by one was removed at step 24 - k by the other), so it scored as more (or less) faithful than random
    model, x = OnePixel((0, *KEY)), _images(200)
    targets = torch.zeros(len(x), dtype=torch.long)
    flat = xe.DeletionAUC().compute(model, _explanation(x, torch.zeros_like(x)))
    random = xe.random_map_auc(model, x, targets, draws=1)
    r = torch.corrcoef(torch.tensor([flat.per_sample, random.per_sample]))[0, 1].item()
    assert abs(r) < 0.25
    # and on average the flat map is no better than random: its faithfulness is about 0
    reference = xe.random_map_auc(model, x, targets)
    assert 1 - flat.value / reference.value == pytest.approx(0.0, abs=0.08)


def test_the_random_reference_averages_independent_draws_per_input() -> None:
    model, x = OnePixel((0, *KEY)), _images(50)
    targets = torch.zeros(len(x), dtype=torch.long)
    one = [xe.random_map_auc(model, x, targets, draws=1, seed=s) for s in range(8)]
    four = xe.random_map_auc(model, x, targets, draws=4)
    assert len(four.per_sample) == len(x) and four.config["draws"] == 4
    assert four.value == pytest.approx(sum(four.per_sample) / len(x), abs=1e-12)
    # a draw is a random order per input: the seeds' values differ, and averaging shrinks the spread
    assert len({round(o.value, 9) for o in one}) == len(one)
    spread = torch.tensor([o.per_sample for o in one]).std(0).mean().item()
    assert torch.tensor(four.per_sample).sub(torch.tensor(one[0].per_sample)).abs().mean().item() < 1.5 * spread
    with pytest.raises(XauditError, match="draws must be a positive integer"):
        xe.random_map_auc(model, x, targets, draws=0)


def test_signed_ordering_removes_positive_evidence_first() -> None:
    model, x = OnePixel((0, *KEY)), _images()
    attr = torch.zeros_like(x)
    attr[:, 0, 0, 0] = -5.0  # large but negative: evidence against the class
    attr[:, 0, KEY[0], KEY[1]] = 1.0
    exp = _explanation(x, attr)
    signed = xe.DeletionAUC(ordering="signed").compute(model, exp)
    by_magnitude = xe.DeletionAUC(ordering="abs").compute(model, exp)
    assert signed.curve[1] == pytest.approx(0.1, abs=1e-6)
    assert by_magnitude.curve[1] > 0.99 and by_magnitude.curve[2] == pytest.approx(0.1, abs=1e-6)


def test_sequence_maps_are_per_time_step_and_feature() -> None:
    model = OnePixel((4, 2))  # N×T×F: step 4, feature 2
    x = 0.5 * torch.rand(10, 6, 3, generator=torch.Generator().manual_seed(2))
    x[:, 4, 2] = 1.0
    exp = xe.get_explainer("saliency")(model).explain(x, 0)
    deletion = xe.DeletionAUC().compute(model, exp)
    assert len(deletion.curve) == 18 + 1  # 18 elements < 32 steps: one element per step
    assert deletion.curve[1] == pytest.approx(0.1, abs=1e-6)


def test_deletion_is_vectorized() -> None:
    """All 2 × (n_steps + 1) perturbed rows of a chunk go through the model in one call."""
    counted = Calls(OnePixel((0, *KEY)))
    x = _images(8)
    exp = xe.get_explainer("saliency")(counted).explain(x, 0)
    counted.calls = 0
    result = xe.DeletionAUC(n_steps=24).compute(counted, exp)
    assert counted.calls == 1
    assert result.cost.forward_evals == 8 * 2 * 25
    counted.calls = 0
    xe.DeletionAUC(n_steps=24, batch_rows=100).compute(counted, exp)  # 2 samples per call
    assert counted.calls == 4


def test_baselines() -> None:
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(make_baseline(x, "zero"), torch.zeros_like(x))
    mean = make_baseline(x, "mean")
    assert torch.allclose(mean[0, :, 0, 0], x.mean((0, 2, 3)))
    assert torch.allclose(make_baseline(x, 0.25), torch.full_like(x, 0.25))
    blurred = make_baseline(x, "blur")
    assert blurred.shape == x.shape and blurred.std() < x.std()
    flat = torch.full((2, 1, 6, 6), 0.7)
    assert torch.allclose(gaussian_blur(flat, 1.5), flat)  # blur keeps a constant image
    seq = torch.rand(2, 9, 4)
    assert make_baseline(seq, "blur").shape == seq.shape
    assert torch.allclose(make_baseline(seq, "mean")[1, 3], seq.mean((0, 1)))
    sample = torch.rand(3, 8, 8)
    assert torch.equal(make_baseline(x, sample)[2], sample)


def test_baseline_errors_are_one_line() -> None:
    model, x = OnePixel((0, *KEY)), _images()
    exp = xe.get_explainer("saliency")(model).explain(x, 0)
    with pytest.raises(XauditError, match=r"baseline of shape \(5, 5\) does not fit inputs of shape \(12, 1, 5, 5\)"):
        xe.DeletionAUC(baseline=torch.zeros(5, 5)).compute(model, exp)
    with pytest.raises(XauditError, match="did you mean 'blur'"):
        xe.DeletionAUC(baseline="blurr")
    with pytest.raises(XauditError, match="n_steps must be at least 1"):
        xe.InsertionAUC(n_steps=0)


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_infidelity_is_zero_for_the_gradient_of_a_linear_model() -> None:
    """f(x) − f(x − I) = w·I exactly, so attributions equal to w have infidelity 0 (Yeh et al. 2019)."""
    model = Linear()
    x = torch.rand(8, 1, 4, 4)
    exp = xe.get_explainer("saliency")(model, abs=False).explain(x)
    exact = xe.Infidelity(normalize=False).compute(model, exp)
    assert exact.value == pytest.approx(0.0, abs=1e-10)
    noisy = _explanation(x, torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    noisy = xe.Explanation(**{**noisy.__dict__, "targets": exp.targets})
    assert xe.Infidelity().compute(model, noisy).value > 1e-5  # noise std ≈ 0.03, so errors are small
    assert exact.config["noise_std"] == pytest.approx(0.1 * float(x.std()))


def test_max_sensitivity_is_zero_for_a_constant_gradient_and_not_for_ig() -> None:
    model = Linear()
    x = torch.rand(8, 1, 4, 4)
    sal = xe.get_explainer("saliency")(model, abs=False)
    ig = xe.get_explainer("integrated_gradients")(model, n_steps=8)
    metric = xe.MaxSensitivity()
    assert metric.compute(model, sal.explain(x), explainer=sal).value == pytest.approx(0.0, abs=1e-6)
    r = metric.compute(model, ig.explain(x), explainer=ig)
    assert r.value > 1e-4 and len(r.per_sample) == len(x)
    # it re-ran IG on every perturbed input (8 per sample) and on the inputs themselves
    assert r.cost.backward_evals >= (metric.n_perturb_samples + 1) * ig.explain(x).cost.backward_evals
