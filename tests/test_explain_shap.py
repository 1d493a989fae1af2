"""The SHAP family: oracles (exact Shapley values, summation-to-delta, Owen values from shap itself) and
agreement with the shap package's own explainers at the same budget.

The registry-wide contract (shapes, determinism, counts, model left untouched) is in
test_explain_contract.py; this file checks that the numbers are right.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import shap
import torch
from torch import nn

from xaudit.explain import explain, get_explainer, row_memory
from xaudit.models import XauditError
from xaudit.explain._shap_estimators import (PartitionTree, grid_tree, kernel_budget, kernel_design,
                                             owen_expansions, owen_known_coalitions, owen_values)
from xaudit.explain._shap_fast import feature_layout
from xaudit.models._errors import XauditError

IMAGE = (1, 2, 4)  # 8 features, one per pixel
SEQUENCE = (8, 1)  # 8 time steps, one feature each


def mlp(n_in: int, n_out: int = 3, act: type[nn.Module] = nn.Tanh, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 16), act(), nn.Linear(16, n_out)).eval()


class ReluCNN(nn.Module):
    """Conv, ReLU, max-pool, conv, ReLU, linear: the plain CNN shap's additivity check trips on."""

    def __init__(self, inplace: bool = False, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1, self.relu1 = nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(inplace=inplace)
            self.pool = nn.MaxPool2d(2)
            self.conv2, self.relu2 = nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=inplace)
            self.head = nn.Linear(8 * 4 * 4, 4)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu2(self.conv2(self.pool(self.relu1(self.conv1(x))))).flatten(1))


