"""The explainer contract, checked for every registered method on tiny CNN, 1-D and recurrent models.

Parametrized over ``available_methods()``, so a method registered anywhere is covered without being
listed here. Known exceptions live in :data:`KNOWN_EXCEPTIONS`, one reason each.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from xaudit.explain import Explainer, available_methods, explain, get_explainer
from xaudit.models._errors import XauditError

#: (method, check) → why that check does not apply to that method. Checks: "deterministic",
#: "batch_invariant", "evals_match" (measured evals == counts_for), "predicted_evals".
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}

N = 3  # samples per test batch
SEQ = (8, 3)  # T×F


class Conv2dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x).flatten(1)))


class Conv1dNet(nn.Module):
    """A 1-D CNN over N×T×F with the features as channels (transposed inside, like the built-in CNN)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.ReLU(),
                                      nn.Conv1d(4, 4, 3, stride=2, padding=1), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x.transpose(1, 2)).flatten(1)))


class RecurrentNet(nn.Module):
    def __init__(self, rnn: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = rnn(3, 6, batch_first=True)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.rnn(x)[0][:, -1]))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(24, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "cnn2d": (Conv2dNet, (1, 8, 8)),
    "cnn1d": (Conv1dNet, SEQ),
    "mlp_seq": (_mlp, SEQ),
    "gru": (lambda: RecurrentNet(nn.GRU), SEQ),
    "lstm": (lambda: RecurrentNet(nn.LSTM), SEQ),
}
CASES = [(m, k) for m in available_methods() for k in MODELS]


