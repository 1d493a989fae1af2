"""The explanation-quality sections: per-method quality table with verdicts, randomization curves and
method agreement; the cost/quality frontier with recommendations; samples-against-error curves.

Their numbers come from :func:`._quality_build.compute_quality` (run by the pipeline); the per-method
``quality`` objects live in report.json's ``methods`` entries (written by the cost section), the
report-wide parts in the top-level keys these sections own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import _quality_figures as figures
from ._sections import Section

if TYPE_CHECKING:
    from ._build import ReportContext

# Only ._sections (for the base class) is imported at module level, so ._sections can import this module at
# its end to list these sections in DEFAULT_SECTIONS without an import cycle.


def _scored(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [m for m in report["methods"] if m["quality"]]


class QualitySection(Section):
    """Faithfulness (deletion/insertion AUC, infidelity), robustness (max-sensitivity), the cascading
    randomization sanity check, seed stability and a verdict per method; randomization curves; agreement."""

    id = "quality"
    title = "Quality of each explanation"
    template = "quality.html.j2"

    def json_part(self, ctx: ReportContext) -> dict[str, Any]:
        q = ctx.quality
        return {"quality_config": q.get("quality_config"), "random_map": q.get("random_map"),
                "agreement": q.get("agreement")}

    def template_vars(self, ctx: ReportContext, report: Mapping[str, Any]) -> dict[str, Any]:
        scored = _scored(report)
        # a method whose trained map had no ranking has no cascade to draw (its steps are null)
        cascades = [m for m in scored
                    if any(v is not None for v in m["quality"].get("randomization_similarity") or ())]
        agreement = report["agreement"]
        return {"scored": scored,
                "randomization_uri": figures.randomization_curves(cascades) if cascades else None,
                "agreement_uri": (figures.agreement_heatmap(agreement["methods"], agreement["matrix"])
                                  if agreement else None)}


class FrontierSection(Section):
    """Cost against faithfulness with the Pareto set, and the method recommended per per-sample budget."""

    id = "frontier"
    title = "Quality against cost"
    template = "frontier.html.j2"

    def json_part(self, ctx: ReportContext) -> dict[str, Any]:
        return {"frontier": ctx.quality.get("frontier"), "recommendations": list(ctx.quality.get("recommendations", []))}

    def template_vars(self, ctx: ReportContext, report: Mapping[str, Any]) -> dict[str, Any]:
        frontier = report["frontier"]
        return {"scatter_uri": (figures.pareto_scatter(frontier["points"], frontier.get("faithful_min"))
                                if frontier else None)}


class SampleCurveSection(Section):
    """How many perturbation samples buy how much stability, for the sampling methods (LIME, Kernel SHAP)."""

    id = "sample_curves"
    title = "Samples against error"
    template = "sample_curves.html.j2"

    def json_part(self, ctx: ReportContext) -> dict[str, Any]:
        return {"sample_curves": dict(ctx.quality.get("sample_curves", {}))}

    def template_vars(self, ctx: ReportContext, report: Mapping[str, Any]) -> dict[str, Any]:
        curves = report["sample_curves"]
        return {"curves_uri": figures.sample_error_curves(curves) if curves else None}