def data(shape: tuple[int, ...], n: int = 3, n_bg: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.rand(n_bg, *shape, generator=g)


@torch.no_grad()
def exact_shapley(model: nn.Module, x: torch.Tensor, target: int, references: torch.Tensor) -> np.ndarray:
    """Shapley values of v(S) = mean_b f(x_S, b_rest)[target], one feature per element, by enumeration."""
    m = x.numel()
    subsets = torch.tensor(list(itertools.product([0, 1], repeat=m)), dtype=torch.bool)
    rows = torch.where(subsets[:, None, :], x.reshape(1, 1, -1), references.reshape(1, len(references), -1))
    v = model(rows.reshape(-1, *x.shape))[:, target].reshape(len(subsets), len(references)).mean(1).double()
    value = {tuple(s.tolist()): float(val) for s, val in zip(subsets.int(), v)}
    phi = np.zeros(m)
    for s, val in value.items():
        size = sum(s)
        for i in range(m):
            if not s[i]:
                w = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
                phi[i] += w * (value[s[:i] + (1,) + s[i + 1:]] - val)
    return phi


# ------------------------------------------------------------------------------------------ Kernel SHAP


@pytest.mark.parametrize("baseline", ["mean", "samples"])
@pytest.mark.parametrize(("shape", "layout"), [(IMAGE, {"feature_grid": (1, 1)}), (SEQUENCE, {"time_window": 1})])
def test_kernel_with_all_coalitions_is_exact_shapley(shape: tuple[int, ...], layout: dict, baseline: str) -> None:
    model = mlp(8)
    x, background = data(shape)
    targets = torch.tensor([0, 1, 2])
    exp = explain(model, x, "shap_kernel", targets, background=background, nsamples=10_000,
                  baseline=baseline, **layout)
    references = background.mean(0, keepdim=True) if baseline == "mean" else background
    for i in range(len(x)):
        expected = exact_shapley(model, x[i], int(targets[i]), references)
        assert np.abs(exp.attributions[i].reshape(-1).numpy() - expected).max() <= 1e-2
    # every coalition once, plus f(x) and the empty coalition, each over the references
    assert exp.cost.forward_evals / len(x) == 1 + len(references) * (2**8 - 2 + 1)


def test_kernel_design_mirrors_shaps_enumeration_and_weights() -> None:
    m, nsamples = 10, 300
    f = lambda z: z.sum(1)  # noqa: E731 - any model: only shap's coalitions are compared
    explainer = shap.KernelExplainer(f, np.zeros((1, m)))
    np.random.seed(0)
    explainer.shap_values(np.ones((1, m)), nsamples=nsamples, l1_reg=False, silent=True)
    ours = kernel_design(m, kernel_budget(m, nsamples), seed=0)
    # sizes 1 and 2 (and complements) are enumerated at this budget: 20 + 90 rows in shap's order
    assert np.array_equal(ours.masks[:110], explainer.maskMatrix[:110].astype(bool))
    np.testing.assert_allclose(ours.weights[:110], explainer.kernelWeights[:110])
    # the sampled rest: the same number of rows and the same total weight, complements paired
    assert len(ours.masks) == len(explainer.maskMatrix) == nsamples
    np.testing.assert_allclose(ours.weights.sum(), explainer.kernelWeights.sum())
    sampled, i = ours.masks[110:], 0
    while i < len(sampled) - 1:
        if sampled[i].sum() <= 4:  # paired sizes: each drawn subset is followed by its complement
            assert np.array_equal(sampled[i + 1], ~sampled[i])
            i += 2
        else:
            i += 1


def test_kernel_agrees_with_shap_kernel_explainer_at_equal_nsamples() -> None:
    model = mlp(16, act=nn.ReLU)
    x, background = data((1, 4, 4), n=4)
    targets = torch.tensor([0, 1, 2, 0])
    nsamples = 120  # far below 2^16: both sample
    ours = explain(model, x, "shap_kernel", targets, background=background, nsamples=nsamples,
                   feature_grid=(1, 1)).attributions.reshape(len(x), -1).numpy()
    np.random.seed(0)
    for i, t in enumerate(targets.tolist()):
        def f(z: np.ndarray, t: int = t) -> np.ndarray:
            return model(torch.as_tensor(z, dtype=torch.float32).reshape(-1, 1, 4, 4))[:, t].detach().numpy()

        ke = shap.KernelExplainer(f, background.mean(0).reshape(1, -1).numpy())
        theirs = ke.shap_values(x[i].reshape(1, -1).numpy(), nsamples=nsamples, l1_reg=False, silent=True)[0]
        assert np.corrcoef(ours[i], theirs)[0, 1] > 0.9
        np.testing.assert_allclose(ours[i].sum(), theirs.sum(), rtol=1e-4, atol=1e-6)  # both efficient


def test_kernel_gives_zero_to_features_equal_to_the_background() -> None:
    model = mlp(8)
    x, background = data(IMAGE)
    x[:, 0, 0, :2] = background.mean(0)[0, 0, :2]  # like shap, such features are left out of the fit
    exp = explain(model, x, "shap_kernel", 0, background=background, nsamples=60, feature_grid=(1, 1))
    assert (exp.attributions[:, 0, 0, :2] == 0).all()
    assert exp.attributions[:, 0, 0, 2:].abs().sum() > 0


def test_kernel_respects_row_batch_and_counts_every_row() -> None:
    model = mlp(64, act=nn.ReLU)
    x, background = data((1, 8, 8), n=2)
    sizes: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: sizes.append(len(args[0])))
    exp = explain(model, x, "shap_kernel", 0, background=background, nsamples=300, memory_budget="64KiB")
    assert max(sizes) <= exp.plan["row_batch"] < 300
    _, (fwd, _) = get_explainer("shap_kernel")(model, nsamples=300).fit(background).counts_for((1, 8, 8))
    assert exp.cost.forward_evals == 2 * fwd == 2 * (1 + 300 + 1)


def test_feature_layouts_default_to_at_most_64_patches_or_40_windows() -> None:
    assert feature_layout((1, 8, 8), None, None).n_features == 64  # one pixel each on digits
    assert feature_layout((1, 28, 28), None, None).grid == (7, 7)  # 4×4 patches
    assert feature_layout((3, 32, 32), None, None).n_features == 64
    assert feature_layout((100, 2), None, None).n_features == 34  # windows of 3 steps
    assert feature_layout((8, 3), None, 1).n_features == 8
    ids = feature_layout((3, 5, 5), (2, 2), None).feature_of
    assert ids.shape == (3, 5, 5) and (ids[0] == ids[2]).all() and ids.max() == 8  # channels share a patch