def build(kind: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(model in eval mode, inputs, background), the same every time."""
    factory, shape = MODELS[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = factory().eval()
        x = torch.rand(N, *shape)
        background = torch.rand(8, *shape)
    return model, x, background


def make(method: str, model: nn.Module, background: torch.Tensor) -> Explainer:
    explainer = get_explainer(method)(model)
    return explainer.fit(background) if explainer.needs_background else explainer


def supported(method: str, kind: str) -> tuple[nn.Module, torch.Tensor, Explainer]:
    model, x, background = build(kind)
    explainer = make(method, model, background)
    reason = explainer.unsupported_reason(tuple(x.shape[1:]))
    if reason:
        pytest.skip(f"unsupported: {reason}")
    return model, x, explainer


def excepted(method: str, check: str) -> None:
    if (method, check) in KNOWN_EXCEPTIONS:
        pytest.skip(KNOWN_EXCEPTIONS[method, check])


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything an explanation must leave as it found: weights, flags, hooks, grads, module attributes."""
    hooks = {}
    for name, m in model.named_modules():
        for attr, value in vars(m).items():
            if "hooks" in attr and isinstance(value, dict):
                hooks[name, attr] = [(k, id(v)) for k, v in value.items()]
    return {
        "modules": [(name, id(m)) for name, m in model.named_modules(remove_duplicate=False)],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "attributes": [sorted(vars(m)) for m in model.modules()],
        "hooks": hooks,
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key in ("modules", "training", "attributes", "hooks", "requires_grad"):
        assert before[key] == after[key], f"model {key} changed"
    assert before["state"].keys() == after["state"].keys()
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), f"parameter/buffer {k} changed"
    for g0, g1 in zip(before["grads"], after["grads"]):
        assert (g0 is None and g1 is None) or (g0 is not None and g1 is not None and torch.equal(g0, g1))


# ------------------------------------------------------------------------------------------ per method


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_attributions_are_input_shaped_finite_and_deterministic(method: str, kind: str) -> None:
    _, x, explainer = supported(method, kind)
    first = explainer.explain(x, seed=0)
    assert first.attributions.shape == x.shape
    assert first.attributions.dtype == torch.float32
    assert torch.isfinite(first.attributions).all()
    assert first.method == method and first.targets.shape == (N,)
    if (method, "deterministic") not in KNOWN_EXCEPTIONS:
        again = explainer.explain(x, seed=0)
        assert torch.equal(first.attributions, again.attributions), "same seed, different attributions"


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize(("method", "kind"), [(m, k) for m in available_methods() for k in ("cnn2d", "gru")])
def test_a_call_inside_the_callers_no_grad_or_inference_mode_block_works(method: str, kind: str, mode: str) -> None:
    # a notebook's evaluation loop: explaining inside torch.no_grad() failed in the FLOP probe, Grad-CAM and
    # shap_gradient; inside torch.inference_mode() every gradient method failed, and its tensors cannot be saved
    model, x, explainer = supported(method, kind)
    # a fresh explainer on a fresh model, so no probe is cached from a call outside the block
    expected = make(method, build(kind)[0], build(kind)[2]).explain(x, seed=0).attributions
    block = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with block:
        inputs = x.clone()  # made inside the block: an inference tensor under inference_mode
        predicted = explainer.predict_cost(inputs)
        got = explainer.explain(inputs, seed=0)
        assert torch.is_grad_enabled() is False  # the caller's mode is back
    torch.testing.assert_close(got.attributions, expected)
    assert predicted.forward_evals == got.cost.forward_evals


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize(("method", "kind"), CASES)
def test_model_is_left_exactly_as_it_was(method: str, kind: str, train_mode: bool) -> None:
    model, x, explainer = supported(method, kind)
    model.train(train_mode)
    params = list(model.parameters())
    params[0].requires_grad_(False)  # a frozen layer must stay frozen
    params[-1].grad = torch.full_like(params[-1], 0.5)  # a stale gradient must stay untouched
    model.get_submodule("drop" if hasattr(model, "drop") else "3").register_forward_hook(lambda *a: None)
    before = snapshot(model)
    explainer.explain(x, seed=0)
    assert_same(before, snapshot(model))
    assert all(m.training == train_mode for m in model.modules())


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_batch_invariant_where_declared(method: str, kind: str) -> None:
    _, x, explainer = supported(method, kind)
    if not explainer.batch_invariant:
        pytest.skip(f"{method} declares batch_invariant = False")
    excepted(method, "batch_invariant")
    together = explainer.explain(x, target=1, seed=0).attributions
    alone = torch.cat([explainer.explain(x[i:i + 1], target=1, seed=0).attributions for i in range(N)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_cost_is_filled_in_and_counts_match(method: str, kind: str) -> None:
    _, x, explainer = supported(method, kind)
    cost = explainer.explain(x, seed=0).cost
    assert cost.n_samples == N
    assert cost.wall_s > 0 and cost.cpu_s >= 0
    assert cost.forward_evals > 0
    assert cost.flops is not None and cost.flops > 0
    assert cost.energy_source in {"rapl", "nvml", "nvml_power", "estimate"} and cost.energy_j is not None
    if (method, "evals_match") not in KNOWN_EXCEPTIONS:
        _, (fwd, bwd) = explainer.counts_for(x.shape[1:])
        once_fwd, once_bwd = explainer.evals_per_call(x.shape[1:])
        assert (cost.forward_evals, cost.backward_evals) == (N * fwd + once_fwd, N * bwd + once_bwd)
    if (method, "predicted_evals") not in KNOWN_EXCEPTIONS:
        predicted = explainer.predict_cost(x)
        assert (predicted.forward_evals, predicted.backward_evals) == (cost.forward_evals, cost.backward_evals)
        assert predicted.wall_s >= 0 and predicted.peak_bytes > 0


@pytest.mark.parametrize(("method", "kind"), CASES)
def test_unsupported_pairs_refuse_with_the_reason(method: str, kind: str) -> None:
    model, x, background = build(kind)
    explainer = make(method, model, background)
    reason = explainer.unsupported_reason(tuple(x.shape[1:]))
    if reason is None:
        return  # supported pairs are exercised by every other test here
    assert reason.strip() and "\n" not in reason
    with pytest.raises(XauditError) as err:
        explainer.explain(x)
    assert reason in str(err.value)
    with pytest.raises(XauditError, match="choose another method"):
        explain(model, x, method=method, background=background)


@pytest.mark.parametrize("method", available_methods())
def test_every_method_declares_itself(method: str) -> None:
    cls = get_explainer(method)
    assert cls.name == method and cls.paper and cls.__doc__
    assert cls.family in {"saliency", "shap", "lime"}
    if not cls.supports_recurrent:
        assert cls.recurrent_reason, f"{method} refuses RNNs without saying why"
    model, x, background = build("cnn2d")
    explainer = make(method, model, background)
    assert isinstance(explainer.get_params(), dict)
    rows, (fwd, bwd) = explainer.counts_for(x.shape[1:])
    assert rows >= 1 and fwd >= 1 and bwd >= 0
    assert (bwd > 0) == cls.uses_gradients


# ------------------------------------------------------------------------------------------ errors


def test_unknown_method_suggests_the_closest_name() -> None:
    with pytest.raises(XauditError, match=r"did you mean 'saliency'\?"):
        get_explainer("saliancy")
    model, x, _ = build("cnn2d")
    with pytest.raises(XauditError, match=r"did you mean 'occlusion'\?"):
        explain(model, x, method="oclusion")


@pytest.mark.parametrize("target", [3, -1, [0, 1, 7]])
def test_target_out_of_range_is_one_line(target: Any) -> None:
    model, x, _ = build("cnn2d")
    with pytest.raises(XauditError, match="out of range: the model has 3 classes") as err:
        explain(model, x, method="saliency", target=target)
    assert "\n" not in str(err.value)


def test_empty_batch_is_one_line() -> None:
    model, x, _ = build("gru")
    with pytest.raises(XauditError, match="empty") as err:
        explain(model, x[:0], method="integrated_gradients")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs_are_one_line(bad: float) -> None:
    model, x, _ = build("cnn2d")
    x = x.clone()
    x[1, 0, 2, 3] = bad
    with pytest.raises(XauditError, match="NaN or Inf") as err:
        explain(model, x, method="saliency")
    assert "\n" not in str(err.value)


def test_finite_inputs_whose_sum_overflows_are_accepted() -> None:
    # the finite check sums first; a sum that overflows must fall back to checking each value
    model, x, _ = build("cnn2d")
    huge = torch.full_like(x, 3e38)
    assert not torch.isfinite(huge.sum())
    assert explain(model, huge, method="saliency").attributions.shape == x.shape


def test_seeding_a_call_touches_no_generator_it_does_not_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.manual_seed would also seed every CUDA/XPU/MTIA device, whose states the call does not give back
    model, x, _ = build("cnn2d")
    seeded_everywhere: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: seeded_everywhere.append(seed))
    state = torch.random.get_rng_state()
    first = explain(model, x, method="smoothgrad", seed=7, n_samples=3).attributions
    assert seeded_everywhere == []
    assert torch.equal(state, torch.random.get_rng_state())
    torch.testing.assert_close(explain(model, x, method="smoothgrad", seed=7, n_samples=3).attributions, first,
                               rtol=0, atol=0)


@pytest.mark.parametrize(("target", "message"), [
    ("cat", "integer class indices, got 'cat'"),
    ([[0], [1], [2]], r"flat list of one per input, got shape \(3, 1\)"),
    (1.0, "integer class indices, got dtype torch.float32"),
])
def test_malformed_targets_are_one_line(target: Any, message: str) -> None:
    model, x, _ = build("cnn2d")
    with pytest.raises(XauditError, match=message) as err:
        explain(model, x, method="saliency", target=target)
    assert "\n" not in str(err.value)


def test_a_misspelled_parameter_suggests_the_closest_name() -> None:
    model, x, _ = build("cnn2d")
    with pytest.raises(XauditError, match=r"unknown integrated_gradients parameter 'n_stepz': did you mean "
                                          r"'n_steps'\?") as err:
        explain(model, x, method="integrated_gradients", n_stepz=4)
    assert "\n" not in str(err.value)
    # a wrapper takes its base method's parameters, and only those
    assert explain(model, x, method="smoothgrad", base="integrated_gradients", n_steps=4, n_samples=2).cost
    with pytest.raises(XauditError, match="did you mean 'n_steps'"):
        explain(model, x, method="smoothgrad", base="integrated_gradients", n_stepz=4)


@pytest.mark.parametrize("shape", [(N, 3, 8, 8), (1, 8, 8), (N, 1, 9)])
def test_inputs_that_do_not_fit_the_model_are_one_line(shape: tuple[int, ...]) -> None:
    model, _, _ = build("cnn2d")
    with pytest.raises(XauditError, match=r"do not fit the model \(.+\): pass a batch shaped N") as err:
        explain(model, torch.rand(shape), method="integrated_gradients")
    assert "\n" not in str(err.value)


class _BatchOfOne(nn.Module):
    """Flattens with view(1, -1): right for one input, wrong (one row for the whole batch) for more."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.reshape(1, -1)[:, :64])


def test_a_model_that_returns_one_row_per_batch_is_refused() -> None:
    x = torch.rand(N, 1, 8, 8)
    with pytest.raises(XauditError, match=r"returned \(1, 3\) for a batch of 2: .*one row of class scores per "
                                          "input") as err:
        explain(_BatchOfOne(), x, method="saliency")
    assert "\n" not in str(err.value)


class _WithHidden(nn.Module):
    """Returns (logits, hidden) or {"logits": ...}, as many recurrent and detection models do."""

    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.head, self.as_dict = nn.Linear(64, 3), as_dict

    def forward(self, x: torch.Tensor) -> Any:
        logits = self.head(x.flatten(1))
        return {"logits": logits} if self.as_dict else (logits, x.mean())


@pytest.mark.parametrize(("as_dict", "pick"), [(False, "[0]"), (True, "['logits']")])
def test_a_model_returning_a_tuple_or_dict_is_told_how_to_wrap_it(as_dict: bool, pick: str) -> None:
    with pytest.raises(XauditError, match=rf"returned a (tuple|dict) .*model\(x\){re.escape(pick)}") as err:
        explain(_WithHidden(as_dict), torch.rand(N, 1, 8, 8), method="saliency")
    assert "\n" not in str(err.value)


def test_a_device_argument_says_where_explanations_run() -> None:
    model, x, _ = build("cnn2d")
    with pytest.raises(XauditError, match=r"saliency takes no device: .*move the model \(model.to"):
        explain(model, x, method="saliency", device="cpu")


def test_float64_inputs_get_float64_attributions() -> None:
    model, x, _ = build("cnn2d")
    model, x = model.double(), x.double()
    assert explain(model, x, method="integrated_gradients", n_steps=8).attributions.dtype == torch.float64
    exp = explain(model, x, method="saliency", target=1)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg)[:, 1].sum(), xg)
    # equal to float64 precision, which float32 storage (relative error ~6e-8) would lose
    torch.testing.assert_close(exp.attributions, grad.abs(), rtol=1e-12, atol=1e-15)


def test_too_small_memory_budget_says_how_much_is_needed() -> None:
    model, x, _ = build("cnn2d")
    with pytest.raises(XauditError, match=r"needs about [0-9.]+ (B|KiB|MiB)") as err:
        explain(model, x, method="integrated_gradients", memory_budget=64)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["saliency", "deeplift", "occlusion", "integrated_gradients"])
def test_memory_needed_is_the_smallest_budget_a_call_runs_under(method: str) -> None:
    model, x, _ = build("cnn2d")
    explainer = get_explainer(method)(model)
    need = explainer.memory_needed(x)
    assert explainer.explain(x, 0, memory_budget=need).plan["row_batch"] == 1
    with pytest.raises(XauditError, match=f"with {method}: it needs about"):
        explainer.explain(x, 0, memory_budget=need - 1)


def test_memory_budget_bounds_the_rows_per_model_call() -> None:
    model, x, _ = build("cnn2d")
    calls: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: calls.append(len(args[0])))
    budget = "64KiB"
    exp = explain(model, x, method="integrated_gradients", n_steps=32, memory_budget=budget)
    row_batch = exp.plan["row_batch"]
    assert row_batch < 32 * N, "budget should force chunking for this test to mean anything"
    assert max(calls) <= max(row_batch, N)


class _FixedCost(Explainer):
    """Unregistered (no name): each call costs 1 s of overhead plus 0.1 s per sample on a fake clock."""

    def __init__(self, model: nn.Module, clock: list[float]) -> None:
        super().__init__(model)
        self.clock = clock

    def _attribute(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, ctx: Any) -> torch.Tensor:
        self.clock[0] += 1.0 + 0.1 * len(inputs)
        return torch.zeros_like(inputs)


def test_predict_cost_separates_per_call_overhead_from_per_sample_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    import xaudit.explain._base as base

    clock = [0.0]
    monkeypatch.setattr(base, "time", type("FakeTime", (), {"perf_counter": staticmethod(lambda: clock[0])}))
    model, _, _ = build("cnn2d")
    x = torch.rand(10, 1, 8, 8)
    predicted = _FixedCost(model, clock).predict_cost(x, batch_size=4)
    assert predicted.samples_per_chunk == 4
    # three chunks (4 + 4 + 2): 3 × 1 s + 10 × 0.1 s; one probe's time per sample would say 3.5 s
    assert predicted.wall_s == pytest.approx(4.0)
    assert "" not in available_methods()


@pytest.mark.parametrize("method", available_methods())
@pytest.mark.parametrize("kind", ["cnn2d", "gru"])
def test_an_explanation_records_the_settings_it_ran_with(method: str, kind: str) -> None:
    model, x, explainer = supported(method, kind)
    exp = explainer.explain(x, 0)
    assert exp.settings == explainer.settings(tuple(x.shape[1:]))
    if method in ("lime", "occlusion", "shap_kernel", "shap_partition"):  # automatic values resolved
        assert None not in exp.settings.values()
    assert json.dumps(exp.to_dict()["settings"], default=str)


def test_settings_resolve_automatic_values_and_drop_what_does_not_apply() -> None:
    image = get_explainer("lime")(nn.Identity()).settings((1, 8, 8))
    assert "features" not in image and image["segment_size"] == 1 and image["num_features"] == "all"
    sequence = get_explainer("lime")(nn.Identity()).settings((80, 3))
    assert "segmentation" not in sequence and sequence["segment_size"] == 2  # at most 40 windows
    assert "segment_size" not in get_explainer("lime")(nn.Identity(), features="feature").settings((80, 3))
    occlusion = get_explainer("occlusion")(nn.Identity()).settings((1, 8, 8))
    assert occlusion == {"window": "2×2", "stride": "1×1", "baseline": 0.0}
    assert get_explainer("occlusion")(nn.Identity(), window=4).settings((40, 3))["window"] == "4"
    assert get_explainer("saliency")(nn.Identity()).settings((1, 8, 8)) == {"abs": True}
    kernel = get_explainer("shap_kernel")(nn.Identity())
    assert kernel.settings((1, 8, 8)) == {"nsamples": 2 * 64 + 2048, "feature_grid": "1×1", "baseline": "mean",
                                          "features": 64}
    assert kernel.settings((40, 1)) == {"nsamples": 2 * 40 + 2048, "time_window": 1, "baseline": "mean",
                                        "features": 40}
    # a budget past 2^M - 2 coalitions is capped there (the result is then exact)
    assert get_explainer("shap_kernel")(nn.Identity(), nsamples=1000, feature_grid=(4, 4)).settings(
        (1, 8, 8))["nsamples"] == 2**4 - 2
    assert get_explainer("shap_partition")(nn.Identity(), feature_grid=(2, 4)).settings((1, 8, 8)) == {
        "max_evals": 500, "feature_grid": "2×4", "baseline": "mean", "features": 8}


def test_shap_kernel_settings_are_the_coalitions_it_evaluates() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    explainer = get_explainer("shap_kernel")(model, feature_grid=(2, 2)).fit(torch.rand(5, 1, 8, 8))
    exp = explainer.explain(torch.rand(3, 1, 8, 8), 0)
    # f(x), then v(∅) and every coalition against the mean reference: one row each
    assert exp.cost.forward_evals == 3 * (1 + exp.settings["nsamples"] + 1)
    assert exp.settings["features"] == 16 and exp.settings["nsamples"] == 2 * 16 + 2048


class _SqrtNet(nn.Module):
    """sqrt(|x|) first: finite outputs everywhere, an infinite gradient wherever an input is exactly 0."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1).abs().sqrt())


def test_non_finite_attributions_are_a_one_line_error_naming_the_samples() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8) + 0.1
    x[2, 0, 3, 3] = 0.0
    with pytest.raises(XauditError, match=r"saliency gave NaN/Inf attributions for 1 of 4 samples \(first: #2\)") \
            as err:
        explain(_SqrtNet(), x, method="saliency")
    assert "\n" not in str(err.value)
    x[2, 0, 3, 3] = 0.5
    assert torch.isfinite(explain(_SqrtNet(), x, method="saliency").attributions).all()
