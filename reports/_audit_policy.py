"""Audit policies: a TOML file of checks, each a threshold on one value of report.json.

A policy is parsed and validated completely before any model is trained or explained, so a typo in CI
costs seconds, not a full report. The format::

    name = "release gate"                  # optional; shown in the table and the JUnit suite
    description = "what this policy is for"   # optional

    [[check]]
    name = "test accuracy"                 # optional; defaults to the path
    value = "metrics.test_accuracy"        # a path into report.json
    min = 0.95                             # exactly one of min, max, equals (a number within 1e-9
                                           # relative of it counts as equal: float rounding never fails a check)
    why = "below this the model is not fit for release"   # optional; shown with a failure

Paths are dotted keys with list selectors: ``methods[saliency]`` picks the entry whose ``name`` (or
``method``) is ``saliency``, ``methods[*]`` expands into one check per entry, ``[0]`` picks by position.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; tomli is the same parser
    import tomli as tomllib

from xaudit.models._errors import XauditError, did_you_mean

from ._atomic import refuse_special_file

#: The comparison of each rule: the value must be ≥ ``min``, ≤ ``max`` or equal to ``equals``.
RULES: dict[str, str] = {"min": ">=", "max": "<=", "equals": "=="}
#: A number within this relative distance of its threshold counts as equal to it (so it meets min, max and
#: equals): report.json's values come from float arithmetic, where 100% − 95% is 0.050000000000000044, and a
#: value one rounding error past a threshold it meets exactly must not fail it ("0.05 is not <= 0.05").
REL_TOLERANCE = 1e-9
#: The same at a threshold of 0, where no relative distance is small enough for rounding noise.
ABS_TOLERANCE = 1e-12
POLICY_KEYS: tuple[str, ...] = ("name", "description", "check")
CHECK_KEYS: tuple[str, ...] = ("name", "value", *RULES, "why")
#: The policy ``load_policy(None)`` returns: package data next to this module.
DEFAULT_POLICY_FILE = "policies/default.toml"

Threshold = Union[float, bool, str]
#: One step of a path: ``("key", name)`` or ``("select", "*" | "<index>" | "<entry name>")``.
Step = tuple[str, str]

_KEY = r"[A-Za-z_][A-Za-z0-9_]*"
_SELECTOR = r"\*|[0-9]+|[A-Za-z0-9_:\-]+"
_PATH = re.compile(rf"{_KEY}(?:\[(?:{_SELECTOR})\])*(?:\.{_KEY}(?:\[(?:{_SELECTOR})\])*)*")
_STEP = re.compile(rf"({_KEY})|\[({_SELECTOR})\]")


@dataclass(frozen=True)
class PolicyCheck:
    """One check of a policy: ``value`` (a report.json path) compared with ``threshold`` by ``rule``."""

    name: str
    value: str
    rule: str
    threshold: Threshold
    why: str = ""

    @property
    def steps(self) -> tuple[Step, ...]:
        return parse_path(self.value)


@dataclass(frozen=True)
class Policy:
    """A parsed audit policy: its ``name``, where it came from (``source``) and its checks in file order."""

    name: str
    source: str
    checks: tuple[PolicyCheck, ...]
    description: str = ""


def parse_path(path: str) -> tuple[Step, ...]:
    """The steps of a report.json path such as ``methods[*].quality.deletion_auc``; raises ValueError if malformed."""
    if not isinstance(path, str) or not _PATH.fullmatch(path):
        raise ValueError(path)
    return tuple(("key", key) if key else ("select", sel) for key, sel in _STEP.findall(path))


def load_policy(path: str | os.PathLike[str] | None = None) -> Policy:
    """Read and validate an audit policy file; ``None`` (or ``"default"`` when no such file exists) is the
    built-in default policy. Every problem is an :class:`XauditError` naming the file, the check and the fix."""
    if path is None or (str(path) == "default" and not Path(path).exists()):
        text = resources.files("xaudit.reports").joinpath(DEFAULT_POLICY_FILE).read_text(encoding="utf-8")
        return parse_policy(text, source="default", default_name="default")
    file = Path(path)
    # a FIFO would block the read until a writer comes, /dev/zero would fill the memory: refused unopened
    refuse_special_file(file, what="policy file", fix="pass the path of a TOML policy file")
    if not file.exists():
        raise XauditError(f"policy file {str(file)!r} does not exist: pass the path of a TOML policy file, or "
                          "leave out --policy to use the default policy")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise XauditError(f"cannot read policy file {str(file)!r} ({exc}): pass a readable UTF-8 TOML file") from None
    return parse_policy(text, source=str(file), default_name=file.stem)


def parse_policy(text: str, *, source: str = "<string>", default_name: str = "policy") -> Policy:
    """Parse policy TOML ``text``; ``source`` names it in errors."""
    where = f"policy {source!r}"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise XauditError(f"{where} is not valid TOML ({exc}): fix the syntax") from None
    for key in doc:
        if key not in POLICY_KEYS:
            raise XauditError(f"{where}: {did_you_mean('top-level key', key, POLICY_KEYS)}")
    name = _text(doc, "name", where, default=default_name)
    description = _text(doc, "description", where, default="")
    raw = doc.get("check")
    if raw is None or raw == []:
        raise XauditError(f"{where} has no checks: add at least one [[check]] table with value and min, max or equals")
    if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
        raise XauditError(f"{where}: 'check' must be an array of tables: write each check as a [[check]] table "
                          "(two brackets)")
    checks = tuple(_check(c, f"{where}, check {i}") for i, c in enumerate(raw, 1))
    seen: set[str] = set()
    for check in checks:
        if check.name in seen:
            raise XauditError(f"{where}: two checks are named {check.name!r}: give each check its own name "
                              "(it names the JUnit test case)")
        seen.add(check.name)
    return Policy(name=name, source=source, checks=checks, description=description)


def _text(table: dict[str, Any], key: str, where: str, *, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or (key == "name" and not value.strip()):
        raise XauditError(f"{where}: {key!r} must be a non-empty string, got {value!r}: quote it")
    return value


def _check(table: dict[str, Any], where: str) -> PolicyCheck:
    for key in table:
        if key not in CHECK_KEYS:
            raise XauditError(f"{where}: {did_you_mean('check key', key, CHECK_KEYS)}")
    if "value" not in table:
        raise XauditError(f"{where} has no 'value': name the report.json value to check, "
                          "e.g. value = \"metrics.test_accuracy\"")
    path = table["value"]
    try:
        parse_path(path)
    except ValueError:
        raise XauditError(f"{where}: value {path!r} is not a report.json path: write dotted keys with optional "
                          "[name], [*] or [index] selectors, e.g. \"methods[saliency].quality.sanity_passed\"") from None
    name = _text(table, "name", where, default=path)
    where = f"{where} ({name!r})"
    rules = [r for r in RULES if r in table]
    if len(rules) != 1:
        given = f"got {', '.join(rules)}" if rules else "got none"
        fix = ("write two checks for a range" if rules else
               "add the threshold, e.g. min = 0.9 (at least), max = 0.5 (at most) or equals = true")
        raise XauditError(f"{where}: give exactly one of min, max or equals ({given}): {fix}")
    (rule,) = rules
    threshold = table[rule]
    if rule == "equals":
        ok = isinstance(threshold, (bool, str)) or _is_number(threshold)
        expected = "a number, true/false or a string"
    else:
        ok = _is_number(threshold)
        expected = "a number"
    if not ok:
        raise XauditError(f"{where}: {rule} = {threshold!r} is not {expected}: write e.g. {rule} = 0.9 "
                          "(no quotes around numbers)")
    return PolicyCheck(name=name, value=path, rule=rule,
                       threshold=float(threshold) if _is_number(threshold) else threshold,
                       why=_text(table, "why", where, default=""))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def meets(value: float, rule: str, threshold: float) -> bool:
    """Whether number ``value`` passes ``rule`` (min, max or equals) against number ``threshold``, values within
    :data:`REL_TOLERANCE` (relative) or :data:`ABS_TOLERANCE` of it counting as equal."""
    if math.isclose(value, threshold, rel_tol=REL_TOLERANCE, abs_tol=ABS_TOLERANCE):
        return True
    if rule == "min":
        return value >= threshold
    if rule == "max":
        return value <= threshold
    return False