@pytest.mark.parametrize("method", ["shap_kernel", "shap_partition"])
def test_patch_values_are_spread_evenly_and_keep_efficiency(method: str) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 3)).eval()
    x, background = data((3, 6, 6))
    exp = explain(model, x, method, 1, background=background, feature_grid=(3, 2))
    with torch.no_grad():
        fx = model(x)[:, 1]
    torch.testing.assert_close(exp.attributions.sum((1, 2, 3)), fx - exp.extras["base_value"], rtol=1e-4, atol=1e-5)
    patch = exp.attributions[0, :, :3, :2]
    torch.testing.assert_close(patch, patch[0, 0, 0].expand_as(patch))


# ------------------------------------------------------------------------------------------ Partition SHAP


def test_partition_tree_is_shaps_image_tree() -> None:
    for h, w in [(1, 1), (2, 4), (3, 5), (8, 8), (7, 7), (13, 1)]:
        theirs = shap.maskers.Image(0.0, shape=(h, w, 1)).clustering
        ours, m = grid_tree(h, w), h * w
        assert np.array_equal(ours.left[m:], theirs[:, 0]) and np.array_equal(ours.right[m:], theirs[:, 1])
        assert np.array_equal(ours.size[m:], theirs[:, 3])


def _shap_partition(model: nn.Module, x: torch.Tensor, target: int, mask: torch.Tensor, max_evals: int) -> np.ndarray:
    """shap.PartitionExplainer with an Image masker whose constant mask value is ``mask`` (shaped like x).

    Images go to shap as H×W×C; sequences of one feature as T×1×1, so shap's tree splits time.
    """
    shape = x.shape
    to_shap = (lambda t: t.permute(1, 2, 0)) if x.dim() == 3 else (lambda t: t.reshape(shape[0], 1, shape[1]))
    layout = tuple(to_shap(x).shape)

    def f(z: np.ndarray) -> np.ndarray:
        rows = torch.as_tensor(z, dtype=torch.float32).reshape(-1, *layout)
        rows = rows.permute(0, 3, 1, 2) if x.dim() == 3 else rows.reshape(-1, *shape)
        return model(rows)[:, target].detach().numpy()

    explainer = shap.PartitionExplainer(f, shap.maskers.Image(to_shap(mask).numpy(), shape=layout))
    values = explainer(to_shap(x).numpy()[None], max_evals=max_evals, silent=True).values[0]
    return values.transpose(2, 0, 1) if x.dim() == 3 else values.reshape(shape)


@pytest.mark.parametrize(("shape", "layout"), [(IMAGE, {"feature_grid": (1, 1)}), (SEQUENCE, {"time_window": 1})])
def test_partition_with_the_whole_tree_equals_shaps_partition_explainer(shape: tuple[int, ...], layout: dict) -> None:
    model = mlp(8, act=nn.ReLU)
    x, background = data(shape)
    exp = explain(model, x, "shap_partition", 2, background=background, max_evals=1000, **layout)
    assert exp.cost.forward_evals / len(x) == 2 + 2 * (1 + 4 + 16)  # f(x), v(∅), every visit of 7 inner nodes
    for i in range(len(x)):
        theirs = _shap_partition(model, x[i], 2, background.mean(0), 1000)
        np.testing.assert_allclose(exp.attributions[i].numpy(), theirs, atol=1e-6)


def test_partition_agrees_with_shap_when_the_budget_truncates() -> None:
    # both expand the highest-gain visits first (shap 5 per model call, we a quarter of each sample's
    # frontier per call, at least 8), so truncated values differ only by the order within a round
    model = ReluCNN()
    x, background = data((1, 8, 8), n=1)
    exp = explain(model, x, "shap_partition", 0, background=background, max_evals=500)
    assert exp.cost.forward_evals == 500
    theirs = _shap_partition(model, x[0], 0, background.mean(0), 500).reshape(-1)
    assert np.corrcoef(exp.attributions[0].reshape(-1).numpy(), theirs)[0, 1] > 0.9


def test_partition_keeps_efficiency_at_any_budget() -> None:
    model = ReluCNN()
    x, background = data((1, 8, 8), n=3)
    for max_evals in (4, 37, 500):
        exp = explain(model, x, "shap_partition", 1, background=background, max_evals=max_evals)
        with torch.no_grad():
            fx = model(x)[:, 1]
        torch.testing.assert_close(exp.attributions.sum((1, 2, 3)), fx - exp.extras["base_value"],
                                   rtol=1e-4, atol=1e-5)


