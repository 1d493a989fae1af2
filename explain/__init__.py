"""Explanations on one contract: every method returns an :class:`Explanation` with attributions and cost."""

from __future__ import annotations

from ._base import (
    CallContext,
    CostPrediction,
    Explainer,
    Explanation,
    available_methods,
    explain,
    get_explainer,
    model_guard,
)
from ._memory import DEFAULT_MEMORY_BUDGET_BYTES, parse_bytes, row_memory
from ._cost import Cost, CostMeter, energy_source_for
from ._flops import FlopProfile, flop_profile, lstm_forward_flops
from ._gradient import IntegratedGradients, Saliency

__all__ = [
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "CallContext",
    "Cost",
    "CostMeter",
    "CostPrediction",
    "Explainer",
    "Explanation",
    "FlopProfile",
    "IntegratedGradients",
    "Saliency",
    "available_methods",
    "energy_source_for",
    "explain",
    "flop_profile",
    "get_explainer",
    "lstm_forward_flops",
    "model_guard",
    "parse_bytes",
    "row_memory",
]
