"""One-time setup (a library's import, a private model copy) happens before a call is metered: otherwise the
first method of a report paid captum's import, 4 ms per sample for a method that takes 0.03 ms."""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from xaudit.explain import Saliency
from xaudit.models import build_model


class _SlowSetup(Saliency):
    name = ""  # not registered

    def _prepare(self, sample: torch.Tensor) -> None:
        super()._prepare(sample)
        time.sleep(0.3)


def test_setup_is_not_in_the_measured_cost() -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0, hidden=4).eval()
    t0 = time.perf_counter()
    cost = _SlowSetup(model).explain(torch.rand(4, 1, 8, 8)).cost
    assert time.perf_counter() - t0 >= 0.3  # the setup ran
    assert cost.wall_s < 0.3


_PROBE = """
import sys, torch
from xaudit.explain import get_explainer
from xaudit.models import build_model
method, module = sys.argv[1], sys.argv[2]
model = build_model("cnn", (1, 8, 8), 10, seed=0, hidden=4).eval()
get_explainer(method)(model)._prepare(torch.zeros(1, 1, 8, 8))
print(module in sys.modules)
"""


def test_the_captum_methods_import_captum_in_their_setup() -> None:
    for method in ("saliency", "integrated_gradients", "input_x_gradient", "gradcam"):
        out = subprocess.run([sys.executable, "-c", _PROBE, method, "captum.attr"], check=True, capture_output=True,
                             text=True, timeout=120)
        assert out.stdout.strip().splitlines()[-1] == "True", method