def test_partition_of_an_additive_model_is_its_exact_shapley_values() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 2)).eval()
    x, background = data(SEQUENCE)
    exp = explain(model, x, "shap_partition", 1, background=background, time_window=1)
    expected = model[1].weight[1].reshape(SEQUENCE) * (x - background.mean(0))
    torch.testing.assert_close(exp.attributions, expected.detach(), rtol=1e-4, atol=1e-6)


class _ToyGame:
    """v(S) for N samples: a small tanh network of the features in S (x where present, 0 where absent);
    records the size of each evaluation call and which sample each row was for."""

    def __init__(self, n: int, m: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, m, generator=g, dtype=torch.float64)
        self.x[:, :2] = 0.0  # features the game ignores: ties in gain
        self.w = torch.randn(n, m, 6, generator=g, dtype=torch.float64)
        self.u = torch.randn(6, generator=g, dtype=torch.float64)
        self.calls: list[int] = []
        self.rows = torch.zeros(n, dtype=torch.long)

    def __call__(self, sample: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(sample))
        self.rows += torch.bincount(sample, minlength=len(self.rows))
        return self.value(sample, masks)

    def value(self, sample: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        hidden = torch.einsum("pm,pmh->ph", masks.double() * self.x[sample], self.w[sample])
        return torch.tanh(hidden) @ self.u + 0.1 * masks.double().sum(1)

    def ends(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, m = self.x.shape
        every = torch.arange(n)
        return (self.value(every, torch.zeros(n, m, dtype=torch.bool)),
                self.value(every, torch.ones(n, m, dtype=torch.bool)))


def _owen_depth_first(game: _ToyGame, i: int, tree: PartitionTree) -> np.ndarray:
    """Owen values of sample i by shap's recursion (fixed_context=None) unrolled depth first, no budget."""
    m = tree.n_leaves
    credit = np.zeros(m)
    value = lambda mask: float(game.value(torch.tensor([i]), torch.as_tensor(mask)[None]))  # noqa: E731

    def visit(m00: np.ndarray, f00: float, f11: float, node: int, weight: float) -> None:
        if node < m:
            credit[node] += (f11 - f00) * weight
            return
        lo, hi = tree.left[node], tree.right[node]
        m10, m01 = m00 | tree.members[lo], m00 | tree.members[hi]
        f10, f01 = value(m10), value(m01)
        for args in ((m00, f00, f10, lo), (m00, f00, f01, hi), (m01, f01, f11, lo), (m10, f10, f11, hi)):
            visit(*args, weight / 2)

    visit(np.zeros(m, bool), value(np.zeros(m, bool)), value(np.ones(m, bool)), tree.root, 1.0)
    return credit


@pytest.mark.parametrize(("h", "w"), [(1, 1), (2, 4), (3, 5), (8, 8), (7, 7), (13, 1)])
def test_partition_full_expansions_count_every_visit_below_a_node(h: int, w: int) -> None:
    tree = grid_tree(h, w)
    for node in (tree.root, tree.left[tree.root], tree.right[tree.root]):
        if node < 0:
            continue
        stack, visits = [node], 0  # every visit of an internal node creates 4: both children in 2 contexts
        while stack:
            top = stack.pop()
            if top >= tree.n_leaves:
                visits += 1
                stack += [tree.left[top], tree.right[top]] * 2
        assert tree.full_expansions[node] == visits
    assert (tree.full_expansions[:tree.n_leaves] == 0).all()
    assert owen_expansions(tree, 10**9) == tree.full_expansions[tree.root]
    assert len(tree.whole.coalitions) == 2 * tree.full_expansions[tree.root]


@pytest.mark.parametrize(("h", "w"), [(2, 4), (3, 5), (8, 1)])
def test_partition_whole_tree_is_the_exact_owen_recursion_in_one_call(h: int, w: int) -> None:
    # with the whole tree affordable every visit is expanded, so the order cannot matter: one call evaluates
    # every coalition and gives the recursion's values, done depth first or in best-first rounds
    tree, n = grid_tree(h, w), 4
    game = _ToyGame(n, h * w)
    expansions = owen_expansions(tree, 10**9)
    whole = owen_values(tree, expansions, *game.ends(), game)
    assert game.calls == [n * 2 * expansions]
    for i in range(n):
        np.testing.assert_allclose(whole[i].numpy(), _owen_depth_first(game, i, tree), rtol=0, atol=1e-12)
    game.calls.clear()
    best_first = owen_values(tree, expansions, *game.ends(), game, whole_tree=False, min_visits=1)
    assert len(game.calls) > 3 and (game.rows == 4 * expansions).all()
    torch.testing.assert_close(whole, best_first, rtol=0, atol=1e-12)
    # the coalitions shared by every sample, evaluated by the caller (with v(∅) and f(x)): no call at all
    game.calls.clear()
    known = owen_known_coalitions(tree, expansions)
    v = game.value(torch.arange(n).repeat_interleave(len(known)), torch.tensor(known).repeat(n, 1))
    shared = owen_values(tree, expansions, *game.ends(), game, known=v.reshape(n, len(known)))
    assert game.calls == []
    torch.testing.assert_close(shared, whole, rtol=0, atol=1e-12)


@pytest.mark.parametrize("max_evals", [4, 12, 37, 100, 500])
def test_partition_truncated_rounds_keep_efficiency_and_the_budget(max_evals: int) -> None:
    tree, n = grid_tree(7, 7), 5
    game = _ToyGame(n, 49, seed=1)
    f_empty, f_full = game.ends()
    expansions = owen_expansions(tree, max_evals)
    assert expansions < tree.full_expansions[tree.root]
    phi = owen_values(tree, expansions, f_empty, f_full, game)
    torch.testing.assert_close(phi.sum(1), f_full - f_empty, rtol=0, atol=1e-12)
    assert (game.rows == 2 * expansions).all()  # exactly the declared evaluations, every sample
    if expansions >= 1 + 4 + 8 + 8:  # the root, its 4 child visits, 8 (min_visits) of 16, no fold yet
        assert game.calls[:3] == [2 * n * k for k in (1, 4, 8)]
    # the root's halves evaluated by the caller: the same values, 2 rows fewer per sample
    known = torch.tensor(owen_known_coalitions(tree, expansions))
    v = game.value(torch.arange(n).repeat_interleave(2), known.repeat(n, 1)).reshape(n, 2)
    game.rows.zero_()
    torch.testing.assert_close(owen_values(tree, expansions, f_empty, f_full, game, known=v), phi, rtol=0, atol=0)
    assert (game.rows == 2 * expansions - 2).all()


# ------------------------------------------------------------------------------------------ Deep and gradient SHAP


@pytest.mark.parametrize("inplace", [False, True], ids=["relu", "inplace_relu"])
def test_deep_sums_to_the_output_difference_on_a_relu_cnn(inplace: bool) -> None:
    model = ReluCNN(inplace=inplace).eval()
    x, background = data((1, 8, 8), n=3, n_bg=5)
    exp = explain(model, x, "shap_deep", background=background)
    with torch.no_grad():
        fx = model(x).gather(1, exp.targets[:, None])[:, 0]
        base = model(background)[:, exp.targets].mean(0)
    torch.testing.assert_close(exp.attributions.sum((1, 2, 3)), fx - base, rtol=1e-4, atol=1e-5)
    assert exp.extras["additivity_error"].abs().max() < 1e-5
    torch.testing.assert_close(exp.extras["base_value"].float(), base, rtol=1e-5, atol=1e-6)
    assert model.relu1.inplace is inplace  # the user's model keeps its modules; hooks went on a copy
    assert exp.cost.forward_evals == exp.cost.backward_evals == 3 * 2 * 5  # x tiled + references, once


def test_deep_explains_only_the_target_and_equals_shap_for_that_class() -> None:
    model = ReluCNN().eval()
    x, background = data((1, 8, 8), n=2, n_bg=4)
    ours = explain(model, x, "shap_deep", [3, 1], background=background).attributions
    theirs = shap.DeepExplainer(model, background).shap_values(x, check_additivity=False)  # all 4 classes
    np.testing.assert_allclose(ours[0].numpy(), theirs[0, ..., 3], atol=1e-6)
    np.testing.assert_allclose(ours[1].numpy(), theirs[1, ..., 1], atol=1e-6)


def test_deep_refuses_a_product_of_two_activations_it_has_no_rule_for() -> None:
    class Square(nn.Module):  # no DeepLIFT rule: shap and captum treat it as linear, so sums would be off
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * x

    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), Square(), nn.Linear(4, 2)).eval()
    x, background = data(IMAGE, n_bg=3)
    for method in ("shap_deep", "deeplift"):
        with pytest.raises(XauditError, match=r"no rule for a product of two input-dependent tensors \(mul\) "
                                              r"in module '2'.*: choose integrated_gradients") as err:
            explain(model, x, method, 0, background=background)
        assert "\n" not in str(err.value)


