"""The audit gate: a policy's checks evaluated on report.json, with a table, JUnit XML and report.json's ``audit``.

Rules the evaluation follows (so CI never passes by accident):

* a value that was not measured (null in report.json, an empty ``quality`` because of ``--quality none``, a
  metric that does not apply to the method, an index past the end of a list, NaN or Infinity in an edited
  report.json) fails its check with a "not measured" note that names the whole path;
* a method the policy names that this report did not run fails its check ("not run"): a policy that names
  a method requires it, so dropping it from ``--methods`` cannot turn a failing gate green;
* a method that cannot explain this kind of model (``supported: false``) is skipped with its reason, as is
  every other list entry with ``supported: false``; skipped checks do not fail the audit; a method that
  could but failed on this model (``failed: true``: NaN attributions, say) fails its checks;
* an audit in which no check could be evaluated fails;
* a path that names nothing in report.json (a typo), a number check on a non-number, or a method name that
  is not registered is a mistake in the policy: an :class:`XauditError` (``xaudit: error: ...``, exit 2).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from xaudit.explain import available_methods, available_metrics, quality_json
from xaudit.models._errors import XauditError, did_you_mean

from ._audit_policy import RULES, Policy, PolicyCheck, Step, Threshold, load_policy, meets
from ._sections import Section

if TYPE_CHECKING:
    from ._build import ReportContext
    from ._report import Report

# Only ._sections (for the base class) is imported from this package at module level, so ._sections may
# import this module at its end to list AuditSection in DEFAULT_SECTIONS without an import cycle.

PolicyLike = Policy | str | os.PathLike[str] | None
STATUSES = ("passed", "failed", "skipped")


@functools.lru_cache(maxsize=1)
def _measured_keys() -> frozenset[str]:
    """Keys report.json writes only once they are measured: every quality metric and the per-method quality
    entries (``--quality fast`` or ``none`` leaves them out), so their absence means "not measured", not a typo."""
    return frozenset(available_metrics()) | frozenset(quality_json({})) | {"metric_samples", "failed_metrics"}


@dataclass(frozen=True)
class AuditCheck:
    """One evaluated check. ``passed`` is False only for a check that fails the audit (a skipped check does not);
    ``status`` says passed, failed or skipped; ``value`` is None when it was not measured; ``path`` is the
    report.json path with wildcards resolved; ``note`` says why a check failed or was skipped."""

    name: str
    value: Any
    threshold: Threshold
    passed: bool
    rule: str
    path: str
    status: str
    note: str = ""
    why: str = ""

    @property
    def value_text(self) -> str:
        """The value as the table shows it (:func:`value_text`)."""
        return value_text(self.value, self.threshold)

    @property
    def threshold_text(self) -> str:
        return f"{RULES[self.rule]} {format_value(self.threshold)}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "threshold": self.threshold, "rule": self.rule,
                "op": RULES[self.rule], "passed": self.passed, "status": self.status, "path": self.path,
                "note": self.note, "why": self.why}


@dataclass(frozen=True)
class AuditResult:
    """The outcome of :func:`audit`: every check in policy order (wildcards expanded), and whether the audit passed."""

    policy: Policy
    checks: tuple[AuditCheck, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and any(c.status != "skipped" for c in self.checks)

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        """report.json's ``audit`` entry."""
        return {"passed": self.passed, "policy": self.policy.name, "policy_source": self.policy.source,
                **{f"n_{s}": self.count(s) for s in STATUSES}, "checks": [c.to_json() for c in self.checks]}

    def verdict(self) -> str:
        counts = ", ".join(f"{self.count(s)} {s}" for s in STATUSES)
        if not any(c.status != "skipped" for c in self.checks):
            return f"audit FAILED: no check could be evaluated ({counts})"
        return f"audit {'passed' if self.passed else 'FAILED'}: {counts}"

    def table(self) -> str:
        """The pass/fail table ``xaudit audit`` prints: one row per check, then the verdict."""
        rows = [("result", "check", "value", "threshold", "note")]
        rows += [tuple(map(printable, (c.status[:4].upper(), c.name, c.value_text, c.threshold_text,
                                       f"{c.note}: {c.why}" if c.why and c.status == "failed" else c.note)))
                 for c in self.checks]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [f"xaudit audit: policy {self.policy.name!r} ({printable(self.policy.source)})"]
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4] for row in rows]
        lines.append(self.verdict())
        return "\n".join(line.rstrip() for line in lines) + "\n"

    def to_junit_xml(self) -> str:
        """JUnit XML for CI systems: one ``<testcase>`` per check, ``<failure>`` (value against threshold) for
        failed ones, ``<skipped>`` with the reason for skipped ones."""
        counts = {"tests": str(len(self.checks)), "failures": str(self.count("failed")), "errors": "0",
                  "skipped": str(self.count("skipped"))}
        suites = ET.Element("testsuites", name="xaudit audit", **counts)
        suite = ET.SubElement(suites, "testsuite", name=f"xaudit audit: {self.policy.name}", time="0", **counts)
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="policy_source", value=self.policy.source)
        classname = "xaudit.audit." + "_".join(self.policy.name.split())
        for check in self.checks:
            case = ET.SubElement(suite, "testcase", classname=classname, name=check.name, time="0")
            detail = f"{check.path} = {check.value_text}; threshold {check.threshold_text}"
            if check.status == "failed":
                failure = ET.SubElement(case, "failure", type="threshold", message=_failure_message(check))
                failure.text = detail + (f"\nwhy: {check.why}" if check.why else "")
            elif check.status == "skipped":
                ET.SubElement(case, "skipped", message=check.note)
            else:
                ET.SubElement(case, "system-out").text = detail
        ET.indent(suites)
        # ElementTree escapes markup but writes control characters as they are, which no XML 1.0 parser
        # accepts; they can only sit in text and attribute values, so escaping them in the document is safe
        return xml_safe('<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n")

    def _repr_html_(self) -> str:
        from ._notebook import fragment
        from ._report import _environment

        body = _environment().get_template("audit.html.j2").render(report={"audit": self.to_json()})
        return fragment(Markup('<div class="xaudit-report"><h3>Audit</h3>{}</div>').format(Markup(body)))  # noqa: S704


def format_value(value: Any) -> str:
    """A value as the table and JUnit show it: 4 significant digits, true/false, "-" for not measured."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def value_text(value: Any, threshold: Any = None) -> str:
    """:func:`format_value`, with as many more digits as it takes for a number not to print as the number
    ``threshold`` it differs from (beyond the audit's tolerance): 4 significant digits show 0.050004 as 0.05,
    and "0.05 is not <= 0.05" reads as a contradiction."""
    text = format_value(value)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, threshold))
    if not numbers or meets(value, "equals", threshold) or text != format_value(threshold):
        return text  # equal within the audit's tolerance: the short form is the truth
    for digits in (6, 9, 12, 17):
        text = f"{value:.{digits}g}"
        if text != f"{threshold:.{digits}g}":
            break
    return text


#: Characters XML 1.0 forbids anywhere in a document (everything but tab, LF, CR below U+0020; surrogates;
#: U+FFFE and U+FFFF).
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
#: Characters a terminal would act on or cannot print: control characters (C0, DEL, C1) and lone surrogates.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]  # '\x07', '\n', '\ud800': what Python's repr shows


def xml_safe(text: str) -> str:
    """``text`` with every character XML 1.0 forbids written as its Python escape (``\\x07``); tabs and
    newlines stay."""
    return _XML_ILLEGAL.sub(_escaped, text)


def printable(text: str) -> str:
    """``text`` with control characters (newlines and tabs too) written as their Python escape (``\\x07``),
    so a table row stays one line and a terminal shows what the file holds instead of acting on it."""
    return _UNPRINTABLE.sub(_escaped, text)


def _failure_message(check: AuditCheck) -> str:
    if check.value is None:
        return check.note
    return f"{check.name}: {check.value_text} is not {check.threshold_text}"


def audit(report: Report | Mapping[str, Any], policy: PolicyLike = None) -> AuditResult:
    """Evaluate ``policy`` (a :class:`Policy`, a policy file, or None for the default policy) on ``report``
    (a :class:`Report` or report.json's content as a dict)."""
    policy = policy if isinstance(policy, Policy) else load_policy(policy)
    content = report.json if hasattr(report, "json") and not isinstance(report, Mapping) else report
    if not isinstance(content, Mapping):
        raise XauditError(f"audit() needs a Report or report.json's content as a dict, got {type(report).__name__}")
    if any("faithfulness" in check.value for check in policy.checks) and _old_faithfulness_scale(content):
        raise XauditError("this report.json gives faithfulness on the scale before xaudit measured it against a "
                          "random map (1 - deletion AUC), which the policy's faithfulness checks would misread: "
                          "build the report again with this xaudit")
    checks: list[AuditCheck] = []
    for check in policy.checks:
        checks += _evaluate(check, content)
    busy = _busy_note(content)
    if busy:  # a timing measured while other processes took the CPU: say so next to every timing check
        checks = [dataclasses.replace(c, note=f"{c.note}; {busy}" if c.note else busy)
                  if _TIMING.search(c.path) and c.value is not None else c for c in checks]
    return AuditResult(policy=policy, checks=tuple(checks))


#: report.json paths whose values are timings.
_TIMING = re.compile(r"(wall|cpu)_s|seconds|_ms\b")


def _old_faithfulness_scale(report: Mapping[str, Any]) -> bool:
    """Whether report.json's recommendations give faithfulness without the random map it is measured against
    (reports written before faithfulness became 1 - deletion AUC / the random map's)."""
    recommendations = report.get("recommendations")
    if not isinstance(recommendations, list):
        return False
    return any(isinstance(r, Mapping) and r.get("faithfulness") is not None and "random_deletion_auc" not in r
               for r in recommendations)


def _busy_note(report: Mapping[str, Any]) -> str:
    """A note when report.json says its timings were measured on a busy machine, else ''."""
    measurement = report.get("measurement")
    machine = measurement.get("machine") if isinstance(measurement, Mapping) else None
    contention = machine.get("contention") if isinstance(machine, Mapping) else None
    if not isinstance(contention, Mapping) or not contention.get("busy"):
        return ""
    share = contention.get("other_cpu_share")
    took = f"{share:.0%} of the CPU" if isinstance(share, (int, float)) else "part of the CPU"
    return f"measured on a busy machine (other processes took {took}): timings may be inflated"


@dataclass(frozen=True)
class _Target:
    path: str
    labels: tuple[str, ...]
    value: Any = None
    missing: str = ""   # why the value is not there (a failure)
    skipped: str = ""   # why the check does not apply (an unsupported method)


def _evaluate(check: PolicyCheck, report: Mapping[str, Any]) -> list[AuditCheck]:
    targets: list[_Target] = []
    _walk(report, check.steps, "", (), check, targets)
    out = []
    for t in targets:
        name = check.name + (f" [{', '.join(t.labels)}]" if t.labels else "")
        common = {"name": name, "threshold": check.threshold, "rule": check.rule, "path": t.path, "why": check.why}
        if t.skipped:
            out.append(AuditCheck(value=None, passed=True, status="skipped", note=t.skipped, **common))
            continue
        value, what = t.value, "null"
        if isinstance(value, float) and not math.isfinite(value):  # json.loads reads NaN and Infinity
            value, what = None, "NaN" if math.isnan(value) else f"infinite ({'-' if value < 0 else ''}Infinity)"
        if value is None:
            note = t.missing or f"not measured: {t.path} is {what} in report.json"
            out.append(AuditCheck(value=None, passed=False, status="failed", note=note, **common))
            continue
        ok = _compare(check, t.path, value)
        out.append(AuditCheck(value=value, passed=ok, status="passed" if ok else "failed",
                              note="" if ok else f"{value_text(value, check.threshold)} is not {RULES[check.rule]} "
                                                  f"{format_value(check.threshold)}", **common))
    return out


def _which(check: PolicyCheck) -> str:
    """How errors name a check: its name, and its path when that differs."""
    return f"policy check {check.name!r}" + ("" if check.name == check.value else f" (value {check.value!r})")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return {dict: "an object", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _compare(check: PolicyCheck, path: str, value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if check.rule == "equals":
        if _kind(value) != _kind(check.threshold):
            raise XauditError(f"{_which(check)}: {path} is {_kind(value)} ({format_value(value)}), but "
                              f"equals = {format_value(check.threshold)} is {_kind(check.threshold)}: "
                              "compare it with a value of the same kind")
        if number and _kind(check.threshold) == "a number":
            return meets(value, "equals", check.threshold)  # type: ignore[arg-type]
        return bool(value == check.threshold)
    if not number:
        hint = "use equals = true or false" if isinstance(value, bool) else "name a number inside it"
        if isinstance(value, Mapping):
            hint += f" ({', '.join(sorted(map(str, value)))})"
        raise XauditError(f"{_which(check)}: {path} is {_kind(value)}, not a number, so "
                          f"{check.rule} cannot compare it: {hint}")
    return meets(value, check.rule, check.threshold)  # type: ignore[arg-type]


def _entry_name(entry: Any) -> str | None:
    if isinstance(entry, Mapping):
        for key in ("name", "method"):
            if isinstance(entry.get(key), str):
                return entry[key]
    return None


def _labels(entries: Sequence[Any]) -> list[str]:
    """What names each expanded check: the entries' ``name``, ``method`` or ``budget``, the first that is
    distinct across the list (recommendations repeat a method across budgets), else the position."""
    for key in ("name", "method", "budget"):
        values = [e.get(key) if isinstance(e, Mapping) else None for e in entries]
        if all(isinstance(v, str) for v in values) and len(set(values)) == len(values):
            return values
    return [str(i) for i in range(len(entries))]


def _path_text(steps: Sequence[Step]) -> str:
    """How ``steps`` continue a path: ``.quality.deletion_auc``, ``[0].faithfulness``."""
    return "".join(f".{arg}" if kind == "key" else f"[{arg}]" for kind, arg in steps)


def _entries(n: int) -> str:
    return "is empty" if n == 0 else "has 1 entry ([0])" if n == 1 else f"has {n} entries ([0] to [{n - 1}])"


def _walk(node: Any, steps: Sequence[Step], where: str, labels: tuple[str, ...], check: PolicyCheck,
          out: list[_Target]) -> None:
    """Follow ``steps`` from ``node``, appending one target per value reached (wildcards branch). A target
    that stops short (null, missing, out of range, skipped) keeps the whole path the policy named."""
    if not steps:
        out.append(_Target(where, labels, node))
        return
    if node is None:
        out.append(_Target(where + _path_text(steps), labels,
                           missing=f"not measured: {where} is null in report.json"))
        return
    (kind, arg), rest = steps[0], steps[1:]
    here = where or "report.json"
    if kind == "key":
        if not isinstance(node, Mapping):
            raise XauditError(f"{_which(check)}: {here} is {_kind(node)}, not an object, so it has no "
                              f"key {arg!r}: fix the path {check.value!r}")
        if arg not in node:
            if not node or arg in _measured_keys():
                hint = " (quality metrics need --quality full or fast)" if arg in _measured_keys() else ""
                out.append(_Target((f"{where}.{arg}" if where else arg) + _path_text(rest), labels,
                                   missing=f"not measured: {here} has no {arg!r}{hint}"))
                return
            raise XauditError(f"{_which(check)} names nothing in report.json: "
                              + did_you_mean(f"key of {here}", arg, map(str, node)).args[0])
        path = f"{where}.{arg}" if where else arg
        if not rest and node[arg] is None and isinstance(node.get("reason"), str) and node["reason"]:
            # the object says why it has no value (a recommendation: the sanity check did not run, no method
            # is fast enough): that beats the policy's generic words
            out.append(_Target(path, labels, missing=f"not measured: {path} is null in report.json "
                                                     f"({node['reason'].rstrip('.')})"))
            return
        _walk(node[arg], rest, path, labels, check, out)
        return
    if not isinstance(node, list):
        raise XauditError(f"{_which(check)}: {here} is {_kind(node)}, not a list, so [{arg}] selects "
                          f"nothing: fix the path {check.value!r}")
    if arg == "*":
        if not node:
            out.append(_Target(f"{where}[*]{_path_text(rest)}", labels, missing=f"not measured: {here} is empty"))
        for i, (entry, label) in enumerate(zip(node, _labels(node))):
            selector = label if label == _entry_name(entry) else str(i)  # the path stays selectable
            _enter(entry, rest, f"{where}[{selector}]", (*labels, label), check, out)
        return
    if arg.isdigit():
        index = int(arg)
        if index >= len(node):  # a report can have fewer entries than the policy expects: a failure, not a typo
            path = f"{where}[{arg}]{_path_text(rest)}"
            out.append(_Target(path, labels, missing=f"not measured: {here} {_entries(len(node))}, "
                                                     f"so {path} is not in report.json"))
        else:
            _enter(node[index], rest, f"{where}[{arg}]", labels, check, out)
        return
    matches = [entry for entry in node if _entry_name(entry) == arg]
    if not matches:
        names = {n for n in map(_entry_name, node) if n}
        if arg in available_methods():
            out.append(_Target(f"{where}[{arg}]{_path_text(rest)}", labels,
                               missing=f"not run: {arg} is not in this report's {here} (add it to --methods)"))
            return
        raise XauditError(f"{_which(check)} names nothing in report.json: "
                          + did_you_mean(f"entry of {here}", arg, names | set(available_methods())).args[0])
    _enter(matches[0], rest, f"{where}[{arg}]", labels, check, out)


def _enter(entry: Any, steps: Sequence[Step], where: str, labels: tuple[str, ...], check: PolicyCheck,
           out: list[_Target]) -> None:
    if isinstance(entry, Mapping) and entry.get("supported") is False:
        reason = entry.get("reason") or "not supported"
        path = where + _path_text(steps)
        if entry.get("failed"):  # the method can explain such a model but failed on this one: nothing to skip
            out.append(_Target(path, labels, missing=f"{_entry_name(entry) or where} failed on this model: {reason}"))
            return
        out.append(_Target(path, labels, skipped=f"{_entry_name(entry) or where} cannot run here: {reason}"))
        return
    _walk(entry, steps, where, labels, check, out)


class AuditSection(Section):
    """The audit: every check of a policy on the rest of report.json, as report.json's ``audit`` entry and a
    pass/fail table. It reads the content assembled before it (``needs_report``), so it is listed after the
    sections whose values it checks and before the summary, which reports its verdict."""

    id = "audit"
    title = "Audit"
    template = "audit.html.j2"
    needs_report = True

    def __init__(self, policy: PolicyLike = None) -> None:
        # None stays None (the default policy, read when the section runs) so that listing AuditSection() in
        # DEFAULT_SECTIONS reads no file at import; a path is read and validated here, before any work
        self.policy = None if policy is None else policy if isinstance(policy, Policy) else load_policy(policy)

    def json_part(self, ctx: ReportContext, report: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if report is None:
            raise TypeError("AuditSection needs the report content assembled so far: Report.from_context passes it")
        return {"audit": audit(report, self.policy).to_json()}

    def __repr__(self) -> str:
        return f"AuditSection(policy={'default' if self.policy is None else self.policy.source!r})"
