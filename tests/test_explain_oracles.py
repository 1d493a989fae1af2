"""Oracles: attributions and FLOP counts that follow in closed form from the model, not from snapshots."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from captum.attr import DeepLift as CaptumDeepLift
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from torch import nn

from xaudit.explain import explain, flop_profile, get_explainer, lstm_forward_flops, model_guard, rnn_forward_flops
from xaudit.explain._flops import rnn_backward_flops


def seeded_init(factory: Any) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return factory().eval()


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def linear() -> nn.Sequential:
    return seeded_init(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 4)))


def relu_cnn(pool: type[nn.Module] = nn.AvgPool2d) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, padding=1),
                         nn.ReLU(), pool(2), nn.Flatten(), nn.Linear(24, 8), nn.ReLU(), nn.Linear(8, 3))


# ------------------------------------------------------------------------------------ gradient methods


def test_saliency_of_a_linear_model_is_the_absolute_target_weights(linear: nn.Sequential) -> None:
    x = rand(5, 1, 8, 8)
    attr = explain(linear, x, method="saliency", target=2).attributions
    expected = linear[1].weight[2].abs().detach().expand(5, 64)
    torch.testing.assert_close(attr.reshape(5, 64), expected)


def test_input_x_gradient_of_a_linear_model_is_input_times_weights(linear: nn.Sequential) -> None:
    x = rand(5, 1, 8, 8) - 0.5
    attr = explain(linear, x, method="input_x_gradient", target=1).attributions
    torch.testing.assert_close(attr.reshape(5, 64), x.reshape(5, 64) * linear[1].weight[1].detach())


def test_smoothgrad_of_a_linear_model_is_the_gradient_whatever_the_noise(linear: nn.Sequential) -> None:
    x = rand(4, 1, 8, 8)
    exp = explain(linear, x, method="smoothgrad", target=3, n_samples=7, stdev=0.3)
    torch.testing.assert_close(exp.attributions.reshape(4, 64), linear[1].weight[3].abs().detach().expand(4, 64))
    assert exp.cost.forward_evals == exp.cost.backward_evals == 4 * 7


def test_smoothgrad_averages_the_base_method_over_noise() -> None:
    model = seeded_init(relu_cnn)
    x = rand(3, 1, 8, 8)
    plain = explain(model, x, method="input_x_gradient", target=0).attributions
    no_noise = explain(model, x, method="smoothgrad", base="input_x_gradient", stdev=0.0, n_samples=3, target=0)
    torch.testing.assert_close(no_noise.attributions, plain)
    noisy = explain(model, x, method="smoothgrad", base="input_x_gradient", stdev=0.2, n_samples=3, target=0)
    assert not torch.allclose(noisy.attributions, plain)
    other_seed = explain(model, x, method="smoothgrad", base="input_x_gradient", stdev=0.2, n_samples=3,
                         target=0, seed=1)
    assert not torch.equal(noisy.attributions, other_seed.attributions)


def test_smoothgrad_passes_parameters_to_its_base_and_counts_its_evaluations() -> None:
    model = seeded_init(relu_cnn)
    exp = explain(model, rand(2, 1, 8, 8), method="smoothgrad", base="integrated_gradients", n_steps=4,
                  n_samples=5, memory_budget="256KiB")
    assert exp.config["base_params"]["n_steps"] == 4
    assert exp.cost.forward_evals == 2 * 5 * (4 + 1) + 1 and exp.cost.backward_evals == 2 * 5 * 4


def test_integrated_gradients_completeness() -> None:
    model = seeded_init(lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 3)))
    x = rand(4, 1, 8, 8)
    exp = explain(model, x, method="integrated_gradients", target=1, n_steps=64)
    with torch.no_grad():
        gap = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(exp.attributions.sum((1, 2, 3)), gap, atol=1e-4, rtol=1e-4)
    assert exp.extras["convergence_delta"].abs().max() < 1e-4
    assert gap.abs().min() > 1e-2, "the oracle needs a non-trivial gap"


@pytest.mark.parametrize(("n_steps", "budget", "split"), [
    (3, None, "one chunk"), (3, "200KiB", "chunks of 5 samples"), (12, "144KiB", "steps in slices of 11")])
def test_integrated_gradients_equals_captums_attributions_and_delta_with_one_baseline_row_per_call(
        n_steps: int, budget: str | None, split: str) -> None:
    # few steps, so the delta is far from 0 and a wrong f(x) or f(baseline) would show
    model = seeded_init(relu_cnn)
    x = rand(6, 1, 8, 8)
    exp = explain(model, x, method="integrated_gradients", target=2, n_steps=n_steps, baseline=0.25,
                  memory_budget=budget)
    attr, delta = CaptumIntegratedGradients(model).attribute(x, baselines=0.25, target=2, n_steps=n_steps,
                                                             return_convergence_delta=True)
    torch.testing.assert_close(exp.attributions, attr.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(exp.extras["convergence_delta"], delta.detach(), atol=1e-6, rtol=1e-5)
    assert delta.abs().max() > 1e-4
    assert {"one chunk": exp.plan["samples_per_chunk"] >= len(x),
            "chunks of 5 samples": exp.plan["samples_per_chunk"] == 5,
            "steps in slices of 11": exp.plan["row_batch"] == 11 and exp.plan["samples_per_chunk"] == 1}[split]
    # the interpolated rows and f(x) per sample, f(baseline) once per call: not once per sample or chunk
    assert exp.cost.forward_evals == 6 * (n_steps + 1) + 1 and exp.cost.backward_evals == 6 * n_steps


@pytest.mark.parametrize("baseline", [0.0, 0.5])
def test_deeplift_sums_to_the_difference_from_the_baseline(baseline: float) -> None:
    model = seeded_init(relu_cnn)
    x = rand(4, 1, 8, 8)
    exp = explain(model, x, method="deeplift", target=2, baseline=baseline)
    with torch.no_grad():
        gap = model(x)[:, 2] - model(torch.full_like(x, baseline))[:, 2]
    torch.testing.assert_close(exp.attributions.sum((1, 2, 3)), gap, atol=1e-4, rtol=0)
    assert exp.extras["convergence_delta"].abs().max() < 1e-4
    # on a nonlinear net DeepLift is not the gradient: the oracle would not catch a plain x·grad
    ixg = explain(model, x - baseline, method="input_x_gradient", target=2).attributions
    assert not torch.allclose(ixg.sum((1, 2, 3)), gap, atol=1e-3)


def test_deeplift_reports_captums_own_convergence_delta_without_extra_evaluations() -> None:
    # captum's max-pool rule does not conserve the sum exactly: the delta must say so, and match captum's
    model = seeded_init(lambda: relu_cnn(nn.MaxPool2d))
    x = rand(4, 1, 8, 8)
    exp = explain(model, x, method="deeplift", target=1)
    with pytest.warns(UserWarning):
        _, delta = CaptumDeepLift(model).attribute(x.clone().requires_grad_(True), target=1,
                                                   return_convergence_delta=True)
    torch.testing.assert_close(exp.extras["convergence_delta"], delta.detach(), atol=1e-6, rtol=1e-5)
    assert delta.abs().max() > 1e-3
    assert exp.cost.forward_evals == exp.cost.backward_evals == 2 * 4


def test_guided_backprop_passes_only_positive_gradients_through_relus() -> None:
    model = seeded_init(lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)))
    x = rand(3, 4, 3) - 0.5
    attr = explain(model, x, method="guided_backprop", target=0).attributions
    w1, w2 = model[1].weight.detach(), model[3].weight.detach()
    active = (x.reshape(3, 12) @ w1.T + model[1].bias.detach()) > 0
    expected = (w2[0].clamp(min=0) * active) @ w1
    torch.testing.assert_close(attr.reshape(3, 12), expected)


# ------------------------------------------------------------------------------------ CAM, occlusion


class TwoDetectors(nn.Module):
    """Channel 0 fires on positive pixels, channel 1 on negative ones; class c sums channel c."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 2, stride=2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).reshape(2, 1, 1, 1).expand(2, 1, 2, 2))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x)).sum((2, 3))


