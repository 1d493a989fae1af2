"""Every explanation method called through xaudit next to its library called directly, in one run (issue #3).

Three subjects, trained for a few epochs on sklearn's bundled digits (no download): the built-in CNN
(8/16/16 channels) on 8×8 images and on the images upsampled to 32×32 (``F.interpolate``, bilinear), and
the built-in GRU (64 units) over digits-seq (8 time steps × 8 features). Both sides get the same inputs,
targets and settings. Per method: ms/sample (the whole call; median of interleaved repeats after a
warm-up, alternating which side goes first), model evaluations per sample (forward+backward, counted
through a wrapper), peak RSS (one call per side on a heap trimmed first; xaudit: ``Cost.peak_rss_bytes``,
direct: ``CostMeter`` around the call), and deletion AUC (``get_metric("deletion_auc")`` for both sides;
lower = more faithful).

Targets, each printed PASS/FAIL (exit 1 on any FAIL):

- captum's methods, as xaudit runs them (through captum, or natively where xaudit computes captum's values itself:
  deeplift on elementwise-activation models, guided_backprop, occlusion, gradcam), take ≤ 1.05× the direct captum call
  (median of per-repeat ratios);
- ``lime`` is ≥ 10× faster than ``lime_image.LimeImageExplainer().explain_instance`` at its defaults (1000
  samples, batch 10) with one segment per pixel at 8×8, and its deletion AUC is within ±0.02 of lime_image's;
- ``shap_kernel`` is ≥ 5× faster than ``shap.KernelExplainer`` at 200 coalitions over a 10-centroid k-means
  background (FIELD_NOTES' setting), same features, at 8×8 (printed with the most any method could gain:
  shap's time ÷ the time of the model evaluations alone);
- every xaudit method's wall time ≤ 1.3 × its evaluations × the batched time of one model evaluation (the
  model alone at its fastest batch size among those the call has rows for — 256 samples of a one-row method
  cannot be batched by 512 — re-timed next to every repeat: see ``EvalClock``; a backward evaluation is timed
  as forward + input-backward, a forward-only one as a forward);
- IG with 128 steps on 2,000 inputs of 32×32 stays under 1 GiB peak RSS at the default memory budget. Naive
  captum (no ``internal_batch_size``) is only run on 20 inputs and extrapolated linearly; at full size it
  needs tens of GiB (FIELD_NOTES: killed at 24 GiB). These run in fresh child processes, next to
  ``_memory.py``'s predicted peak (``Explainer.predict_cost``) for IG and for ``shap_kernel``.

Run: ``python tests/benchmarks/bench_explain.py [--threads 1] [--repeats 9] [--epochs 4] [--subjects cnn8 cnn32 gru]
[--methods saliency lime ...] [--skip-memory]`` (4-5 minutes for everything on
2 cores). One torch thread (and one BLAS thread) by default, for both sides: on a shared 2-core machine two
threads make every small model call wait on the other core. Timing targets need a quiet machine: the load
average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import shap
import torch
import torch.nn.functional as F
from captum import attr as ca
from lime.lime_image import LimeImageExplainer
from torch import nn

import xaudit.explain as xe
from xaudit.models import TrainConfig, build_model, load_dataset, train_model
from xaudit.explain._base import CountingModel
from xaudit.explain._cost import EvalCounter
from xaudit.explain._lime import grid_segments, sequence_segments
from xaudit.explain._shap_fast import feature_layout

MiB = 1024**2
GiB = 1024**3
#: Methods captum also implements (xaudit wraps it or computes its values natively): the ≤ 1.05× target applies.
CAPTUM_METHODS = ("saliency", "input_x_gradient", "integrated_gradients", "deeplift", "guided_backprop",
                  "occlusion", "smoothgrad", "gradcam")
#: xaudit settings per method, matched on the direct side (library defaults where the issue names them).
PARAMS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 50},
    "smoothgrad": {"n_samples": 25, "stdev": 0.15},
    "shap_gradient": {"nsamples": 200},
    "shap_kernel": {"nsamples": 200, "baseline": "samples"},
    "shap_partition": {"max_evals": 500},
    "lime": {"num_samples": 1000, "hide_color": 0.0},
}
#: Samples explained per method (sampling methods take seconds per sample on the direct side).
HEAVY = {"lime": 16, "shap_kernel": 16, "shap_gradient": 8, "shap_deep": 8, "shap_partition": 8}
N_LIGHT = 256
#: Fewer inputs where naive captum builds n × steps rows at once (memory), and for 32×32 sampling methods.
N_WIDE = {"integrated_gradients": 64, "smoothgrad": 64}
#: Samples where there is no like-for-like direct call (partition SHAP off 8×8).
N_NO_DIRECT = 64


# ------------------------------------------------------------------------------------------------ subjects


@dataclass
class Subject:
    """A trained model and what both sides explain it with."""

    name: str
    model: nn.Module
    x: torch.Tensor  # test inputs
    background: torch.Tensor  # 100 training inputs (gradient/deep SHAP; their mean for partition SHAP)
    centroids: torch.Tensor  # 10 k-means centroids of the training inputs (Kernel SHAP)
    accuracy: float

    @property
    def is_image(self) -> bool:
        return self.x.dim() == 4


SUBJECTS = ("cnn8", "cnn32", "gru")


def train_subjects(device: str | torch.device = "cpu", epochs: int = 4, seed: int = 0,
                   which: tuple[str, ...] = SUBJECTS) -> list[Subject]:
    """The 8×8 CNN, the 32×32 CNN and the digits-seq GRU (those named in ``which``), trained for a few
    epochs on ``device``."""
    from sklearn.cluster import KMeans

    digits, seq = load_dataset("digits", seed=seed), load_dataset("digits-seq", seed=seed)

    def up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)

    wide = dataclasses.replace(digits, name="digits-32", x_train=up(digits.x_train), x_test=up(digits.x_test))
    # 8/16/16 channels: the libraries' own overheads stay visible next to the model's, and IG on 2,000
    # inputs of 32×32 takes about a minute; the GRU has 64 hidden units
    specs = {"cnn8": ("digits CNN 8×8", digits, "cnn", 8), "cnn32": ("digits CNN 32×32", wide, "cnn", 8),
             "gru": ("digits-seq GRU 8 steps × 8", seq, "gru", 64)}
    subjects = []
    for name, data, arch, hidden in (specs[key] for key in which):
        model = build_model(arch, data.input_shape, data.n_classes, seed=seed, hidden=hidden).to(device)
        train_model(model, data, TrainConfig(epochs=epochs, lr=3e-3, seed=seed))
        model.eval()
        with torch.no_grad():
            accuracy = float((model(data.x_test.to(device)).argmax(-1).cpu() == data.y_test).float().mean())
        flat = data.x_train.reshape(data.n_train, -1).numpy()
        centroids = KMeans(10, n_init=4, random_state=seed).fit(flat).cluster_centers_
        subjects.append(Subject(name, model, data.x_test.to(device), data.x_train[:100].to(device),
                                torch.tensor(centroids, dtype=torch.float32).reshape(10, *data.input_shape)
                                .to(device), accuracy))
    return subjects


# ------------------------------------------------------------------------------------------ direct calls


#: The direct call per method: (label, call(subject, model, inputs, targets) -> input-shaped attributions).
DIRECT: dict[str, tuple[str, Callable[[Subject, nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]]] = {}


def _direct(method: str, label: str) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    def register(call: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        DIRECT[method] = (label, call)
        return call
    return register


# captum, called as a user would, with xaudit's settings
_direct("saliency", "captum Saliency")(lambda s, m, x, t: ca.Saliency(m).attribute(x, target=t, abs=True))
_direct("input_x_gradient", "captum InputXGradient")(lambda s, m, x, t: ca.InputXGradient(m).attribute(x, target=t))
_direct("deeplift", "captum DeepLift")(lambda s, m, x, t: ca.DeepLift(m).attribute(x, baselines=0.0, target=t))
_direct("guided_backprop", "captum GuidedBackprop")(lambda s, m, x, t: ca.GuidedBackprop(m).attribute(x, target=t))


@_direct("integrated_gradients", "captum IntegratedGradients")
def _captum_ig(s: Subject, m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # with the convergence delta, as xaudit returns it; no internal_batch_size, as called naively
    return ca.IntegratedGradients(m).attribute(x, baselines=0.0, target=t, n_steps=50, method="gausslegendre",
                                               return_convergence_delta=True)[0]


@_direct("occlusion", "captum Occlusion")
def _captum_occlusion(s: Subject, m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    window, strides = xe.Occlusion(s.model).geometry(x.shape[1:])
    return ca.Occlusion(m).attribute(x, sliding_window_shapes=window, strides=strides, baselines=0.0, target=t)


@_direct("smoothgrad", "captum NoiseTunnel(Saliency)")
def _captum_smoothgrad(s: Subject, m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # captum's stdev is one number: 15% of the mean per-sample value range (xaudit's is per sample)
    spread = float((x.flatten(1).amax(1) - x.flatten(1).amin(1)).mean())
    return ca.NoiseTunnel(ca.Saliency(m)).attribute(x, nt_type="smoothgrad", nt_samples=25, stdevs=0.15 * spread,
                                                     target=t)


@_direct("gradcam", "captum LayerGradCam")
def _captum_gradcam(s: Subject, m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    layer = [mod for mod in s.model.modules() if isinstance(mod, nn.Conv2d)][-1]
    cam = ca.LayerGradCam(m, layer).attribute(x, target=t, relu_attributions=True)
    return ca.LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear").expand_as(x)


# shap at its defaults, explaining every output as its API does; the target's values are kept


def _logits_fn(m: nn.Module, shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    device = next(m.parameters()).device

    def logits(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return m(torch.as_tensor(z, dtype=torch.float32, device=device).reshape(-1, *shape)).cpu().numpy()
    return logits


def _pick(values: Any, t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """shap's N×...×outputs array at each sample's target, as an input-shaped tensor."""
    v = np.asarray(values)
    return torch.tensor(v[np.arange(len(t)), ..., t.cpu().numpy()]).reshape(len(t), *shape)


@_direct("shap_gradient", "shap GradientExplainer")
def _shap_gradient(s: Subject, m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return _pick(shap.GradientExplainer(m, s.background).shap_values(x, nsamples=200, rseed=0), t, x.shape[1:])


@_direct("shap_deep", "shap DeepExplainer")
def _shap_deep(s: Subject, m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return _pick(shap.DeepExplainer(m, s.background).shap_values(x, check_additivity=False), t, x.shape[1:])


@_direct("shap_kernel", "shap KernelExplainer")
def _shap_kernel(s: Subject, m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    from shap.utils._legacy import DenseData

    shape = tuple(x.shape[1:])
    # xaudit's features, given to shap as groups of input elements
    ids = feature_layout(shape, None, None).feature_of.reshape(-1).numpy()
    groups = [np.flatnonzero(ids == k) for k in range(ids.max() + 1)]
    data = DenseData(s.centroids.reshape(10, -1).cpu().numpy(), [str(k) for k in range(len(groups))], groups)
    values = shap.KernelExplainer(_logits_fn(m, shape), data).shap_values(
        x.reshape(len(x), -1).cpu().numpy(), nsamples=200, l1_reg=False, silent=True)  # N×groups×outputs
    phi = torch.tensor(np.asarray(values)[np.arange(len(t)), :, t.cpu().numpy()])
    size = torch.bincount(torch.from_numpy(ids)).double()
    return (phi[:, ids] / size[ids]).reshape(len(x), *shape)


@_direct("shap_partition", "shap PartitionExplainer")
def _shap_partition(s: Subject, m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    hwc = x.permute(0, 2, 3, 1).cpu().numpy()
    masker = shap.maskers.Image(s.background.mean(0).permute(1, 2, 0).cpu().numpy(), shape=hwc.shape[1:])
    logits = _logits_fn(m, tuple(x.shape[1:]))
    explainer = shap.PartitionExplainer(lambda z: logits(np.moveaxis(z, -1, 1)), masker)
    out = explainer(hwc, max_evals=500, outputs=shap.Explanation.argsort.flip[:1], silent=True)
    return torch.tensor(out.values[..., 0]).permute(0, 3, 1, 2).contiguous()


def lime_features(shape: tuple[int, ...]) -> np.ndarray:
    """xaudit lime's default segments as one 2-D label map (pixels/cells of an image, time steps of a sequence)."""
    return grid_segments(*shape[1:], None) if len(shape) == 3 else np.ascontiguousarray(
        sequence_segments(*shape, "time", None))


