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
from ._memory import DEFAULT_MEMORY_BUDGET_BYTES, memory_budget, parse_bytes, row_memory
from ._cost import Cost, CostMeter, energy_source_for
from ._flops import FlopProfile, flop_profile, lstm_forward_flops, rnn_forward_flops
from ._gradient import DeepLift, GuidedBackprop, InputXGradient, IntegratedGradients, Saliency, SmoothGrad
from ._cam import GradCAM
from ._perturbation import Occlusion
from ._compat import CompatReport, check_hook_compat
from ._shap import ShapDeep, ShapGradient
from ._shap_fast import ShapKernel, ShapPartition
from ._quality import MetricContext, MetricResult, QualityMetric, available_metrics, evaluate_quality, get_metric
from ._faithfulness import CurveResult, DeletionAUC, Infidelity, InsertionAUC, MaxSensitivity, random_map_auc
from ._sanity import AgreementResult, MethodAgreement, ModelRandomization, RandomizationResult, SeedStability
from ._sanity import StabilityResult, method_agreement
from ._frontier import Frontier, FrontierPoint, Recommendation, frontier_json, frontier_point, method_verdict
from ._frontier import pareto_frontier, quality_json, recommend, recommendations_json
from ._lime import Lime

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
    "DeepLift",
    "GuidedBackprop",
    "InputXGradient",
    "SmoothGrad",
    "GradCAM",
    "Occlusion",
    "CompatReport",
    "check_hook_compat",
    "Lime",
    "Saliency",
    "ShapDeep",
    "ShapGradient",
    "ShapKernel",
    "ShapPartition",
    "available_methods",
    "energy_source_for",
    "explain",
    "flop_profile",
    "get_explainer",
    "lstm_forward_flops",
    "rnn_forward_flops",
    "memory_budget",
    "model_guard",
    "parse_bytes",
    "row_memory",
    "MetricContext",
    "MetricResult",
    "QualityMetric",
    "available_metrics",
    "evaluate_quality",
    "get_metric",
    "CurveResult",
    "DeletionAUC",
    "Infidelity",
    "InsertionAUC",
    "MaxSensitivity",
    "random_map_auc",
    "AgreementResult",
    "MethodAgreement",
    "ModelRandomization",
    "RandomizationResult",
    "SeedStability",
    "StabilityResult",
    "method_agreement",
    "Frontier",
    "FrontierPoint",
    "Recommendation",
    "frontier_json",
    "frontier_point",
    "method_verdict",
    "pareto_frontier",
    "quality_json",
    "recommend",
    "recommendations_json",
]
