"""Models that break hook-based rules (in-place, reused, functional activations), the cuDNN-RNN decision,
and the configuration errors of the gradient, CAM and occlusion methods."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xaudit.explain import check_hook_compat, explain, get_explainer
from xaudit.explain._base import needs_cudnn_rnn_workaround
from xaudit.explain._compat import hook_safe_copy
from xaudit.models._errors import XauditError


def net(relu_a: nn.Module, relu_b: nn.Module) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), relu_a, nn.Linear(8, 8), relu_b,
                             nn.Linear(8, 3)).eval()


class ReusedInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(12, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.b(self.act(self.a(x.flatten(1))))))


class FunctionalRelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.head = nn.Linear(12, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.head(F.relu(self.a(x.flatten(1)))), dim=1)


X = torch.rand(4, 4, 3, generator=torch.Generator().manual_seed(0)) - 0.3


def test_report_lists_inplace_reused_functional_and_recurrent() -> None:
    shared = nn.ReLU(inplace=True)
    report = check_hook_compat(net(shared, shared), X[:1])
    assert report.inplace == ("2",) and report.reused == {"2": 2} and not report.ok
    functional = check_hook_compat(FunctionalRelu(), X[:1])
    assert set(functional.functional) == {("relu", "FunctionalRelu"), ("log_softmax", "FunctionalRelu")}
    clean = check_hook_compat(net(nn.ReLU(), nn.ReLU()), X[:1])
    assert clean.ok and clean.probed and clean.functional == ()
    gru = nn.Sequential()
    gru.add_module("rnn", nn.GRU(3, 4, batch_first=True))
    static = check_hook_compat(gru)
    assert static.recurrent == ("rnn",) and not static.probed


@pytest.mark.parametrize("method", ["deeplift", "guided_backprop"])
def test_inplace_and_reused_activations_are_adapted_on_a_copy(method: str) -> None:
    shared = nn.ReLU(inplace=True)
    broken = net(shared, shared)
    clean = net(nn.ReLU(), nn.ReLU())
    before = copy.deepcopy(broken.state_dict())
    got = explain(broken, X, method=method, target=1).attributions
    torch.testing.assert_close(got, explain(clean, X, method=method, target=1).attributions)
    # the user's model is as it was: same (shared, in-place) module, no hooks, same weights
    assert broken[2] is broken[4] is shared and shared.inplace
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in broken.modules())
    assert all(torch.equal(v, broken.state_dict()[k]) for k, v in before.items())


class ReusedWithMaxPool(nn.Module):
    """An activation applied twice in forward, and a max-pool, which keeps DeepLift on captum's hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(12, 8), nn.Linear(4, 8), nn.Linear(8, 3)
        self.act, self.pool = nn.ReLU(), nn.MaxPool1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.b(self.pool(self.act(self.a(x.flatten(1)))[:, None])[:, 0])))


def test_reuse_inside_a_custom_forward_is_refused_with_the_fix_where_hooks_run() -> None:
    fix = r"'act' \(ReLU\) is called 2 times: use a separate nn.ReLU\(\) per call site"
    with pytest.raises(XauditError, match=fix):
        explain(ReusedWithMaxPool().eval(), X, method="deeplift")
    with pytest.raises(XauditError, match=fix):
        explain(ReusedWithMaxPool().eval(), X, method="shap_deep", background=X)


def test_guided_backprop_keeps_no_state_so_reuse_inside_forward_is_fine() -> None:
    model = ReusedInForward().eval()
    attr = explain(model, X, method="guided_backprop", target=1).attributions.flatten(1)
    w_a, w_b, w_h = model.a.weight.detach(), model.b.weight.detach(), model.head.weight.detach()
    pre_a = X.flatten(1) @ w_a.T + model.a.bias.detach()
    pre_b = pre_a.relu() @ w_b.T + model.b.bias.detach()
    guided = ((w_h[1].clamp(min=0) * (pre_b > 0)) @ w_b).clamp(min=0) * (pre_a > 0)
    torch.testing.assert_close(attr, guided @ w_a)


def test_functional_nonlinearities_are_refused_where_the_rule_needs_a_module() -> None:
    with pytest.raises(XauditError, match=r"FunctionalRelu calls (relu|log_softmax)\(\) as a function"):
        explain(FunctionalRelu().eval(), X, method="deeplift")
    with pytest.raises(XauditError, match=r"calls relu\(\) as a function"):
        explain(FunctionalRelu().eval(), X, method="guided_backprop")


