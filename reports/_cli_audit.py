"""``xaudit audit``: compute a report (or read a report.json) and pass or fail it against a policy, for CI.

Exit codes: 0 when every check passes, 1 when the audit fails, 2 for a usage error (a bad policy file, a
path that names nothing in report.json, an unreadable ``--report``...), which follows the CLI's contract:
one line ``xaudit: error: ...`` and nothing written. The policy is read and validated before any training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from xaudit.models._errors import XauditError

from ._atomic import atomic_write_text, prepare_out_dir, prepare_out_file
from ._audit import AuditSection, audit
from ._audit_policy import load_policy
from ._cli import REPORT_FILES, _cleanup_on_failure, _printer, add_report_options, report_context
from ._report import Report, write_report
from ._sections import DEFAULT_SECTIONS, Section

_EPILOG = """\
exit codes: 0 the audit passed, 1 it failed, 2 usage error (bad policy, bad path, bad option)

examples:
  xaudit audit                                      # default policy on the built-in cnn on digits
  xaudit audit --policy policy.toml --model model.pt --junit audit.xml
  xaudit audit --report xaudit-report/report.json --policy policy.toml   # no recomputation
  xaudit audit --policy policy.toml --out xaudit-report                  # also write the report

policy.toml:
  name = "release gate"
  [[check]]
  name = "test accuracy"
  value = "metrics.test_accuracy"          # a report.json path
  min = 0.95                               # or max = ..., or equals = ...
  [[check]]
  value = "methods[integrated_gradients].quality.sanity_passed"
  equals = true
  [[check]]
  value = "methods[*].cost.wall_s_per_sample"   # one check per method
  max = 0.5
"""


def add_audit_parser(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``audit`` to an ``add_subparsers()`` object, with ``common`` (the model and run options) as a parent."""
    parser = subparsers.add_parser(
        "audit", parents=[common], help="pass or fail a model against a policy (exit code 0/1, JUnit XML)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Compute the report of `xaudit report` (or read an existing report.json with --report), check "
                    "its values against the thresholds of a policy file, print a pass/fail table and exit with 0 "
                    "(passed) or 1 (failed). Without --policy the built-in default policy applies.")
    gate = parser.add_argument_group("audit")
    gate.add_argument("--policy", metavar="FILE", help="a TOML policy file (default: the built-in default policy)")
    gate.add_argument("--report", metavar="FILE.json",
                      help="audit this report.json instead of computing a report (the model and run options are "
                           "then not used)")
    gate.add_argument("--junit", metavar="FILE", help="also write the checks as JUnit XML (one test case per check)")
    gate.add_argument("--out", metavar="DIR",
                      help="also write report.html and report.json, with the audit, into DIR (not with --report)")
    add_report_options(parser)
    parser.set_defaults(run=run_audit_command)
    return parser


def audit_sections(policy: Any, sections: tuple[Section, ...] = DEFAULT_SECTIONS) -> tuple[Section, ...]:
    """``sections`` with the audit under ``policy``: replacing an audit already listed, else before the summary
    (the summary reports the audit's verdict), else last."""
    section = AuditSection(policy)
    if any(isinstance(s, AuditSection) for s in sections):
        return tuple(section if isinstance(s, AuditSection) else s for s in sections)
    at = next((i for i, s in enumerate(sections) if s.id == "summary"), len(sections))
    return (*sections[:at], section, *sections[at:])


def read_report_json(path: str) -> dict[str, Any]:
    """report.json's content from ``--report``; any problem is one :class:`XauditError`."""
    file = Path(path)
    if not file.is_file():
        raise XauditError(f"--report {path!r} is not a file: pass the report.json that `xaudit report` wrote")
    try:
        content = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise XauditError(f"--report {path!r} is not readable JSON ({exc}): pass the report.json that "
                          "`xaudit report` wrote") from None
    if not isinstance(content, dict):
        raise XauditError(f"--report {path!r} holds a JSON {type(content).__name__}, not a report object: pass "
                          "the report.json that `xaudit report` wrote")
    return content


def run_audit_command(args: argparse.Namespace) -> int:
    """Run ``xaudit audit``; returns 0 (passed) or 1 (failed); usage errors raise :class:`XauditError`."""
    policy = load_policy(args.policy)  # first: a bad policy must cost nothing
    if args.report and args.out:
        raise XauditError("--out needs a computed report (the HTML draws from the model), so it cannot be combined "
                          "with --report: drop --out, or drop --report to recompute")
    progress = _printer(args.quiet)
    created = prepare_out_dir(args.out, files=REPORT_FILES) if args.out else []
    with _cleanup_on_failure(created):
        if args.junit:
            created += prepare_out_file(args.junit, option="--junit")
        report = None
        if args.report:
            content = read_report_json(args.report)
        else:
            report = Report.from_context(report_context(args, progress), audit_sections(policy))
            content = report.json
        result = audit(content, policy)  # a path naming nothing raises here, before any file is written
        junit = result.to_junit_xml() if args.junit else None
        if report is not None and args.out:
            if progress:
                progress("rendering the report")
            files = write_report(report, args.out)
            if progress:
                progress(f"wrote {files.html} and {files.json}")
        if junit is not None:
            atomic_write_text(Path(args.junit), junit)
    print(result.table(), end="")
    return 0 if result.passed else 1