@pytest.mark.filterwarnings("ignore:unrecognized nn.Module")
def test_deep_reports_the_additivity_gap_instead_of_raising() -> None:
    class Bessel(nn.Module):  # an op the checks do not know: passed through as linear, so sums are off
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.i0e(x)

    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 4), Bessel(), nn.Linear(4, 2)).eval()
    x, background = data(IMAGE, n_bg=3)
    exp = explain(model, x, "shap_deep", 0, background=background)
    with torch.no_grad():
        gap = exp.attributions.sum((1, 2, 3)) - (model(x)[:, 0] - model(background)[:, 0].mean())
    assert gap.abs().max() > 1e-3
    torch.testing.assert_close(exp.extras["additivity_error"].float(), gap, rtol=1e-4, atol=1e-5)


def test_deep_refuses_recurrent_models_with_the_reason_and_runs_reused_activations() -> None:
    class Gru(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn, self.head = nn.GRU(1, 4, batch_first=True), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.act = nn.Linear(8, 8), nn.Linear(8, 2), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.act(self.act(self.a(x.flatten(1)))))

    x, background = data(SEQUENCE)
    reason = get_explainer("shap_deep")(Gru()).fit(background).unsupported_reason(SEQUENCE)
    assert reason and "shap #2653" in reason
    with pytest.raises(XauditError, match="no LSTM/GRU rules"):
        explain(Gru(), x, "shap_deep", background=background)
    # an activation applied twice: shap's hooks would get it wrong; the native rule pairs each call with the
    # references' same call (tests/test_explain_rescale.py compares it with shap on the split model)
    reused = Reused().eval()
    assert get_explainer("shap_deep")(reused).fit(background).unsupported_reason(SEQUENCE) is None
    exp = explain(reused, x, "shap_deep", 0, background=background)
    assert exp.extras["additivity_error"].abs().max() < 1e-5


