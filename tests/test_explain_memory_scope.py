"""The memory budget as a scope (``xaudit.explain.memory_budget``): calls inside a block default to its budget,
and a report's quality metrics, which re-run methods without a budget argument, keep to --memory-budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from xaudit.explain import Explainer, explain, memory_budget
from xaudit.explain._memory import current_budget
from xaudit.models import Dataset, build_model
from xaudit.reports import _quality_build, build_report


def test_the_memory_budget_holds_for_the_quality_re_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the sanity cascade, seed stability and sensitivity re-run the method without a budget argument: they
    # must plan under the report's --memory-budget, not the 2 GiB default
    budgets: list[int] = []
    plan = Explainer._plan

    def spy(self: Explainer, inputs: torch.Tensor, batch_size: Any, memory_budget: Any) -> Any:
        budgets.append(current_budget(memory_budget))
        return plan(self, inputs, batch_size, memory_budget)

    monkeypatch.setattr(Explainer, "_plan", spy)
    monkeypatch.setenv("XAUDIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(_quality_build, "EXPENSIVE_SUBSET", 2)
    monkeypatch.setattr(_quality_build, "METRIC_PARAMS", {"max_sensitivity": {"n_perturb_samples": 2}})
    g = torch.Generator().manual_seed(0)
    data = Dataset(name="tiny", kind="image", x_train=torch.rand(12, 1, 8, 8, generator=g),
                   y_train=torch.arange(12) % 3, x_test=torch.rand(4, 1, 8, 8, generator=g),
                   y_test=torch.arange(4) % 3, class_names=("a", "b", "c"))
    build_report(build_model("cnn", data.input_shape, 3, seed=0), data, methods=["saliency"], n_explain=3,
                 memory_budget="48MiB")
    assert len(budgets) > 4  # the explanation, its warm-up, and the metrics' re-runs
    assert set(budgets) == {48 * 1024**2}


def test_a_memory_budget_block_is_the_default_for_calls_inside_it() -> None:
    model = build_model("cnn", (1, 8, 8), 3, seed=0)
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    default = explain(model, x, method="saliency").plan
    explicit = explain(model, x, method="saliency", memory_budget="1MiB").plan
    assert explicit["row_batch"] < default["row_batch"]
    with memory_budget("1MiB"):
        assert explain(model, x, method="saliency").plan == explicit
        # an explicit argument still wins inside the block
        assert explain(model, x, method="saliency", memory_budget="2GiB").plan == default
    assert explain(model, x, method="saliency").plan == default  # the block's budget ends with it


def test_memory_sizes_read_binary_and_decimal_units_as_written() -> None:
    from xaudit.explain._memory import parse_bytes

    assert parse_bytes("2GiB") == parse_bytes("2g") == parse_bytes("2 G") == 2 * 2**30
    assert parse_bytes("1.5GB") == 1_500_000_000  # SI: a budget must not come out 7% larger than written
    assert parse_bytes("512MiB") == 512 * 2**20 and parse_bytes("500MB") == 500_000_000
    assert parse_bytes("64kB") == 64_000 and parse_bytes("64KiB") == 65_536
    assert parse_bytes(4096) == parse_bytes("4096") == 4096
