"""The overfitting section of ``xaudit report``: :func:`~xaudit.models.overfitting_diagnostics` of the audited
model as report.json's ``diagnostics`` entry, rendered as cards, the verdicts, a reliability diagram and the
weight-spectrum table. Nothing is retrained: it costs a few forward passes and one SVD per layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from xaudit.models._diagnostics import overfitting_diagnostics

from . import _sweep_figures as figures
from ._sections import Section

if TYPE_CHECKING:
    from ._build import ReportContext

# Only ._sections (for the base class) is imported at module level, so ._sections can import this module at
# its end to list OverfittingSection in DEFAULT_SECTIONS without an import cycle through ._report.


class OverfittingSection(Section):
    """The overfitting diagnostics of the audited model: gap with its verdict, what the training curves say,
    calibration with a reliability diagram, and the heavy-tail exponent of each layer's weight spectrum."""

    id = "overfitting"
    title = "Overfitting diagnostics"
    template = "overfitting.html.j2"

    def json_part(self, ctx: ReportContext) -> dict[str, Any]:
        subject = ctx.subject
        # the config lets the diagnostics rebuild the split the model was fitted on, so train accuracy is on the
        # fitted samples, not on the validation part too; the history checks that the split is this model's
        diagnostics = overfitting_diagnostics(subject.model, subject.dataset, subject.history,
                                              train_config=subject.train_config)
        return {"diagnostics": diagnostics.to_json()}

    def template_vars(self, ctx: ReportContext, report: Mapping[str, Any]) -> dict[str, Any]:
        return render_vars(report["diagnostics"])


def render_vars(diagnostics: Mapping[str, Any]) -> dict[str, Any]:
    """Template variables of the overfitting fragment for a ``diagnostics`` dict (report.json's entry)."""
    return {"diagnostics": diagnostics, "reliability_uri": figures.reliability_diagram(diagnostics["calibration"])}


def render_overfitting(diagnostics: Mapping[str, Any]) -> Markup:
    """The overfitting section's HTML fragment from report.json's ``diagnostics`` (for notebooks and tests)."""
    from ._report import _environment, json_safe

    html = _environment().get_template("overfitting.html.j2").render(**render_vars(json_safe(dict(diagnostics))))
    return Markup(html)  # noqa: S704 - produced by an autoescaping environment