def test_gradient_sums_to_the_output_difference_in_expectation() -> None:
    model = mlp(8)
    x, background = data(IMAGE, n_bg=16)
    exp = explain(model, x, "shap_gradient", 0, background=background, nsamples=3000)
    with torch.no_grad():
        delta = model(x)[:, 0] - model(background)[:, 0].mean()
    err = (exp.attributions.sum((1, 2, 3)) - delta).abs()
    assert err.max() <= 0.1 * delta.abs().max() + 1e-3
    assert exp.cost.forward_evals == exp.cost.backward_evals == 3 * 3000  # one class, not all three


class _OneLogit(nn.Module):
    """The model's logit of one class, so shap explains one output as xaudit does (with local smoothing,
    shap explaining every class draws new noise for each class: class c would see the c-th block of draws)."""

    def __init__(self, model: nn.Module, target: int) -> None:
        super().__init__()
        self.model, self.target = model, target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.target:self.target + 1]


@pytest.mark.parametrize("local_smoothing", [0.0, 0.1])
def test_gradient_equals_shap_for_the_target_class_with_the_same_seed(local_smoothing: float) -> None:
    # shap is the oracle: xaudit draws the same points (numpy's stream for index and weight, torch's for the
    # noise, reseeded per sample) but evaluates them batched across samples
    model = mlp(8)
    x, background = data(IMAGE, n=4)
    targets = torch.tensor([2, 0, 1, 2])
    ours = explain(model, x, "shap_gradient", targets, background=background, nsamples=50, seed=7,
                   local_smoothing=local_smoothing).attributions
    for i, target in enumerate(targets.tolist()):
        explainer = shap.GradientExplainer(_OneLogit(model, target), background, local_smoothing=local_smoothing)
        torch.manual_seed(7)  # shap's noise comes from torch's global stream; xaudit reseeds it per sample
        theirs = explainer.shap_values(x[i:i + 1], nsamples=50, rseed=7)
        np.testing.assert_allclose(ours[i].numpy(), np.asarray(theirs).reshape(x[i].shape), rtol=1e-5, atol=1e-7)
    if local_smoothing == 0:  # without noise, shap's all-class call gives the same numbers for the class
        theirs = shap.GradientExplainer(model, background).shap_values(x[:1], nsamples=50, rseed=7)
        np.testing.assert_allclose(ours[0].numpy(), theirs[0, ..., 2], rtol=1e-5, atol=1e-7)


