"""Reports: sections rendered into one self-contained HTML file plus report.json, and the ``xaudit`` CLI.

>>> from xaudit.reports import audit, build_report
>>> report = build_report("cnn", "digits", methods=["saliency"], n_explain=8)
>>> report.json["metrics"]["generalization_gap"]
>>> report.write("xaudit-report")          # report.html + report.json
>>> audit(report).passed                   # the default release policy (reports/policies/default.toml)
"""

from __future__ import annotations

from ._build import MethodResult, ReportContext
from ._report import Report, ReportFiles, build_report, write_report
from ._sections import (
    DEFAULT_SECTIONS,
    AttributionSection,
    CostSection,
    MeasurementSection,
    ModelSection,
    PerformanceSection,
    Section,
)
from ._subject import Subject
from ._overfit_section import OverfittingSection
from ._quality_sections import FrontierSection, QualitySection, SampleCurveSection
from ._summary_section import SummarySection, summarize
from ._drift import ExplanationDrift, explanation_drift
from ._sweep_report import SweepFiles, SweepReport, write_sweep_report

# after ._sections, which may import ._audit at its end (DEFAULT_SECTIONS): importing ._audit first would
# enter ._sections while ._audit is half-initialized
from ._audit import AuditCheck, AuditResult, AuditSection, audit
from ._audit_policy import Policy, PolicyCheck, load_policy

__all__ = [
    "DEFAULT_SECTIONS",
    "AttributionSection",
    "AuditCheck",
    "AuditResult",
    "AuditSection",
    "CostSection",
    "ExplanationDrift",
    "FrontierSection",
    "MeasurementSection",
    "MethodResult",
    "ModelSection",
    "OverfittingSection",
    "PerformanceSection",
    "Policy",
    "PolicyCheck",
    "Report",
    "ReportContext",
    "ReportFiles",
    "QualitySection",
    "SampleCurveSection",
    "Section",
    "Subject",
    "SummarySection",
    "SweepFiles",
    "SweepReport",
    "audit",
    "build_report",
    "explanation_drift",
    "load_policy",
    "summarize",
    "write_report",
    "write_sweep_report",
]
