"""predict_cost's peak memory for integrated gradients against the peak RSS the call measures.

The measurement runs in a fresh interpreter: in a long test session the allocator keeps pages freed by
earlier tests mapped, a new call reuses them, and the RSS it adds says little (a CI run measured 2.4 MiB
for a call that allocates over 20).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from xaudit.explain._cost import _can_reset_peak

_MEASURE = """
import json, torch
from xaudit.explain import IntegratedGradients
from xaudit.models import build_model
torch.set_num_threads(1)
model = build_model("cnn", (1, 32, 32), 10, seed=0, hidden=8).eval()
# 3,000 inputs of 32×32 and few steps: the 11.7 MiB of attributions returned are a third of the prediction
x = torch.rand(3000, 1, 32, 32, generator=torch.Generator().manual_seed(0))
explainer = IntegratedGradients(model, n_steps=2)
predicted = explainer.predict_cost(x)
measured = explainer.explain(x, 0).cost.peak_rss_bytes
print(json.dumps({"predicted": predicted.peak_bytes, "row_batch": predicted.row_batch, "measured": measured,
                  "result_bytes": x.numel() * 4}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(),
                    reason="needs Linux's resettable VmHWM for a per-call peak")
def test_integrated_gradients_peak_is_predicted_within_a_factor() -> None:
    out = subprocess.run([sys.executable, "-c", _MEASURE], check=True, capture_output=True, text=True, timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["predicted"] >= r["result_bytes"] + r["row_batch"] * 1024 * 4  # result and rows counted
    # measured: predicted ÷ measured 0.66 (allocator slack); leaving the attributions out gave 0.44
    assert r["measured"] / 1.9 <= r["predicted"] <= 2 * r["measured"], r
