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

__all__ = [
    "DEFAULT_SECTIONS",
    "AttributionSection",
    "CostSection",
    "MethodResult",
    "ModelSection",
    "PerformanceSection",
    "Report",
    "ReportContext",
    "ReportFiles",
    "Section",
    "Subject",
    "build_report",
    "write_report",
]
