"""``xaudit audit``: compute a report (or read a report.json) and pass or fail it against a policy, for CI.

Exit codes: 0 when every check passes, 1 when the audit fails, 2 for a usage error (a bad policy file, a
path that names nothing in report.json, an unreadable ``--report`` or one that is not a report.json, a
``--junit`` or ``--out`` that would overwrite an input...), which follows the CLI's contract: one line
``xaudit: error: ...`` and nothing written. Outputs are checked and the policy is read and validated before
any training.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from xaudit.models._data import DATASETS
from xaudit.models._errors import XauditError
from xaudit.models._nets import MODELS

from ._atomic import (atomic_write_text, prepare_out_dir, prepare_out_file, refuse_overwriting_inputs,
                      refuse_special_file, same_file)
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


#: Keys every report.json that ``xaudit report`` (or ``xaudit audit --out``) writes has: its sections always
#: include the performance and cost sections. Other xaudit JSON files (sweep.json, a sweep run's manifest,
#: the cost file of ``xaudit explain``) have neither.
REPORT_KEYS: tuple[str, ...] = ("metrics", "methods")


def _what_json(content: Mapping[str, Any]) -> str:
    """What a JSON object that is not a report.json is ("the sweep.json that `xaudit sweep` wrote"...), when
    it is recognisable, else ''."""
    if not content:
        return "an empty JSON object"
    fmt = content.get("format")
    if isinstance(fmt, str) and fmt.startswith("xaudit-sweep-run"):
        return ("a trial file of a sweep run directory (`xaudit sweep`)" if "trial" in content
                else "the manifest.json of a sweep run directory (`xaudit sweep`)")
    if "xaudit_version" in content and "grid" in content and "trials" in content:
        return "the sweep.json that `xaudit sweep` wrote"
    if "xaudit_version" in content and "cost" in content and "npz" in content:
        return "the cost file that `xaudit explain` wrote next to its attributions"
    return ""


def _json_type(value: Any) -> str:
    """JSON's own name for the type of a value ``json.loads`` returned ("null", "array"), not Python's."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array"}.get(type(value), type(value).__name__)


def read_report_json(path: str) -> dict[str, Any]:
    """report.json's content from ``--report``; any problem is one :class:`XauditError`, including valid JSON
    that is not a report.json (a sweep.json, say), which would otherwise read as a policy naming nothing."""
    file = Path(path)
    refuse_special_file(file, what="--report", fix="pass the report.json that `xaudit report` wrote")
    if not file.is_file():
        raise XauditError(f"--report {path!r} is not a file: pass the report.json that `xaudit report` wrote")
    try:
        content = json.loads(file.read_text(encoding="utf-8-sig"))  # a BOM from an editor is not an error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise XauditError(f"--report {path!r} is not readable JSON ({exc}): pass the report.json that "
                          "`xaudit report` wrote") from None
    if not isinstance(content, dict):
        raise XauditError(f"--report {path!r} holds a JSON {_json_type(content)}, not a report object: pass "
                          "the report.json that `xaudit report` wrote")
    missing = [key for key in REPORT_KEYS if key not in content]
    if missing:
        what = _what_json(content)
        raise XauditError(f"--report {path!r} is {what + ', ' if what else ''}not an xaudit report.json (no "
                          f"{'/'.join(map(repr, missing))}): pass the report.json that `xaudit report` wrote")
    return content


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, an output that would replace a file the command reads (``--junit`` naming the
    ``--report`` or ``--policy`` file, say) or another output, and a ``--junit`` directory."""
    inputs = [("--report", args.report), ("--policy", args.policy), ("--state-dict", args.state_dict),
              ("--model", None if args.model in MODELS else args.model),
              ("--data", None if args.data in DATASETS else args.data)]
    inputs = [(option, path) for option, path in inputs if path and os.path.isfile(path)]
    out_files = [(name, Path(args.out) / name) for name in REPORT_FILES] if args.out else []
    if args.junit:
        junit = Path(args.junit)
        names = {junit.name, *(Path(path).name for _, path in inputs)}
        example = "audit.xml" if "audit.xml" not in names else "junit.xml"
        if junit.is_dir():
            raise XauditError(f"--junit {args.junit!r} is a directory: pass a file path inside it, "
                              f"e.g. {str(junit / example)!r}")
        refuse_overwriting_inputs(args.junit, inputs, option="--junit", example=example)
        if args.out and same_file(junit, args.out):
            raise XauditError(f"--junit {args.junit!r} and --out {args.out!r} name the same path, but --out is "
                              f"the report's directory: pass a --junit file, e.g. {str(Path(args.out) / example)!r}")
        for name, path in out_files:
            if same_file(junit, path):
                raise XauditError(f"--junit {args.junit!r} is the {name} that --out {args.out!r} writes: pass "
                                  f"another --junit path, e.g. {example!r}")
    for name, path in out_files:
        for option, source in inputs:
            if same_file(path, source):
                raise XauditError(f"--out {args.out!r} would write {name} over {option} {source!r}: choose "
                                  "another --out directory")


def run_audit_command(args: argparse.Namespace) -> int:
    """Run ``xaudit audit``; returns 0 (passed) or 1 (failed); usage errors raise :class:`XauditError`."""
    if args.report and args.out:
        raise XauditError("--out needs a computed report (the HTML draws from the model), so it cannot be combined "
                          "with --report: drop --out, or drop --report to recompute")
    check_outputs(args)  # first, with the policy: a mistake must cost nothing, and never an input file
    policy = load_policy(args.policy)
    content = read_report_json(args.report) if args.report else None
    progress = _printer(args.quiet)
    created = prepare_out_dir(args.out, files=REPORT_FILES) if args.out else []
    with _cleanup_on_failure(created):
        if args.junit:
            created += prepare_out_file(args.junit, option="--junit")
        report = None
        if content is None:
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