def test_gradcam_highlights_the_region_holding_the_class_evidence() -> None:
    x = torch.zeros(1, 1, 8, 8)
    x[..., :4, :4] = 1.0  # evidence for class 0, top left
    x[..., 4:, 4:] = -1.0  # evidence for class 1, bottom right
    model = TwoDetectors().eval()
    top_left, bottom_right = (slice(0, 4), slice(0, 4)), (slice(4, 8), slice(4, 8))
    for target, region, far_corner in ((0, top_left, (slice(5, 8), slice(5, 8))),
                                       (1, bottom_right, (slice(0, 3), slice(0, 3)))):
        cam = explain(model, x, method="gradcam", target=target).attributions[0, 0]
        assert cam.min() >= 0
        # bilinear upsampling of the 4×4 map bleeds a little over the region's edge, never further
        assert cam[region].sum() > 0.8 * cam.sum(), f"class {target}: evidence not where it sits"
        assert cam[far_corner].sum() == 0


def test_gradcam_on_a_1d_cnn_maps_back_to_time_steps() -> None:
    class Steps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(3, 1, 1, bias=False)
            with torch.no_grad():
                self.conv.weight.fill_(1.0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x.transpose(1, 2))).sum(2)

    x = torch.zeros(1, 10, 3)
    x[0, 6] = 1.0
    cam = explain(Steps().eval(), x, method="gradcam", target=0).attributions[0]
    assert cam.shape == (10, 3)
    assert torch.equal(cam[:, 0], cam[:, 2]), "broadcast over features"
    assert int(cam[:, 0].argmax()) == 6 and cam[:6].abs().sum() == 0