def test_gradient_rows_split_across_model_calls_change_nothing() -> None:
    model = mlp(8)
    calls: list[int] = []
    model.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    x, background = data(IMAGE, n=3)
    method = get_explainer("shap_gradient")(model, nsamples=37).fit(background)
    full = method.explain(x, 1, seed=3)
    assert calls[-1] == 3 * 37  # every sample's points in one call (after one-row probes of the model)
    memory = row_memory(model, x[:1])
    budget = memory.fixed_bytes + 10 * memory.bytes_per_row  # about ten rows: a sample spans several calls
    rows = method.predict_cost(x, memory_budget=budget).row_batch
    assert 1 < rows < 37
    calls.clear()
    small = method.explain(x, 1, seed=3, memory_budget=budget)
    n_calls = -(-3 * 37 // rows)
    assert calls[-n_calls:] == [rows] * (n_calls - 1) + [3 * 37 - rows * (n_calls - 1)]
    torch.testing.assert_close(small.attributions, full.attributions, rtol=1e-5, atol=1e-7)
    assert small.cost.forward_evals == full.cost.forward_evals == 3 * 37


# ------------------------------------------------------------------------------------------ configuration errors


@pytest.mark.parametrize(("background", "message"), [
    (torch.zeros(0, 1, 2, 4), "empty"),
    (torch.full((2, 1, 2, 4), float("nan")), "NaN or Inf"),
    (torch.zeros(2, 8), "batch of samples"),
    ([[0.0] * 8], "torch.Tensor or numpy array"),
])
@pytest.mark.parametrize("method", ["shap_gradient", "shap_deep", "shap_kernel", "shap_partition"])
def test_bad_background_is_a_one_line_error(method: str, background: object, message: str) -> None:
    with pytest.raises(XauditError, match=message) as err:
        get_explainer(method)(mlp(8)).fit(background)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["shap_gradient", "shap_deep", "shap_kernel", "shap_partition"])
def test_background_must_match_the_inputs_and_be_given(method: str) -> None:
    x, _ = data(IMAGE)
    explainer = get_explainer(method)(mlp(8)).fit(torch.rand(4, 2, 4))
    with pytest.raises(XauditError, match=r"background samples have shape \(2, 4\) but the inputs have \(1, 2, 4\)"):
        explainer.explain(x)
    with pytest.raises(XauditError, match="needs background data"):
        get_explainer(method)(mlp(8)).explain(x)
    with pytest.raises(XauditError, match="needs background data"):
        explain(mlp(8), x, method)


@pytest.mark.parametrize(("method", "params", "message"), [
    ("shap_kernel", {"nsamples": 1}, "nsamples"),
    ("shap_kernel", {"feature_grid": (0, 2)}, "feature_grid"),
    ("shap_kernel", {"time_window": 1.5}, "time_window"),
    ("shap_partition", {"baseline": "blur"}, "baseline must be one of mean, samples"),
    ("shap_partition", {"max_evals": 2}, "max_evals"),
    ("shap_gradient", {"nsamples": 0}, "nsamples"),
])
def test_bad_parameters_are_one_line_errors(method: str, params: dict, message: str) -> None:
    with pytest.raises(XauditError, match=message) as err:
        get_explainer(method)(mlp(8), **params)
    assert "\n" not in str(err.value)


def test_deep_checks_a_float64_model_with_a_float64_probe() -> None:
    # unsupported_reason builds the hook-safe copy from a zero sample, which must be in the model's dtype
    model = ReluCNN().double().eval()
    x, background = data((1, 8, 8), n=2, n_bg=4)
    explainer = get_explainer("shap_deep")(model).fit(background.double())
    assert explainer.unsupported_reason((1, 8, 8)) is None
    exp = explainer.explain(x.double(), [3, 1])
    assert exp.attributions.dtype == torch.float64 and exp.extras["additivity_error"].abs().max() < 1e-6