class _ReluWithoutRelu(nn.Module):
    """A ReLU written as a clamp, a maximum or a threshold: the same outputs as nn.ReLU, no module to hook."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.a, self.head, self.how = nn.Linear(12, 8), nn.Linear(8, 3), how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.flatten(1))
        h = {"clamp": lambda: h.clamp(min=0), "maximum": lambda: torch.maximum(h, torch.zeros_like(h)),
             "threshold": lambda: F.threshold(h, 0.0, 0.0), "clip": lambda: torch.clip(h, min=0)}[self.how]()
        return self.head(h)


@pytest.mark.parametrize("how", ["clamp", "maximum", "threshold", "clip"])
@pytest.mark.parametrize("method", ["deeplift", "guided_backprop", "shap_deep"])
def test_a_relu_written_as_a_clamp_or_maximum_is_refused_not_silently_wrong(how: str, method: str) -> None:
    # the rule never sees it: deeplift's completeness was off by 0.085 on a digits CNN with clamp(min=0)
    torch.manual_seed(0)
    model = _ReluWithoutRelu(how).eval()
    explainer = get_explainer(method)(model)
    if explainer.needs_background:
        explainer.fit(X[:4])
    with pytest.raises(XauditError, match=rf"calls _?{how}\(\) as a function: use an activation module"):
        explainer.explain(X, 0)
    assert explain(model, X, method="saliency", target=0).attributions.shape == X.shape  # gradients are fine


def test_activations_without_a_deeplift_rule_are_refused_but_guided_backprop_runs() -> None:
    model = net(nn.GELU(), nn.ReLU())
    with pytest.raises(XauditError, match=r"deeplift has no rule for the GELU activation '2'"):
        explain(model, X, method="deeplift")
    assert torch.isfinite(explain(model, X, method="guided_backprop").attributions).all()


def test_hook_safe_copy_never_returns_the_users_modules() -> None:
    model = net(nn.ReLU(), nn.ReLU())
    safe = hook_safe_copy(model, X[:1], "deeplift")
    assert not {id(m) for m in safe.modules()} & {id(m) for m in model.modules()}


class _Gru(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0][:, -1]


def test_cudnn_rnn_workaround_decision() -> None:
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    cnn = net(nn.ReLU(), nn.ReLU())
    assert needs_cudnn_rnn_workaround(_Gru(), cuda)
    assert needs_cudnn_rnn_workaround(nn.Sequential(nn.LSTM(3, 4)), cuda)
    assert not needs_cudnn_rnn_workaround(_Gru(), cpu)
    assert not needs_cudnn_rnn_workaround(cnn, cuda)


@pytest.mark.parametrize(("model", "disabled"), [(_Gru(), True), (net(nn.ReLU(), nn.ReLU()), False)])
def test_call_guard_disables_cudnn_only_for_recurrent_models_on_cuda(model: nn.Module, disabled: bool) -> None:
    explainer = get_explainer("saliency")(model)
    outside = torch.backends.cudnn.enabled
    with explainer._call_guard(torch.device("cuda", 0), None):
        assert torch.backends.cudnn.enabled is (outside and not disabled)
        assert not model.training  # eval mode kept, no dropout: cuDNN is what gives way
    assert torch.backends.cudnn.enabled is outside
    with explainer._call_guard(torch.device("cpu"), None):
        assert torch.backends.cudnn.enabled is outside


# ------------------------------------------------------------------------------------ configuration


def test_smoothgrad_wraps_gradient_methods_only() -> None:
    model = net(nn.ReLU(), nn.ReLU())
    with pytest.raises(XauditError, match="smoothgrad wraps a gradient method"):
        get_explainer("smoothgrad")(model, base="occlusion")
    with pytest.raises(XauditError, match="did you mean 'saliency'"):
        get_explainer("smoothgrad")(model, base="salency")
    with pytest.raises(XauditError, match="n_samples must be at least 1"):
        get_explainer("smoothgrad")(model, n_samples=0)
    sg = get_explainer("smoothgrad")(_Gru(), base="deeplift")
    assert "smoothgrad over deeplift does not support recurrent models" in str(sg.unsupported_reason((5, 3)))


def test_gradcam_layer_override_and_bad_names() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(128, 3)).eval()
    x = torch.rand(2, 1, 8, 8)
    assert get_explainer("gradcam")(model).get_params()["layer"] == "2"
    first = explain(model, x, method="gradcam", layer="0", target=0)
    assert first.attributions.shape == x.shape and first.config["layer"] == "0"
    with pytest.raises(XauditError, match=r"no layer 'features.3': choose one of its conv layers \(0, 2\)"):
        get_explainer("gradcam")(model, layer="features.3")


def test_gradcam_refuses_models_without_a_conv_layer() -> None:
    explainer = get_explainer("gradcam")(net(nn.ReLU(), nn.ReLU()))
    assert "needs a convolutional layer" in str(explainer.unsupported_reason((4, 3)))


def test_occlusion_rejects_gaps_between_windows() -> None:
    with pytest.raises(XauditError, match="stride 3 is larger than the window 2"):
        get_explainer("occlusion")(net(nn.ReLU(), nn.ReLU()), window=2, stride=3)


def test_probe_leaves_batchnorm_statistics_and_train_mode_alone() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    stats = copy.deepcopy(model[2].state_dict())
    check_hook_compat(model, X[:1] + 5.0)
    assert model.training and all(torch.equal(v, model[2].state_dict()[k]) for k, v in stats.items())


def test_deeplift_rule_modules_are_captums() -> None:
    # listed in xaudit so that importing the registry does not import captum; they must stay captum's
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    from xaudit.explain._gradient import DEEPLIFT_RULES

    assert set(DEEPLIFT_RULES) == set(SUPPORTED_NON_LINEAR)


def test_guided_backprop_equals_captums() -> None:
    from captum.attr import GuidedBackprop as CaptumGuidedBackprop

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(5, 1, 6, 6)
    targets = torch.tensor([0, 1, 2, 1, 0])
    ours = explain(model, x, method="guided_backprop", target=targets).attributions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum announces its backward hooks
        theirs = CaptumGuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=targets)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-6, atol=1e-7)
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def test_rule_refusals_are_capability_reasons_said_before_running() -> None:
    # so a report lists them as unsupported (skipped by the audit), not as a method that failed on the model
    gelu = net(nn.GELU(), nn.ReLU())
    reason = get_explainer("deeplift")(gelu).unsupported_reason((4, 3))
    assert reason is not None and "no rule for the GELU activation" in reason
    functional = get_explainer("guided_backprop")(FunctionalRelu().eval()).unsupported_reason((4, 3))
    assert functional is not None and "calls relu() as a function" in functional
    assert get_explainer("deeplift")(net(nn.ReLU(), nn.ReLU())).unsupported_reason((4, 3)) is None


class _Gated(nn.Module):
    """A linear layer, then one of several operations on its activations, then a ReLU and a head."""

    def __init__(self, how: str) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            self.a, self.gate, self.head = nn.Linear(12, 8), nn.Linear(8, 8), nn.Linear(8, 3)
            self.norm = {"layernorm": nn.LayerNorm(8), "groupnorm": nn.GroupNorm(2, 8),
                         "batchnorm": nn.BatchNorm1d(8)}.get(how, nn.Identity())
        self.how, self.act, self.sig = how, nn.ReLU(), nn.Sigmoid()
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.flatten(1))
        if self.how == "se":  # squeeze-and-excitation: the activations times a gate computed from them
            h = h * self.sig(self.gate(h))
        elif self.how == "divide":
            h = h / (2.0 + self.sig(self.gate(h)).sum(1, keepdim=True))
        elif self.how == "scaled":  # products with a buffer, a constant and an input-free exp: linear in h
            h = h * self.scale * 2.0 / torch.exp(torch.ones(8))
        else:
            h = self.norm(h)
        return self.head(self.act(h))


@pytest.mark.parametrize("how, what", [("layernorm", r"layer_norm\(\) in module 'norm'"),
                                       ("groupnorm", r"group_norm\(\) in module 'norm'"),
                                       ("se", r"a product of two input-dependent tensors \(mul\)"),
                                       ("divide", r"a division by an input-dependent tensor \(div\)")])
def test_rules_that_promise_summation_refuse_operations_they_would_treat_as_linear(how: str, what: str) -> None:
    model, x = _Gated(how).eval(), torch.rand(4, 1, 3, 4)
    for method in ("deeplift", "shap_deep"):
        with pytest.raises(XauditError, match=what + r".*would not sum to the output difference\): choose "
                                                     "integrated_gradients") as err:
            explain(model, x, method, target=0, background=torch.rand(5, 1, 3, 4))
        assert "\n" not in str(err.value)
    assert check_hook_compat(model, x).unruled
    # the gradient methods have nothing to sum: they run
    assert torch.isfinite(explain(model, x, "guided_backprop", target=0).attributions).all()


@pytest.mark.parametrize("how", ["batchnorm", "scaled"])
def test_linear_operations_pass_and_the_rules_still_sum(how: str) -> None:
    model, x = _Gated(how).eval(), torch.rand(4, 1, 3, 4)
    assert not check_hook_compat(model, x).unruled
    exp = explain(model, x, "deeplift", target=0)
    assert exp.extras["convergence_delta"].abs().max() < 1e-5


def test_batch_norm_counts_as_nonlinear_only_with_batch_statistics() -> None:
    from xaudit.explain._compat import _unruled

    h = torch.rand(3, 8, requires_grad=True)
    stats = (torch.zeros(8), torch.ones(8), None, None)
    assert _unruled("batch_norm", (h, *stats, False, 0.1, 1e-5), {}) is None  # eval: running statistics, linear
    assert _unruled("batch_norm", (h, None, None, None, None, True, 0.1, 1e-5), {}) == "batch_norm with batch statistics"
    assert _unruled("batch_norm", (h.detach(), None, None, None, None, True, 0.1, 1e-5), {}) is None  # input-free


def test_the_users_backward_hooks_stay_off_the_copy_and_on_the_model() -> None:
    # captum's DeepLift (this model has max-pooling) next to a user's full backward hook on an activation gave
    # other attributions (up to 0.07 apart on a small CNN) although the hook only counts calls
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3, padding=1),
                              nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    clean = copy.deepcopy(model)
    calls = []
    handle = model[4].register_full_backward_hook(lambda *args: calls.append(1))
    x = torch.rand(5, 1, 8, 8)
    hooked, plain = explain(model, x, "deeplift", target=1), explain(clean, x, "deeplift", target=1)
    torch.testing.assert_close(hooked.attributions, plain.attributions)
    assert hooked.extras["convergence_delta"].abs().max() < 1e-4
    assert model[4]._backward_hooks and handle.id in model[4]._backward_hooks  # the user's model keeps it
    handle.remove()


class _HandMadeRelu(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(3)
            self.a, self.head = nn.Linear(12, 8), nn.Linear(8, 3)
        self.how = how
        self.register_buffer("keep", torch.tensor([1.0, 0.0] * 4) > 0)  # a fixed mask: linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x.flatten(1))
        if self.how == "mask":
            h = h * (h > 0).float()
        elif self.how == "where":
            h = torch.where(h > 0, h, 0.1 * h)
        elif self.how == "masked_fill":
            h = h.masked_fill(h < 0, 0.0)
        else:  # a padding-style mask fixed in advance
            h = h.masked_fill(~self.keep, 0.0)
        return self.head(h)


@pytest.mark.parametrize("how", ["mask", "where", "masked_fill"])
def test_a_relu_written_with_a_mask_of_the_input_is_refused(how: str) -> None:
    model, x = _HandMadeRelu(how).eval(), torch.rand(4, 1, 3, 4) - 0.5
    with pytest.raises(XauditError, match=r"a mask computed from the input \(\w+; a ReLU written by hand\?\)"):
        explain(model, x, "deeplift", target=0)


def test_a_fixed_mask_is_linear_and_passes() -> None:
    model, x = _HandMadeRelu("fixed").eval(), torch.rand(4, 1, 3, 4) - 0.5
    assert explain(model, x, "deeplift", target=0).extras["convergence_delta"].abs().max() < 1e-5


def test_method_names_forgive_spaces_and_hyphens() -> None:
    assert get_explainer("Integrated Gradients") is get_explainer("integrated_gradients")
    assert get_explainer(" input-x-gradient ") is get_explainer("input_x_gradient")
    # the usual spellings of the papers' names, with a hyphen where the registry has none, or none where it has one
    assert get_explainer("Grad-CAM") is get_explainer("gradcam")
    assert get_explainer("ShapKernel") is get_explainer("shap_kernel")
    assert get_explainer("Guided Back-prop") is get_explainer("guided_backprop")
    with pytest.raises(XauditError, match="did you mean"):
        get_explainer("grad-camm")
