"""Constructor arguments of the explanation methods: a wrongly typed or unsupported value is a one-line XauditError
naming the parameter, raised at construction (or, where only the input tells, before the call runs), and the forms
captum users pass that are supported (IG's quadrature, per-dimension occlusion windows, a one-element baseline
tensor, a Grad-CAM layer module) give what captum gives."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from captum.attr import DeepLift as CaptumDeepLift
from captum.attr import GuidedBackprop as CaptumGuidedBackprop
from captum.attr import IntegratedGradients as CaptumIntegratedGradients
from captum.attr import LayerAttribution, LayerGradCam
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

from xaudit.explain import explain, get_explainer
from xaudit.models._errors import XauditError


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def cnn(act: type[nn.Module] = nn.ReLU, channels: int = 1, side: int = 8, pool: bool = False) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layers: list[nn.Module] = [nn.Conv2d(channels, 4, 3, padding=1), act()]
        if pool:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * side * side, 5)).eval()


class SeqNet(nn.Module):
    """A 1-D CNN over N×T×F sequences (features as channels)."""

    def __init__(self, features: int = 3, classes: int = 4) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.conv = nn.Conv1d(features, 6, 3, padding=1)
            self.act = nn.ReLU()
            self.head = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x.transpose(1, 2))).mean(2))


def refused(method: str, match: str, model: nn.Module | None = None, /, **params: Any) -> str:
    """The one-line XauditError that constructing ``method`` with ``params`` raises."""
    with pytest.raises(XauditError, match=match) as err:
        get_explainer(method)(cnn() if model is None else model, **params)
    assert "\n" not in str(err.value)
    return str(err.value)


# ------------------------------------------------------------------------------------------------ baselines


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift", "occlusion"])
@pytest.mark.parametrize(("baseline", "match"), [
    (torch.zeros(1, 1, 8, 8), r"baseline must be one number, the value every input element is set to, got a Tensor "
                              r"of shape \(1, 1, 8, 8\); it holds only 0.0: pass baseline=0.0"),
    (rand(1, 1, 8, 8), r"baseline must be one number.*per-element baselines \(captum's baselines tensor\) are not "
                       r"supported"),
    (np.zeros((2, 2)), r"baseline must be one number.*ndarray of shape \(2, 2\)"),
    ("black", r"baseline must be one finite number.*got 'black'"),
    (float("nan"), r"baseline must be one finite number"),
    (True, r"baseline must be one finite number"),
    ([0.0], r"baseline must be one finite number"),
])
def test_a_baseline_that_is_not_one_number_is_refused_at_construction(method: str, baseline: Any,
                                                                        match: str) -> None:
    message = refused(method, match, baseline=baseline)
    assert message.startswith(f"{method} baseline")


@pytest.mark.parametrize("baseline", [torch.tensor(0.25), torch.full((1, 1, 1, 1), 0.25), np.float32(0.25),
                                      np.array([0.25])])
def test_a_one_element_baseline_is_that_number_as_captum_takes_it(baseline: Any) -> None:
    model, x, targets = cnn(), rand(3, 1, 8, 8), torch.tensor([0, 3, 1])
    ig = get_explainer("integrated_gradients")(model, n_steps=16, baseline=baseline)
    assert ig.get_params()["baseline"] == 0.25 and isinstance(ig.get_params()["baseline"], float)
    exp = ig.explain(x, targets)
    theirs = CaptumIntegratedGradients(model).attribute(x, baselines=0.25, target=targets, n_steps=16)
    torch.testing.assert_close(exp.attributions, theirs, rtol=1e-5, atol=1e-6)
    ours = explain(model, x, "deeplift", targets, baseline=baseline).attributions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # captum announces its hooks
        theirs = CaptumDeepLift(model).attribute(x.clone().requires_grad_(True), baselines=0.25, target=targets)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ integrated gradients' quadrature


def test_the_quadratures_are_captums() -> None:
    from captum.attr._utils.approximation_methods import SUPPORTED_METHODS

    from xaudit.explain._gradient import QUADRATURES

    assert set(QUADRATURES) == set(SUPPORTED_METHODS)


def test_an_unknown_quadrature_is_refused_at_construction_with_did_you_mean() -> None:
    refused("integrated_gradients", r"unknown integrated_gradients quadrature 'riemann_trapezium': did you mean "
                                    r"'riemann_trapezoid'\? choose one of gausslegendre, riemann_left",
            quadrature="riemann_trapezium")
    refused("integrated_gradients", r"unknown integrated_gradients quadrature 'simpson'", quadrature="simpson")


def test_the_old_keyword_method_points_to_quadrature() -> None:
    # method= collides with explain(model, x, method=...); the constructor says where the setting went
    refused("integrated_gradients", r"quadrature=, not method=.*pass quadrature='simpson'", method="simpson")
    refused("integrated_gradients", r"pass quadrature='riemann_left'", method="riemann_left")


@pytest.mark.parametrize("quadrature", ["riemann_trapezoid", "riemann_left", "gausslegendre"])
def test_the_quadrature_is_set_through_explain_and_equals_captums_method(quadrature: str) -> None:
    model, x, targets = cnn(), rand(3, 1, 8, 8), torch.tensor([4, 0, 2])
    exp = explain(model, x, "integrated_gradients", targets, n_steps=12, quadrature=quadrature)
    theirs = CaptumIntegratedGradients(model).attribute(x, baselines=0.0, target=targets, n_steps=12,
                                                        method=quadrature)
    torch.testing.assert_close(exp.attributions, theirs, rtol=1e-5, atol=1e-6)
    assert exp.config == {"n_steps": 12, "quadrature": quadrature, "baseline": 0.0}
    assert exp.to_dict()["settings"]["quadrature"] == quadrature and "method" not in exp.to_dict()["settings"]
    # report code rebuilds a method from get_params
    again = get_explainer("integrated_gradients")(model, **exp.config)
    assert again.get_params() == exp.config


def test_smoothgrad_passes_the_quadrature_to_integrated_gradients() -> None:
    exp = explain(cnn(), rand(2, 1, 8, 8), "smoothgrad", base="integrated_gradients", n_steps=4, n_samples=2,
                  quadrature="riemann_middle")
    assert exp.config["base_params"]["quadrature"] == "riemann_middle"


# --------------------------------------------------------------------------------------- integer params


@pytest.mark.parametrize(("method", "param", "value", "match"), [
    ("integrated_gradients", "n_steps", 2.5, r"n_steps must be an integer of at least 1, got 2.5: pass e.g. "
                                             r"n_steps=50"),
    ("integrated_gradients", "n_steps", "8", r"n_steps must be an integer.*got '8'"),
    ("integrated_gradients", "n_steps", True, r"n_steps must be an integer.*got True"),
    ("integrated_gradients", "n_steps", 8.0, r"n_steps must be an integer.*got 8.0"),
    ("smoothgrad", "n_samples", 2.5, r"n_samples must be an integer of at least 1, got 2.5"),
    ("smoothgrad", "stdev", "0.1", r"stdev must be a finite number of at least 0, got '0.1'"),
    ("shap_gradient", "nsamples", 100.5, r"nsamples must be an integer of at least 1, got 100.5"),
    ("shap_gradient", "nsamples", "50", r"nsamples must be an integer of at least 1, got '50'"),
    ("shap_gradient", "local_smoothing", "a", r"local_smoothing must be a finite number of at least 0"),
    ("shap_kernel", "nsamples", 100.5, r"nsamples must be an integer >= 2 .*got 100.5"),
    ("shap_kernel", "nsamples", "many", r"nsamples must be an integer >= 2 .*got 'many'"),
    ("shap_kernel", "time_window", 2.0, r"time_window must be a positive integer .*got 2.0"),
    ("shap_kernel", "feature_grid", (2.5, 2), r"feature_grid must be two positive integers .*got \(2.5, 2\)"),
    ("shap_kernel", "feature_grid", "2x2", r"feature_grid must be two positive integers .*got '2x2'"),
    ("shap_kernel", "baseline", torch.zeros(3, 3), r"baseline must be one of mean, samples, got a Tensor of shape "
                                                   r"\(3, 3\)"),
    ("shap_partition", "max_evals", 100.5, r"max_evals must be an integer >= 4, got 100.5"),
    ("occlusion", "window", 2.5, r"occlusion window must be a positive integer, or \(height, width\) for images, "
                                 r"got 2.5"),
    ("occlusion", "stride", 1.5, r"occlusion stride must be a positive integer"),
])
def test_non_integers_and_wrong_types_are_refused_at_construction(method: str, param: str, value: Any,
                                                                  match: str) -> None:
    refused(method, match, **{param: value})


def test_numpy_integers_are_integers() -> None:
    model, x = cnn(), rand(2, 1, 8, 8)
    ig = get_explainer("integrated_gradients")(model, n_steps=np.int64(8))
    assert ig.n_steps == 8 and type(ig.n_steps) is int
    assert get_explainer("shap_kernel")(model, nsamples=np.int32(64)).nsamples == 64
    occ = get_explainer("occlusion")(model, window=np.int64(3), stride=(np.int16(1), 2))
    assert occ.get_params()["window"] == 3 and occ.get_params()["stride"] == (1, 2)
    assert explain(model, x, "smoothgrad", n_samples=np.int8(2)).attributions.shape == x.shape


# ------------------------------------------------------------------------------------- occlusion windows


@pytest.mark.parametrize(("window", "stride"), [((2, 3), (1, 2)), ((3, 1), (3, 1)), ((4, 2), None), (3, (1, 2)),
                                                ((2, 5), 2)])
def test_a_rectangular_window_equals_captums_occlusion(window: Any, stride: Any) -> None:
    model, x, targets = cnn(channels=2, side=8), rand(3, 2, 8, 8), torch.tensor([0, 4, 2])
    exp = explain(model, x, "occlusion", targets, window=window, stride=stride)
    sides = window if isinstance(window, tuple) else (window, window)
    steps = (stride if isinstance(stride, tuple) else (stride, stride)) if stride is not None else \
        tuple(max(1, s // 2) for s in sides)
    # captum's shapes carry the channel entry: all channels at once
    theirs = CaptumOcclusion(model).attribute(x, sliding_window_shapes=(2, *sides), strides=(2, *steps),
                                              baselines=0.0, target=targets)
    torch.testing.assert_close(exp.attributions, theirs, rtol=1e-5, atol=1e-6)
    assert exp.settings["window"] == "×".join(map(str, sides)) and exp.settings["stride"] == "×".join(map(str, steps))
    n_windows = np.prod([(8 - w + s - 1) // s + 1 for w, s in zip(sides, steps)])
    assert exp.cost.forward_evals == len(x) * (n_windows + 1)


def test_a_square_window_as_a_pair_is_the_same_as_one_number() -> None:
    model, x = cnn(), rand(2, 1, 8, 8)
    pair = explain(model, x, "occlusion", 1, window=(2, 2), stride=(1, 1)).attributions
    torch.testing.assert_close(pair, explain(model, x, "occlusion", 1, window=2, stride=1).attributions)


def test_a_sequence_window_as_one_entry_equals_captums_occlusion() -> None:
    model, x, targets = SeqNet(), rand(3, 20, 3), torch.tensor([0, 3, 1])
    exp = explain(model, x, "occlusion", targets, window=(4,), stride=(3,))
    theirs = CaptumOcclusion(model).attribute(x, sliding_window_shapes=(4, 3), strides=(3, 3), baselines=0.0,
                                              target=targets)
    torch.testing.assert_close(exp.attributions, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(exp.attributions,
                               explain(model, x, "occlusion", targets, window=4, stride=3).attributions)


def test_get_params_rebuilds_a_tuple_window() -> None:
    occ = get_explainer("occlusion")(cnn(), window=[2, 3], stride=(1, 2))
    params = occ.get_params()
    assert params["window"] == (2, 3) and params["stride"] == (1, 2)
    again = get_explainer("occlusion")(cnn(), **params)
    assert again.geometry((1, 8, 8)) == occ.geometry((1, 8, 8)) == ((1, 2, 3), (1, 1, 2))


@pytest.mark.parametrize(("params", "match"), [
    ({"window": "3", "stride": 2}, r"occlusion window must be a positive integer.*got '3'"),
    ({"window": (2, 2.5)}, r"occlusion window must be a positive integer.*got \(2, 2.5\)"),
    ({"window": (1, 2, 2)}, r"occlusion window \(1, 2, 2\) has an entry per input dimension, as captum's, but the "
                            r"channels are always occluded together here: give \(height, width\), e.g. "
                            r"window=\(2, 2\)"),
    ({"stride": (1, 2, 3, 4)}, r"occlusion stride must be a positive integer"),
    ({"window": (0, 2)}, r"occlusion window must be at least 1, got \(0, 2\)"),
    ({"window": (2, 2), "stride": (1, 3)}, r"occlusion stride \(1, 3\) is larger than the window \(2, 2\)"),
    ({"window": 2, "stride": (1, 3)}, r"occlusion stride \(1, 3\) is larger than the window 2"),
    ({"window": (2, 2), "stride": (1,)}, r"occlusion window \(2, 2\) and stride \(1,\) have different numbers of "
                                         r"entries"),
])
def test_bad_windows_are_refused_at_construction(params: dict[str, Any], match: str) -> None:
    refused("occlusion", match, **params)


def test_a_window_for_the_other_kind_of_input_is_refused_before_running() -> None:
    with pytest.raises(XauditError, match=r"occlusion window \(2, 2\) does not fit sequence inputs: for sequences "
                                          r"it is one number or \(steps,\) \(the features are occluded together\)"):
        explain(SeqNet(), rand(2, 20, 3), "occlusion", window=(2, 2))
    with pytest.raises(XauditError, match=r"occlusion stride \(2,\) does not fit image inputs: for images it is one "
                                          r"number or \(height, width\)"):
        explain(cnn(), rand(2, 1, 8, 8), "occlusion", stride=(2,))


# --------------------------------------------------------------------------------------- guided backprop


@pytest.mark.parametrize("act", [nn.GELU, nn.SiLU, nn.Tanh, nn.ELU])
def test_guided_backprop_refuses_models_without_a_relu_as_a_capability(act: type[nn.Module]) -> None:
    model, x = cnn(act), rand(2, 1, 8, 8)
    explainer = get_explainer("guided_backprop")(model)
    reason = explainer.unsupported_reason((1, 8, 8))
    assert reason is not None and f"this model has none (its activations are {act.__name__})" in reason
    with pytest.raises(XauditError, match=r"guided_backprop changes the backward pass of nn.ReLU modules only .* "
                                          r"plain gradient under another name: choose saliency with abs=False"):
        explainer.explain(x)


def test_guided_backprop_refuses_a_model_without_activations() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    reason = get_explainer("guided_backprop")(model).unsupported_reason((1, 8, 8))
    assert reason is not None and "(it has no activation modules)" in reason


def test_guided_backprop_runs_with_one_relu_among_other_activations_and_equals_captums() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                              nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    x, targets = rand(3, 1, 8, 8), torch.tensor([1, 0, 4])
    explainer = get_explainer("guided_backprop")(model)
    assert explainer.unsupported_reason((1, 8, 8)) is None
    ours = explainer.explain(x, targets).attributions
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = CaptumGuidedBackprop(model).attribute(x.clone().requires_grad_(True), target=targets)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------- shap_deep in bfloat16


def test_shap_deep_refuses_bfloat16_on_shaps_path_as_a_capability() -> None:
    model = cnn(pool=True).to(torch.bfloat16)  # max-pooling: shap's DeepExplainer, which converts to numpy
    explainer = get_explainer("shap_deep")(model).fit(rand(4, 1, 8, 8).to(torch.bfloat16))
    reason = explainer.unsupported_reason((1, 8, 8))
    assert reason is not None and "numpy has no bfloat16: use model.float()" in reason
    with pytest.raises(XauditError, match=r"shap's DeepExplainer, which converts outputs to numpy, and numpy has no "
                                          r"bfloat16") as err:
        explainer.explain(rand(2, 1, 8, 8).to(torch.bfloat16))
    assert "\n" not in str(err.value)


def test_shap_deep_in_bfloat16_still_runs_natively_and_float16_through_shap() -> None:
    native = cnn().to(torch.bfloat16)  # elementwise activations only: no numpy on the way
    x, background = rand(2, 1, 8, 8), rand(4, 1, 8, 8)
    exp = explain(native, x.to(torch.bfloat16), "shap_deep", background=background.to(torch.bfloat16))
    assert torch.isfinite(exp.attributions).all()
    pooled = cnn(pool=True).half()
    assert get_explainer("shap_deep")(pooled).unsupported_reason((1, 8, 8)) is None


# -------------------------------------------------------------------------------------------- gradcam


def test_gradcam_takes_the_layer_module_and_stores_its_name() -> None:
    model, x, targets = cnn(), rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
    explainer = get_explainer("gradcam")(model, layer=model[0])
    assert explainer.get_params()["layer"] == "0"
    ours = explainer.explain(x, targets).attributions
    cam = LayerGradCam(model, model[0]).attribute(x.clone().requires_grad_(True), target=targets,
                                                  relu_attributions=True)
    theirs = LayerAttribution.interpolate(cam, (8, 8), interpolate_mode="bilinear").expand_as(x)
    torch.testing.assert_close(ours, theirs.detach(), rtol=1e-5, atol=1e-6)


def test_gradcam_refuses_a_module_of_another_model_and_other_types() -> None:
    model = cnn()
    refused("gradcam", r"gradcam's layer is a Conv2d that is not part of this model: pass the name of one of its "
                       r"conv layers \(0\)", model, layer=nn.Conv2d(1, 4, 3))
    refused("gradcam", r"gradcam's layer must be a layer name .* or the layer module, got int: pass e.g. layer='0'",
            model, layer=0)


def test_gradcam_on_a_layer_without_feature_maps_names_that_layers_output_shape() -> None:
    model = cnn()
    with pytest.raises(XauditError, match=r"gradcam needs feature maps \(channels × positions\) from its layer, but "
                                          r"'3' outputs shape \(5,\) per sample: pick a conv layer") as err:
        explain(model, rand(2, 1, 8, 8), "gradcam", layer="3")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [2.5, "1000", 1])
def test_lime_sample_count_error_names_the_parameter_in_its_fix(bad: Any) -> None:
    with pytest.raises(XauditError, match=r"num_samples must be .*: pass e\.g\. num_samples=1000$"):
        get_explainer("lime")(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), num_samples=bad)