def test_occlusion_is_nonzero_only_on_the_one_pixel_the_model_reads() -> None:
    class OnePixel(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([3.0 * x[:, 0, 2, 5], torch.zeros(len(x))], 1)

    x = rand(2, 1, 8, 8) + 0.5
    attr = explain(OnePixel(), x, method="occlusion", target=0, window=1).attributions
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2, 5] = True
    assert (attr[:, 0, ~mask] == 0).all()
    torch.testing.assert_close(attr[:, 0, 2, 5], 3.0 * x[:, 0, 2, 5])
    wide = explain(OnePixel(), x, method="occlusion", target=0).attributions  # default 2×2 windows
    assert (wide[:, 0, ~mask] != 0).sum() > 0 and (wide[:, 0, :2, :4] == 0).all()


def test_occlusion_counts_one_evaluation_per_window_plus_one() -> None:
    model = seeded_init(relu_cnn)
    exp = explain(model, rand(3, 1, 8, 8), method="occlusion", window=4, stride=2)
    assert exp.cost.forward_evals == 3 * (3 * 3 + 1) and exp.cost.backward_evals == 0
    seq = get_explainer("occlusion")(nn.Sequential(nn.Flatten(), nn.Linear(40, 2)))
    assert seq.geometry((20, 2)) == ((2, 2), (1, 2)) and seq.counts_for((20, 2)) == (20, (20.0, 0.0))


# ------------------------------------------------------------------------------------ FLOPs


def profile(model: nn.Module, sample: torch.Tensor) -> Any:
    with model_guard(model):
        return flop_profile(model, sample)


def test_linear_flops_are_two_per_multiply_add() -> None:
    p = profile(nn.Linear(20, 7), torch.rand(1, 20))
    assert p.forward == 2 * 20 * 7 and p.backward == 2 * 20 * 7 and p.source == "FlopCounterMode"


@pytest.mark.parametrize(("stride", "padding", "size", "out"), [(1, 1, 8, 8), (2, 0, 9, 4)])
def test_conv2d_flops_match_the_analytic_count(stride: int, padding: int, size: int, out: int) -> None:
    model = nn.Sequential(nn.Conv2d(3, 5, 3, stride=stride, padding=padding), nn.Flatten())
    p = profile(model, torch.rand(1, 3, size, size))
    assert p.forward == 2 * 3 * 5 * 3 * 3 * out * out


class LastStep(nn.Module):
    def __init__(self, rnn: nn.RNNBase) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0][:, -1]


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_flops_use_the_analytic_formula_where_the_counter_sees_none(layers: int) -> None:
    steps, inp, hidden = 7, 3, 5
    lstm = nn.LSTM(inp, hidden, num_layers=layers, batch_first=True)
    analytic = 2 * steps * 4 * hidden * (inp + hidden) + (layers - 1) * 2 * steps * 4 * hidden * (2 * hidden)
    assert lstm_forward_flops(lstm, steps) == analytic
    p = profile(LastStep(lstm), torch.rand(1, steps, inp))
    assert p.forward == analytic and p.analytic_layers == ("rnn: LSTM",)


def test_gru_flops_come_from_the_counter_and_match_the_formula() -> None:
    steps, inp, hidden = 7, 3, 5
    p = profile(LastStep(nn.GRU(inp, hidden, batch_first=True)), torch.rand(1, steps, inp))
    assert p.forward == 2 * steps * 3 * hidden * (inp + hidden) and p.analytic_layers == ()


