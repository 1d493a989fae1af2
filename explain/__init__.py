"""Explanations on one contract: every method returns an :class:`Explanation` with attributions and cost."""

from __future__ import annotations

from ._base import Explainer, Explanation, available_methods, explain, get_explainer, model_guard
from ._cost import Cost, CostMeter, energy_source_for
from ._flops import FlopProfile, flop_profile, lstm_forward_flops
from ._gradient import IntegratedGradients, Saliency

__all__ = [
    "Cost",
    "CostMeter",
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
]
