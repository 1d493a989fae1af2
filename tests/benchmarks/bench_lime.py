"""xaudit's `lime` against lime_image on a digits CNN: time per sample, speed ratio and deletion AUC (issue #3).

Trains a small CNN on sklearn's bundled 8×8 digits, then explains 32 test images with

- lime_image at its defaults (1000 samples, model batches of 10), one segment per pixel, the predicted
  label only (``top_labels=None``: one ridge fit, as xaudit does), and
- xaudit ``lime`` with the same features (the default grid is one pixel per segment on 8×8) and samples.

Both hide masked pixels with 0: with one-pixel segments lime_image's default ``hide_color=None`` (the
segment mean) is the pixel itself and masks nothing. Deletion AUC: mean predicted-class probability while
pixels are set to 0 most-relevant-first in 64 steps (lower = more faithful). Exits 1 if xaudit is less
than 10× faster or the AUCs differ by more than 0.02.

Run: ``python tests/benchmarks/bench_lime.py [--samples 32] [--repeats 3] [--threads N]``; times are the
best of the repeats. On a shared machine pass
``--threads 1``: two torch threads on a busy core make every small model call wait (both sides equally).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time

import lime.lime_image
import numpy as np
import torch
from torch import nn

import xaudit.explain as xe
from xaudit.explain._lime import ROWS_PER_CALL
from _digits import train_digits_cnn




def deletion_auc(model: nn.Module, images: torch.Tensor, relevance: torch.Tensor, targets: torch.Tensor,
                 steps: int = 64) -> float:
    """Mean over images of the mean target probability as pixels go to 0 most-relevant-first, 0..all removed."""
    n, d = len(images), images[0].numel()
    order = relevance.flatten(1).argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(d).expand(n, d))
    counts = torch.linspace(0, d, steps + 1).round().long()
    with torch.no_grad():
        # every step of every image in one batch: (steps+1)·n rows
        keep = rank[None] >= counts[:, None, None]
        rows = (images.flatten(1)[None] * keep).reshape(-1, *images.shape[1:])
        probs = torch.softmax(model(rows), -1).reshape(steps + 1, n, -1)
    curve = probs.gather(2, targets[None, :, None].expand(steps + 1, n, 1))[..., 0].numpy()
    return float(np.trapezoid(curve, dx=1.0 / steps, axis=0).mean())


def run_lime_image(model: nn.Module, images: torch.Tensor,
                   targets: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """lime_image's weights (spread to pixels), and its wall and CPU seconds per image."""
    segments = np.arange(64).reshape(8, 8)

    def classifier_fn(rgb: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(torch.tensor(rgb[..., 0], dtype=torch.float32).unsqueeze(1)), -1).numpy()

    explainer = lime.lime_image.LimeImageExplainer(random_state=0)
    out = torch.zeros(len(images), 64)
    start, cpu_start = time.perf_counter(), time.process_time()
    for i, image in enumerate(images):
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar, which has no off switch in 0.2.0.1
            result = explainer.explain_instance(image[0].double().numpy(), classifier_fn,
                                                labels=(int(targets[i]),), top_labels=None, hide_color=0,
                                                num_samples=1000, batch_size=10,
                                                segmentation_fn=lambda _: segments, random_seed=0)
        for feature, weight in result.local_exp[int(targets[i])]:
            out[i, feature] = weight
    n = len(images)
    return out.reshape(images.shape), (time.perf_counter() - start) / n, (time.process_time() - cpu_start) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each; the best counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model, _, x_test, accuracy = train_digits_cnn(args.epochs)
    images = x_test[:args.samples]
    with torch.no_grad():
        targets = model(images).argmax(-1)
    print(f"digits CNN: test accuracy {accuracy:.3f}; {len(images)} images; torch threads {torch.get_num_threads()}")

    explainer = xe.get_explainer("lime")(model, num_samples=1000, hide_color=0.0)
    explainer.explain(images[:1], targets[:1])  # first-call overheads, for both sides alike
    run_lime_image(model, images[:1], targets[:1])

    # best of --repeats, alternating the two so a busy spell on a shared machine hits both
    ours_s = ours_cpu_s = theirs_s = theirs_cpu_s = float("inf")
    for _ in range(args.repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        ours = explainer.explain(images, targets, seed=0)
        ours_s = min(ours_s, (time.perf_counter() - start) / len(images))
        ours_cpu_s = min(ours_cpu_s, (time.process_time() - cpu_start) / len(images))
        theirs, wall_s, cpu_s = run_lime_image(model, images, targets)
        theirs_s, theirs_cpu_s = min(theirs_s, wall_s), min(theirs_cpu_s, cpu_s)

    auc_ours = deletion_auc(model, images, ours.attributions, targets)
    auc_theirs = deletion_auc(model, images, theirs, targets)
    auc_random = deletion_auc(model, images, torch.rand_like(images), targets)
    ratio = theirs_s / ours_s
    print(f"{'':24}{'ms/sample':>10}{'CPU ms/sample':>15}{'evals/sample':>14}{'deletion AUC':>14}")
    print(f"{'lime_image (batch 10)':24}{theirs_s * 1e3:10.1f}{theirs_cpu_s * 1e3:15.1f}{1000:14d}{auc_theirs:14.3f}")
    print(f"{'xaudit lime':24}{ours_s * 1e3:10.1f}{ours_cpu_s * 1e3:15.1f}"
          f"{ours.cost.forward_evals / len(images):14.0f}{auc_ours:14.3f}")
    print(f"{'random map':24}{'':10}{'':15}{'':14}{auc_random:14.3f}")
    rows_per_call = min(ours.plan["row_batch"], ROWS_PER_CALL)
    print(f"speed ratio {ratio:.1f}× wall, {theirs_cpu_s / ours_cpu_s:.1f}× CPU (rows per call {rows_per_call}); "
          f"AUC difference {auc_ours - auc_theirs:+.3f}")

    failures = []
    if ratio < 10:
        failures.append(f"speed ratio {ratio:.1f}× is below 10×")
    if abs(auc_ours - auc_theirs) > 0.02:
        failures.append(f"deletion AUCs differ by {abs(auc_ours - auc_theirs):.3f} > 0.02")
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