def test_an_lstm_the_counter_sees_is_counted_once() -> None:
    # proj_size and float64 take the decomposed path the counter sees: the analytic count was added on top
    # (a name lookup never matched the counter's keys), doubling the LSTM's FLOPs
    steps, inp, hidden, proj = 6, 3, 5, 2
    lstm = nn.LSTM(inp, hidden, proj_size=proj, batch_first=True)
    p = profile(LastStep(lstm), torch.rand(1, steps, inp))
    assert p.forward == lstm_forward_flops(lstm, steps) == 2 * steps * (4 * hidden * (inp + proj) + hidden * proj)
    assert p.analytic_layers == ()
    double = LastStep(nn.LSTM(inp, hidden, batch_first=True)).double()
    assert profile(double, torch.rand(1, steps, inp, dtype=torch.float64)).forward == 2 * steps * 4 * hidden * (inp + hidden)


@pytest.mark.parametrize("cls", [nn.GRU, nn.RNN])
@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (2, True)])
def test_the_rnn_formula_equals_what_the_counter_finds_for_a_decomposed_gru_and_rnn(
        cls: type[nn.RNNBase], layers: int, bidirectional: bool) -> None:
    # on CPU the counter sees a GRU's and an RNN's matrix products: the analytic formula must agree with it,
    # forward and backward, since on CUDA (cuDNN's fused kernel) the formula stands in for the counter
    steps, inp, hidden = 6, 5, 7
    rnn = cls(inp, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    p = profile(LastStep(rnn), torch.rand(1, steps, inp))
    assert p.analytic_layers == ()
    assert p.forward == rnn_forward_flops(rnn, steps) and p.forward > 0
    assert p.backward == rnn_backward_flops(rnn, steps)


def _kernel_shapes(rnn: nn.RNNBase, steps: int, batch: int) -> tuple[tuple, list, int, tuple]:
    """The shapes cuDNN's kernel is handed for ``rnn``: input (T, N, I), the flat weights (per layer and
    direction W_ih, W_hh, the biases, an LSTM's W_hr), their stride and h0 (layers·directions, N, H_out)."""
    weights = [tuple(w.shape) for w in rnn._flat_weights]
    groups = rnn.num_layers * (2 if rnn.bidirectional else 1)
    out = rnn.proj_size if getattr(rnn, "proj_size", 0) > 0 else rnn.hidden_size
    return (steps, batch, rnn.input_size), weights, len(weights) // groups, (groups, batch, out)


@pytest.mark.parametrize("rnn", [nn.LSTM(5, 7, num_layers=2, bidirectional=True, proj_size=3),
                                 nn.LSTM(5, 7, bias=False), nn.GRU(5, 7, num_layers=2, bidirectional=True),
                                 nn.RNN(5, 7, nonlinearity="relu")], ids=["lstm-proj", "lstm-nobias", "gru", "rnn"])
def test_the_cudnn_kernel_formulas_equal_the_rnn_formula_times_the_sequences(rnn: nn.RNNBase) -> None:
    # on CUDA cuDNN runs every LSTM, GRU and RNN as aten._cudnn_rnn, which the counter has no formula for
    from xaudit.explain._flops import _rnn_formulas

    aten = torch.ops.aten
    formulas = _rnn_formulas(lambda mode: None)
    steps, batch = 6, 3
    inp, weights, stride, hx = _kernel_shapes(rnn, steps, batch)
    forward = formulas[aten._cudnn_rnn](inp, weights, stride, None, hx, None, 2)
    backward = formulas[aten._cudnn_rnn_backward](inp, weights, stride, None, hx)
    assert forward == batch * rnn_forward_flops(rnn, steps)
    assert backward == batch * rnn_backward_flops(rnn, steps)


class _Seqs(nn.Module):
    """One sample holds 4 sequences of 6 steps × 5 features, run through the LSTM as a batch of 4."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(5, 7, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x.reshape(-1, 6, 5))[0][:, -1].reshape(len(x), -1)


class _Keyword(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(5, 7, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(input=x)[0][:, -1]


class _OffPath(nn.Module):
    """The LSTM reads a detached copy of the input: no gradient runs through it."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(5, 7, batch_first=True)
        self.head = nn.Linear(5, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x.detach())[0][:, -1] + self.head(x[:, -1])


class _Projected(nn.LSTM):
    """An LSTM subclass with its own input projection: the counter sees that product inside the LSTM's call."""

    def __init__(self) -> None:
        super().__init__(5, 7, batch_first=True)
        self.pre = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor, hx: object = None) -> object:  # type: ignore[override]
        return super().forward(self.pre(x), hx)


