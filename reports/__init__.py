"""Reports: sections rendered into one self-contained HTML file plus report.json, and the ``xaudit`` CLI.

>>> from xaudit.reports import build_report
>>> report = build_report("cnn", "digits", methods=["saliency"], n_explain=8)
>>> report.json["metrics"]["generalization_gap"]
>>> report.write("xaudit-report")          # report.html + report.json
"""

from __future__ import annotations

from ._build import MethodResult, ReportContext
from ._report import Report, ReportFiles, build_report, write_report
from ._sections import (
    DEFAULT_SECTIONS,
    AttributionSection,
    CostSection,
    ModelSection,
    PerformanceSection,
    Section,
)
from ._subject import Subject

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
    "MethodResult",
    "ModelSection",
    "PerformanceSection",
    "Policy",
    "PolicyCheck",
    "Report",
    "ReportContext",
    "ReportFiles",
    "Section",
    "Subject",
    "audit",
    "build_report",
    "load_policy",
    "write_report",
]