@_direct("lime", "lime_image")
def _lime_image(s: Subject, m: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """lime_image at its defaults (1000 samples, batch 10), hide_color 0, xaudit's segments."""
    shape = tuple(x.shape[1:])
    segments = lime_features(shape)
    logits = _logits_fn(m, shape)

    def classifier_fn(rgb: np.ndarray) -> np.ndarray:
        z = logits(rgb[..., 0])
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    explainer = LimeImageExplainer(random_state=0)
    out = torch.zeros(len(x), *shape)
    for i, label in enumerate(t.tolist()):
        plane = x[i].reshape(segments.shape).double().cpu().numpy()
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar has no off switch in 0.2.0.1
            result = explainer.explain_instance(plane, classifier_fn, labels=(label,), top_labels=None, hide_color=0,
                                                num_samples=1000, batch_size=10, segmentation_fn=lambda _: segments,
                                                random_seed=0)
        weights = np.zeros(segments.max() + 1)
        for feature, weight in result.local_exp[label]:
            weights[feature] = weight
        out[i] = torch.tensor(weights[segments]).reshape(shape)
    return out


def direct_reason(s: Subject, name: str) -> str | None:
    """Why there is no like-for-like direct call for this subject, or None."""
    if name == "shap_partition" and (not s.is_image or s.x.shape[-1] != 8):
        return "shap's Image masker splits single pixels/steps, not xaudit's feature grid"
    return None


# ------------------------------------------------------------------------------------------- measurement


def _release_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so the next call's peak RSS counts its own pages."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class Side:
    """One side of one method: per-repeat seconds per sample, and one call's peak RSS, evaluations, attributions."""

    label: str
    walls: list[float] = dataclasses.field(default_factory=list)
    peak_bytes: int = 0
    evals: tuple[float, float] = (math.nan, math.nan)
    attributions: torch.Tensor | None = None
    auc: float = math.nan

    @property
    def s_per_sample(self) -> float:
        return statistics.median(self.walls) if self.walls else math.nan


def _wall(run: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def _peak(run: Callable[[], Any]) -> tuple[Any, int]:
    """(result, peak RSS bytes) of one call on a trimmed heap, measured by CostMeter around it."""
    _release_heap()
    with xe.CostMeter(1) as meter:
        out = run()
    assert meter.cost is not None
    return out, meter.cost.peak_rss_bytes


class EvalClock:
    """The batched time of one model evaluation per row: the model alone on the batch size (64 to 512 rows)
    where it runs fastest per row, forward and forward + backward to the input, parameters frozen as xaudit
    runs them. Timed again next to every repeat of a method, so a change in machine load hits the method
    and its bound alike."""

    def __init__(self, model: nn.Module, x: torch.Tensor, repeats: int = 5, max_rows: int = 512) -> None:
        self.model = model
        best = math.inf
        # the model's best batch among those the call could fill: xaudit's CPU calls take 64-512 rows, and a
        # call with fewer rows in all (256 samples, one row each) cannot batch more than it has
        sizes = [rows for rows in (64, 128, 256, 512) if rows <= max_rows] or [max_rows]
        for rows in sizes:
            self.batch = x[torch.arange(rows) % len(x)].clone()
            per_row = statistics.median(sum(self()) for _ in range(repeats))
            if per_row < best:
                best, self.rows = per_row, rows
        self.batch = x[torch.arange(self.rows) % len(x)].clone()

    def __call__(self) -> tuple[float, float]:
        with xe.model_guard(self.model):
            with torch.no_grad():
                fwd = _wall(lambda: self.model(self.batch))
            xg = self.batch.clone().requires_grad_(True)
            fb = _wall(lambda: torch.autograd.grad(self.model(xg)[:, 0].sum(), xg))
        return fwd / len(self.batch), fb / len(self.batch)


@dataclass
class Row:
    method: str
    n: int
    xaudit: Side
    direct: Side | None
    direct_label: str
    note: str = ""
    vs_direct: list[float] = dataclasses.field(default_factory=list)  # per repeat: xaudit ÷ direct
    vs_bound: list[float] = dataclasses.field(default_factory=list)  # per repeat: xaudit ÷ evaluation bound
    bounds: list[float] = dataclasses.field(default_factory=list)  # per repeat: evaluations × batched time, s
    batch_rows: int = 0  # the batch the bound's evaluation time was measured at

    @staticmethod
    def median(values: list[float]) -> float:
        return statistics.median(values) if values else math.nan


def measure_method(s: Subject, name: str, repeats: int, clocks: dict[int, EvalClock]) -> Row:
    """Both sides of one method on one subject: a warm-up, one call each on a trimmed heap for peak RSS and
    the attributions scored, then ``repeats`` timed calls each, interleaved, alternating which goes first."""
    cls = xe.get_explainer(name)
    explainer = cls(s.model, **PARAMS.get(name, {}))
    if cls.needs_background:
        explainer.fit(s.centroids if name == "shap_kernel" else s.background)
    wide = s.is_image and s.x.shape[-1] > 8
    reason = direct_reason(s, name)
    if reason:  # nothing slow to wait for on the other side
        n = N_NO_DIRECT
    elif name in HEAVY:
        n = 4 if wide else HEAVY[name]
    else:
        n = N_WIDE.get(name, N_LIGHT) if wide else N_LIGHT
    x = s.x[:n]
    with torch.no_grad():
        t = s.model(x).argmax(-1)
    label, call = DIRECT[name]
    row = Row(name, n, Side("xaudit"), None if reason else Side(label), label, reason or "")
    ours, theirs = row.xaudit, row.direct

    def run_ours() -> xe.Explanation:
        return explainer.explain(x, t, seed=0)

    def run_theirs(model: nn.Module = s.model, k: int = n) -> torch.Tensor:
        return call(s, model, x[:k], t[:k])

    # the bound's batch: at most the rows the call has in all (n samples × rows per sample)
    max_rows = n * explainer.counts_for(tuple(x.shape[1:]))[0]
    cap = max((r for r in (64, 128, 256, 512) if r <= max_rows), default=max_rows)
    if cap not in clocks:
        clocks[cap] = EvalClock(s.model, s.x, max_rows=cap)
    clock = clocks[cap]
    row.batch_rows = clock.rows
    explainer.explain(x[:2], t[:2], seed=0)  # first-call overheads; the direct side's evaluations counted here
    exp, _ = _peak(run_ours)
    ours.peak_bytes, ours.attributions = exp.cost.peak_rss_bytes, exp.attributions
    ours.evals = (exp.cost.forward_evals / n, exp.cost.backward_evals / n)
    if theirs is not None:
        counter = EvalCounter()
        run_theirs(CountingModel(s.model, counter), 2)
        theirs.evals = (counter.forward / 2, counter.backward / 2)
        out, theirs.peak_bytes = _peak(run_theirs)
        theirs.attributions = out.detach().float().cpu()
    fwd_evals, bwd_evals = ours.evals
    for r in range(repeats):
        fwd_s, fb_s = clock()
        row.bounds.append(bwd_evals * fb_s + max(fwd_evals - bwd_evals, 0.0) * fwd_s)
        if theirs is not None and r % 2:
            theirs.walls.append(_wall(run_theirs) / n)
        ours.walls.append(_wall(run_ours) / n)
        if theirs is not None and not r % 2:
            theirs.walls.append(_wall(run_theirs) / n)
        row.vs_bound.append(ours.walls[-1] / row.bounds[-1])
        if theirs is not None:
            row.vs_direct.append(ours.walls[-1] / theirs.walls[-1])
    auc = xe.get_metric("deletion_auc")()
    for side in (ours, theirs):
        if side is not None:
            scored = xe.Explanation(method=side.label, attributions=side.attributions, inputs=x.cpu(),
                                    targets=t.cpu(), config={}, cost=_ZERO)
            side.auc = auc.compute(s.model, scored).value
    return row


_ZERO = xe.Cost(n_samples=1, wall_s=0.0, cpu_s=0.0, peak_rss_bytes=0, forward_evals=0, backward_evals=0)


# ----------------------------------------------------------------------------------- memory (child runs)


def _child(mode: str, path: str) -> dict[str, Any]:
    """One memory measurement in a fresh process (a warm allocator would hide pages already mapped)."""
    saved = torch.load(path, weights_only=False)
    model, x = saved["model"], saved["x"]
    with torch.no_grad():
        t = torch.cat([model(x[i:i + 500]).argmax(-1) for i in range(0, len(x), 500)])
    if mode == "captum20":
        from captum.attr import IntegratedGradients

        t0 = time.perf_counter()
        _, peak = _peak(lambda: IntegratedGradients(model).attribute(x[:20], baselines=0.0, target=t[:20], n_steps=128))
        return {"n": 20, "peak_rss_bytes": peak, "wall_s": time.perf_counter() - t0}
    if mode == "ig":
        explainer = xe.IntegratedGradients(model, n_steps=128)
    else:
        explainer = xe.ShapKernel(model, nsamples=200, baseline="samples").fit(saved["centroids"])
        x, t = x[:16], t[:16]
    predicted = explainer.predict_cost(x)
    _release_heap()
    exp = explainer.explain(x, t)
    return {"n": len(x), "peak_rss_bytes": exp.cost.peak_rss_bytes, "predicted_peak_bytes": predicted.peak_bytes,
            "wall_s": exp.cost.wall_s, "predicted_wall_s": predicted.wall_s, "row_batch": predicted.row_batch,
            "samples_per_chunk": predicted.samples_per_chunk}


def memory_checks(s: Subject, threads: int) -> dict[str, dict[str, Any]]:
    """IG (128 steps, 2,000 inputs of 32×32) by xaudit and naive captum (20 inputs), and shap_kernel, each
    in a child process; 2,000 inputs = the 1,797 digits upsampled, then the first 203 again."""
    data = load_dataset("digits")
    every = torch.cat([data.x_train, data.x_test])
    every = F.interpolate(every, size=(32, 32), mode="bilinear", align_corners=False)
    x = torch.cat([every, every])[:2000]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "subject.pt")
        torch.save({"model": s.model, "x": x, "centroids": s.centroids}, path)
        for mode in ("ig", "captum20", "shap_kernel"):
            proc = subprocess.run([sys.executable, __file__, "--child", mode, path, "--threads", str(threads)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"memory child {mode} failed:\n{proc.stderr[-2000:]}")
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


# ------------------------------------------------------------------------------------------- reporting


def _f(v: float, fmt: str) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def print_table(s: Subject, rows: list[Row], skipped: dict[str, str], clock: EvalClock) -> None:
    fwd, fb = clock()
    print(f"\n### {s.name} (test accuracy {s.accuracy:.3f}; one model evaluation in {clock.rows}-row batches: "
          f"forward {fwd * 1e6:.1f} µs/row, forward+input-backward {fb * 1e6:.1f} µs/row)\n")
    print("| method | n | direct call | direct ms/sample | xaudit ms/sample | xaudit ÷ direct | evals/sample direct "
          "(fwd+bwd) | evals/sample xaudit (fwd+bwd) | peak RSS MiB direct | peak RSS MiB xaudit | deletion AUC "
          "direct | deletion AUC xaudit | xaudit ÷ eval bound (bound's batch) |")
    print("|" + "---|" * 13)
    for r in rows:
        d, ours = r.direct, r.xaudit
        d_evals = f"{d.evals[0]:.0f}+{d.evals[1]:.0f}" if d else "—"
        print(f"| {r.method} | {r.n} | {r.direct_label if d else 'n/a: ' + r.note} "
              f"| {_f(d.s_per_sample * 1e3 if d else math.nan, '.3f')} | {ours.s_per_sample * 1e3:.3f} "
              f"| {_f(r.median(r.vs_direct), '.2f')} | {d_evals} | {ours.evals[0]:.0f}+{ours.evals[1]:.0f} "
              f"| {_f(d.peak_bytes / MiB if d else math.nan, '.1f')} | {ours.peak_bytes / MiB:.1f} "
              f"| {_f(d.auc if d else math.nan, '.3f')} | {ours.auc:.3f} | {r.median(r.vs_bound):.2f} ({r.batch_rows}) |")
    for name, reason in skipped.items():
        print(f"| {name} | — | unsupported: {reason} |" + " — |" * 10)


@dataclass
class Target:
    text: str
    passed: bool


def row_targets(s: Subject, rows: list[Row]) -> list[Target]:
    out = []
    small = s.is_image and s.x.shape[-1] == 8
    for r in rows:
        ours, d = r.xaudit, r.direct
        bound = r.median(r.vs_bound)
        out.append(Target(f"{s.name}: {r.method} wall {bound:.2f}× evaluations × batched evaluation time (≤ 1.3)",
                          bound <= 1.3))
        if d is None:
            continue
        ratio = r.median(r.vs_direct)
        if r.method in CAPTUM_METHODS:
            out.append(Target(f"{s.name}: {r.method} xaudit {ratio:.3f}× direct captum (≤ 1.05)", ratio <= 1.05))
        if small and r.method == "lime":
            out.append(Target(f"{s.name}: lime {1 / ratio:.1f}× faster than lime_image (≥ 10)", 1 / ratio >= 10))
            out.append(Target(f"{s.name}: lime deletion AUC {ours.auc:.3f} vs lime_image {d.auc:.3f} "
                              f"(|Δ| {abs(ours.auc - d.auc):.3f} ≤ 0.02)", abs(ours.auc - d.auc) <= 0.02))
        if small and r.method == "shap_kernel":
            # the model evaluations alone bound any speed-up: shap's time ÷ (evaluations × batched evaluation time)
            limit = r.median([w / b for w, b in zip(d.walls, r.bounds)])
            out.append(Target(f"{s.name}: shap_kernel {1 / ratio:.1f}× faster than KernelExplainer (≥ 5; its "
                              f"{ours.evals[0]:.0f} model rows/sample alone take {r.median(r.bounds) * 1e3:.1f} ms "
                              f"batched, so at most {limit:.1f}× is possible)", 1 / ratio >= 5))
    return out


def memory_targets(mem: dict[str, dict[str, Any]]) -> list[Target]:
    ig, naive, kernel = mem["ig"], mem["captum20"], mem["shap_kernel"]
    naive_full = naive["peak_rss_bytes"] * 2000 / naive["n"]

    def measured_predicted(m: dict[str, Any]) -> str:
        ratio = m["predicted_peak_bytes"] / max(m["peak_rss_bytes"], 1)
        return f"{m['peak_rss_bytes'] / MiB:.1f} MiB | {m['predicted_peak_bytes'] / MiB:.1f} MiB | {ratio:.2f}"

    print("\n### Memory: digits CNN 32×32 (a fresh process per row; predicted: Explainer.predict_cost().peak_bytes)\n")
    print("| call | inputs | measured peak RSS | predicted peak | predicted ÷ measured | wall s |")
    print("|---|---|---|---|---|---|")
    print(f"| xaudit integrated_gradients, 128 steps, default budget (row batch {ig['row_batch']}, "
          f"{ig['samples_per_chunk']} samples/chunk) | {ig['n']} | {measured_predicted(ig)} "
          f"| {ig['wall_s']:.1f} (predicted {ig['predicted_wall_s']:.1f}) |")
    print(f"| captum IntegratedGradients, 128 steps, no internal_batch_size | {naive['n']} "
          f"| {naive['peak_rss_bytes'] / MiB:.1f} MiB | — | — | {naive['wall_s']:.1f} |")
    print(f"| ↳ extrapolated linearly to 2,000 inputs (estimate, not run) | 2000 | ≈ {naive_full / GiB:.1f} GiB "
          "| — | — | — |")
    print(f"| xaudit shap_kernel, 200 coalitions × 10 centroids (row batch {kernel['row_batch']}) | {kernel['n']} "
          f"| {measured_predicted(kernel)} | {kernel['wall_s']:.1f} |")
    print(f"\nThe prediction covers the rows in flight and the attributions returned "
          f"({ig['n'] * 32 * 32 * 4 / MiB:.1f} MiB for IG's 2,000 inputs).")
    return [Target(f"IG 128 steps on 2,000 inputs of 32×32: peak RSS {ig['peak_rss_bytes'] / GiB:.3f} GiB (< 1 GiB; "
                   f"naive captum ≈ {naive_full / GiB:.1f} GiB estimated)", ig["peak_rss_bytes"] < GiB)]


def _load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads, both sides (default 1)")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved timed runs of captum-wrapped methods")
    parser.add_argument("--heavy-repeats", type=int, default=3, help="timed runs of the sampling methods")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--methods", nargs="*", default=None, help="a subset of the registered methods")
    parser.add_argument("--subjects", nargs="*", default=list(SUBJECTS), choices=SUBJECTS,
                        help="a subset of the subjects (default: all)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the child-process memory checks")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    warnings.filterwarnings("ignore")  # captum's per-call "requires_grad" and hook notices, both sides
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0

    start = time.perf_counter()
    print(f"# xaudit vs direct library calls — torch {torch.__version__}, {args.threads} torch/BLAS thread(s), "
          f"{os.cpu_count()} cores; load average at start {_load_average()}")
    subjects = train_subjects(epochs=args.epochs, which=tuple(args.subjects))
    methods = args.methods or list(xe.available_methods())
    targets: list[Target] = []
    for s in subjects:
        clocks = {512: EvalClock(s.model, s.x)}
        rows, skipped = [], {}
        for name in methods:
            reason = xe.get_explainer(name)(s.model, **PARAMS.get(name, {})).unsupported_reason(tuple(s.x.shape[1:]))
            if reason:
                skipped[name] = reason
                continue
            repeats = args.repeats if name in CAPTUM_METHODS else args.heavy_repeats
            rows.append(measure_method(s, name, repeats, clocks))
        print_table(s, rows, skipped, clocks[512])
        targets += row_targets(s, rows)
    if not args.skip_memory:
        wide = ([s for s in subjects if s.is_image and s.x.shape[-1] == 32]
                or train_subjects(epochs=args.epochs, which=("cnn32",)))
        targets += memory_targets(memory_checks(wide[0], args.threads))
    print("\n### Targets\n")
    for target in targets:
        print(f"- {'PASS' if target.passed else 'FAIL'}: {target.text}")
    failed = sum(not t.passed for t in targets)
    print(f"\n{len(targets) - failed}/{len(targets)} targets pass; {time.perf_counter() - start:.0f} s; "
          f"load average at end {_load_average()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