class _DirectForward(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn.forward(x)[0][:, -1]


@pytest.mark.parametrize("make", [
    _Seqs, _Keyword, _OffPath, lambda: LastStep(_Projected()), lambda: _DirectForward(nn.LSTM(5, 7, batch_first=True)),
    lambda: LastStep(nn.LSTM(5, 7, num_layers=2, bidirectional=True, batch_first=True)),
], ids=["sequences-in-a-sample", "keyword-call", "off-the-gradient-path", "subclass", "forward-called-directly",
        "two-layers-bidirectional"])
def test_a_fused_lstm_is_counted_as_the_counter_counts_it_in_float64(make: Callable[[], nn.Module]) -> None:
    # in float64 the LSTM runs decomposed and the counter counts it: the oracle. Each case was miscounted when
    # a module hook added an analytic count wherever the counter saw nothing during the LSTM's call (4x too
    # low, a crash, 21x too high, 0 for the LSTM, 0 for the LSTM, in that order)
    torch.manual_seed(0)
    model = make().eval()
    sample = torch.rand(1, 24, 5) if isinstance(model, _Seqs) else torch.rand(1, 6, 5)
    fused = profile(model, sample)
    oracle = profile(copy.deepcopy(model).double(), sample.double())
    assert (fused.forward, fused.backward) == (oracle.forward, oracle.backward)
    assert fused.analytic_layers and not oracle.analytic_layers


def test_a_frozen_torchscript_lstm_is_counted_and_explained() -> None:
    # freezing inlines the submodules (no LSTM module is left to watch) and drops the training flag, on which
    # explain's eval-mode switch raised AttributeError
    torch.manual_seed(0)
    eager = LastStep(nn.LSTM(5, 7, batch_first=True)).eval()
    frozen = torch.jit.freeze(torch.jit.script(eager))
    p = profile(frozen, torch.rand(1, 6, 5))
    assert p.forward == rnn_forward_flops(eager.rnn, 6) and p.analytic_layers == ("LSTM kernel",)
    exp = explain(frozen, torch.rand(2, 6, 5), "saliency", target=0)
    assert exp.cost.flops == 2 * (p.forward + p.backward)


class _TwoCalls(nn.Module):
    """One LSTM run over the sequence, then over its last 2 steps."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 5, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0][:, -1] + self.rnn(x[:, -2:])[0][:, -1]


def test_an_lstm_called_twice_is_counted_for_both_calls_and_its_backward_skips_h0() -> None:
    model = _TwoCalls()
    p = profile(model, torch.rand(1, 7, 3))
    assert p.forward == lstm_forward_flops(model.rnn, 7) + lstm_forward_flops(model.rnn, 2)
    # the input gradient needs no hidden-to-hidden product at each call's first step (h0 is a constant)
    first_step = 2 * 4 * 5 * 5
    assert p.backward == p.forward - 2 * first_step


def test_a_torchscript_lstm_is_counted() -> None:
    # it was named "not counted": the fused kernel runs inside TorchScript too, and its formula counts it there
    lstm = nn.LSTM(3, 5, batch_first=True)
    p = profile(torch.jit.script(LastStep(lstm).eval()), torch.rand(1, 7, 3))
    assert p.forward == lstm_forward_flops(lstm, 7) and p.analytic_layers == ("LSTM kernel",)


class _Attention(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: N×T×D
        q = x.view(len(x), x.shape[1], 2, -1).transpose(1, 2)  # 2 heads
        return nn.functional.scaled_dot_product_attention(q, q, q).flatten(1)


def test_cpu_attention_is_counted() -> None:
    steps, dim = 16, 8
    p = profile(_Attention(), torch.rand(1, steps, dim))
    # q·kᵀ and attention·v: 2 products of steps × steps × head dim per head, 2 FLOPs per multiply-add
    assert p.forward == 2 * 2 * (2 * steps * steps * (dim // 2))
    assert p.backward > p.forward


def test_gradcam_is_charged_for_the_backward_it_runs_to_its_layer_only() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(6 * 8 * 8, 3)).eval()
    exp = explain(model, torch.rand(5, 1, 8, 8), "gradcam", target=1)
    forward = 2 * 1 * 4 * 9 * 64 + 2 * 4 * 6 * 9 * 64 + 2 * 6 * 64 * 3
    head = 2 * 6 * 64 * 3  # the gradient of the logits back to the last conv's output: the head's product
    assert exp.cost.forward_evals == exp.cost.backward_evals == 5
    assert exp.cost.flops == 5 * forward + 5 * head


def test_flop_profile_of_a_model_not_returning_one_score_tensor_is_one_line() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.flatten(1), x.flatten(1)

    from xaudit.models import XauditError

    with pytest.raises(XauditError, match="flop_profile needs a model returning one tensor of class scores.*got tuple"):
        flop_profile(Pair(), torch.rand(1, 4))
