"""``xaudit audit`` and what it is given: outputs that would overwrite an input, JSON files that are not a
report.json, characters JUnit XML cannot hold, and the words for values that stop short of a number
(an index past the end, NaN, Infinity)."""

from __future__ import annotations

import json
import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from _cli_helpers import assert_one_line_error, image_npz, run_cli
from test_audit import _check, _policy, _report
from xaudit.reports import audit
from xaudit.reports import _cli_audit

#: What a terminal would act on: C0 controls (tabs and newlines too, in a one-line table row), DEL, C1.
_RAW_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Computing a report fails the test: the refusals below must come before any work."""
    def work(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(_cli_audit, "report_context", work)


# ---- 1. an output over an input -------------------------------------------------------------------------

def _inputs(tmp_path: Path) -> dict[str, Path]:
    report = tmp_path / "in" / "report.json"
    report.parent.mkdir()
    report.write_text(json.dumps(_report()), encoding="utf-8")
    policy = tmp_path / "in" / "gate.toml"
    policy.write_text(_check("metrics.test_accuracy", "min", "0.5"), encoding="utf-8")
    (tmp_path / "in" / "model.pt").write_bytes(b"not read: the refusal comes first")
    (tmp_path / "in" / "weights.pt").write_bytes(b"not read either")
    image_npz(tmp_path / "in" / "data.npz")
    return {"report": report, "policy": policy}


#: An audit that passes and would write its JUnit XML (so, before the fix, over the input it was pointed at).
_AUDIT_REPORT = ["--report", "in/report.json", "--policy", "in/gate.toml"]


@pytest.mark.parametrize(("case", "argv", "junit", "option"), [
    ("--report", _AUDIT_REPORT, "in/report.json", "--report"),
    ("--report through ./ and ..", _AUDIT_REPORT, "./in/../in/report.json", "--report"),
    ("--report through a symlink", _AUDIT_REPORT, "link.json", "--report"),
    ("--report through a hard link", _AUDIT_REPORT, "hard.json", "--report"),
    ("--policy", _AUDIT_REPORT, "in/gate.toml", "--policy"),
    ("--policy through a symlink", _AUDIT_REPORT, "plink.toml", "--policy"),
    ("--model", ["--model", "in/model.pt", "--data", "in/data.npz"], "in/model.pt", "--model"),
    ("--data", ["--model", "in/model.pt", "--data", "in/data.npz"], "in/data.npz", "--data"),
    ("--state-dict", ["--model", "cnn", "--state-dict", "in/weights.pt"], "in/weights.pt", "--state-dict"),
])
def test_junit_naming_an_input_file_is_refused_before_any_work(
        case: str, argv: list[str], junit: str, option: str, tmp_path: Path, no_work: None,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _inputs(tmp_path)
    (tmp_path / "link.json").symlink_to(Path("in") / "report.json")
    (tmp_path / "plink.toml").symlink_to(Path("in") / "gate.toml")
    os.link(tmp_path / "in" / "report.json", tmp_path / "hard.json")
    monkeypatch.chdir(tmp_path)
    before = _files(tmp_path)
    code, out, err = run_cli(["audit", *argv, "--junit", junit, "-q"], capsys)
    assert_one_line_error(code, err, f"--junit {junit!r}", f"is the same file as {option}", "audit.xml")
    assert out == ""
    assert _files(tmp_path) == before, "an input was changed or a file was written"


def test_junit_over_what_out_writes_is_refused(tmp_path: Path, no_work: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    code, _, err = run_cli(["audit", "--out", out, "--junit", out / "report.json"], capsys)
    assert_one_line_error(code, err, "--junit", "is the report.json that --out", "audit.xml")
    code, _, err = run_cli(["audit", "--out", out, "--junit", out], capsys)
    assert_one_line_error(code, err, "--junit", "name the same path", str(out / "audit.xml"))
    assert not out.exists()


def test_out_over_an_input_is_refused(tmp_path: Path, no_work: None, capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "report.json"  # a policy file that happens to have the name --out writes
    policy.write_text(_check("metrics.test_accuracy", "min", "0.5"), encoding="utf-8")
    before = policy.read_bytes()
    code, _, err = run_cli(["audit", "--policy", policy, "--out", tmp_path], capsys)
    assert_one_line_error(code, err, "--out", "would write report.json over --policy")
    assert policy.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_junit_next_to_its_inputs_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    paths = _inputs(tmp_path)
    monkeypatch.chdir(tmp_path / "in")
    code, _, err = run_cli(["audit", "--report", "report.json", "--policy", "gate.toml", "--junit", "audit.xml"],
                           capsys)
    assert code == 0, err
    assert ET.parse(tmp_path / "in" / "audit.xml").getroot().tag == "testsuites"
    assert json.loads(paths["report"].read_text(encoding="utf-8")) == _report()


# ---- 6. a --junit directory -----------------------------------------------------------------------------

def test_junit_directory_suggests_an_xml_file(tmp_path: Path, no_work: None,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["audit", "--junit", tmp_path], capsys)
    line = assert_one_line_error(code, err, "--junit", "is a directory", repr(str(tmp_path / "audit.xml")))
    assert ".pt" not in line
    assert list(tmp_path.iterdir()) == []


# ---- 2. characters XML 1.0 cannot hold ------------------------------------------------------------------

_CONTROL_POLICY = '''name = "gate <&> \\u0001 ctrl"
[[check]]
name = "acc \\u0007 bell ]]> end"
value = "metrics.test_accuracy"
min = 0.95
why = "why \\u001b[31m red\\ttab\\nsecond line \\u000c"
'''


def test_junit_xml_is_well_formed_with_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_report()), encoding="utf-8")
    policy = tmp_path / "ctrl.toml"
    policy.write_text(_CONTROL_POLICY, encoding="utf-8")
    junit = tmp_path / "audit.xml"
    code, out, err = run_cli(["audit", "--report", report, "--policy", policy, "--junit", junit], capsys)
    assert code == 1, err
    root = ET.parse(junit).getroot()  # raised "not well-formed (invalid token)" before
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == "xaudit audit: gate <&> \\x01 ctrl"
    (case,) = suite.iter("testcase")
    assert case.get("name") == "acc \\x07 bell ]]> end"
    failure = case.find("failure")
    assert failure is not None and failure.text is not None
    assert failure.text.endswith("why: why \\x1b[31m red\ttab\nsecond line \\x0c")  # tab and newline kept
    # the terminal table shows the escapes, not the raw characters, and every row stays one line
    assert not _RAW_CONTROL.search(out.replace("\n", ""))
    assert "acc \\x07 bell ]]> end" in out and "why \\x1b[31m red\\ttab\\nsecond line \\x0c" in out
    assert "\\x01 ctrl" in out.splitlines()[0]
    assert len(out.splitlines()) == 4  # policy line, header, one check, verdict


def test_junit_xml_and_table_hold_a_report_string_with_controls_and_a_lone_surrogate() -> None:
    report = _report()
    report["model"] = {"name": "net\x08\ud800"}  # json.loads gives both from "\u0008\ud800"
    result = audit(report, _policy(_check("model.name", "equals", '"cnn"', name="model")))
    (check,) = result.checks
    assert check.status == "failed"
    text = result.to_junit_xml()
    root = ET.fromstring(text.encode("utf-8"))  # the file is written as UTF-8: a lone surrogate cannot be
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None and "net\\x08\\ud800" in failure.get("message", "")
    table = result.table()
    table.encode("utf-8")
    assert "net\\x08\\ud800" in table and not _RAW_CONTROL.search(table.replace("\n", ""))


# ---- 3. valid JSON that is not a report.json ------------------------------------------------------------

@pytest.mark.parametrize(("content", "fragments"), [
    ({}, ("is an empty JSON object, not an xaudit report.json (no 'metrics'/'methods')",)),
    ({"methods": []}, ("is not an xaudit report.json (no 'metrics')",)),
    ({"metrics": {"test_accuracy": 0.99}}, ("is not an xaudit report.json (no 'methods')",)),
    ({"format": "xaudit-sweep-run/1", "sweep": {}, "trials": []}, ("manifest.json of a sweep run directory",)),
    ({"format": "xaudit-sweep-run/1", "trial": {}}, ("a trial file of a sweep run directory",)),
])
def test_json_that_is_not_a_report_is_refused(content: dict[str, Any], fragments: tuple[str, ...], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "some.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    junit = tmp_path / "ci" / "audit.xml"
    code, out, err = run_cli(["audit", "--report", path, "--junit", junit], capsys)
    line = assert_one_line_error(code, err, f"--report {str(path)!r}", *fragments,
                                 "pass the report.json that `xaudit report` wrote")
    assert "names nothing" not in line and "policy" not in line
    assert out == "" and not junit.parent.exists()


def test_a_sweep_and_an_explain_file_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xaudit.models import build_model, save_model

    data = image_npz(tmp_path / "d.npz")
    code, _, err = run_cli(["sweep", "--data", data, "--grid", "weight_decay=0", "--epochs", "1", "--backend",
                            "sequential", "--drift", "none", "--out", tmp_path / "sweep", "-q"], capsys)
    assert code == 0, err
    model = tmp_path / "cnn.pt"
    save_model(build_model("cnn", (1, 8, 8), 10, seed=0), model, dataset="digits")
    code, _, err = run_cli(["explain", "--method", "saliency", "--n-explain", "2", "--model", model, "--data", data,
                            "--out", tmp_path / "a.npz", "-q"], capsys)
    assert code == 0, err
    (trial,) = (tmp_path / "sweep" / "trials").glob("*.json")
    for path, what in [(tmp_path / "sweep" / "sweep.json", "is the sweep.json that `xaudit sweep` wrote"),
                       (tmp_path / "sweep" / "manifest.json", "is the manifest.json of a sweep run directory"),
                       (trial, "is a trial file of a sweep run directory"),
                       (tmp_path / "a.json", "is the cost file that `xaudit explain` wrote")]:
        code, _, err = run_cli(["audit", "--report", path], capsys)
        assert_one_line_error(code, err, what, "not an xaudit report.json (no 'metrics'/'methods')")


# ---- 4. an index past the end, and other paths that stop short ------------------------------------------

def _with_recommendations(n: int) -> dict[str, Any]:
    report = _report()
    report["recommendations"] = [{"budget": f"{i} s/sample", "method": "saliency", "faithfulness": 0.5,
                                  "random_deletion_auc": 0.5} for i in range(n)]
    return report


@pytest.mark.parametrize(("n", "count"), [(4, "has 4 entries ([0] to [3])"), (1, "has 1 entry ([0])"),
                                          (0, "is empty")])
def test_an_index_past_the_end_names_the_whole_path_and_the_count(n: int, count: str) -> None:
    result = audit(_with_recommendations(n), _policy(_check("recommendations[9].faithfulness", "min", "0.1")))
    (check,) = result.checks
    assert check.status == "failed" and not result.passed and check.value is None
    assert check.path == "recommendations[9].faithfulness"
    assert check.note == (f"not measured: recommendations {count}, so recommendations[9].faithfulness is not in "
                          "report.json")
    failure = ET.fromstring(result.to_junit_xml()).find("testsuite/testcase/failure")
    assert failure is not None and failure.text == "recommendations[9].faithfulness = -; threshold >= 0.1"
    assert failure.get("message") == check.note


@pytest.mark.parametrize(("path", "status"), [
    ("frontier.pareto.best", "failed"),                         # a null parent
    ("methods[lime].cost.wall_s_per_sample", "failed"),         # a method not run
    ("methods[gradcam].cost.wall_s_per_sample", "skipped"),     # an unsupported method
])
def test_a_check_that_stops_short_keeps_the_whole_path(path: str, status: str) -> None:
    (check,) = audit(_report(), _policy(_check(path, "max", "1"))).checks
    assert (check.status, check.path) == (status, path)


def test_a_busy_machine_is_noted_only_on_timings_that_were_measured() -> None:
    report = _report()
    report["measurement"] = {"machine": {"contention": {"busy": True, "other_cpu_share": 0.5}}}
    checks = audit(report, _policy(_check("methods[*].cost.wall_s_per_sample", "max", "1")
                                   + _check("methods[lime].cost.wall_s_per_sample", "max", "1"))).checks
    by_path = {c.path: c.note for c in checks}
    assert "busy machine" in by_path["methods[saliency].cost.wall_s_per_sample"]
    assert by_path["methods[lime].cost.wall_s_per_sample"].startswith("not run:")
    assert "busy" not in by_path["methods[lime].cost.wall_s_per_sample"]
    assert "busy" not in by_path["methods[gradcam].cost.wall_s_per_sample"]


# ---- 5. NaN and Infinity --------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "words"), [(math.nan, "is NaN"), (math.inf, "is infinite (Infinity)"),
                                              (-math.inf, "is infinite (-Infinity)")])
@pytest.mark.parametrize("rule", ["min", "max"])
def test_nan_and_infinity_are_named_and_fail(value: float, words: str, rule: str) -> None:
    report = _report()
    report["metrics"]["test_accuracy"] = value
    result = audit(report, _policy(_check("metrics.test_accuracy", rule, "0.5")))
    (check,) = result.checks
    assert check.status == "failed" and not result.passed and check.value is None
    assert check.note == f"not measured: metrics.test_accuracy {words} in report.json"
    assert "null" not in check.note
    json.dumps(result.to_json(), allow_nan=False)


def test_cli_names_a_nan_in_an_edited_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _report()
    report["metrics"]["test_accuracy"] = math.nan
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report), encoding="utf-8")  # Python writes NaN, as an edited file may hold
    assert "NaN" in path.read_text(encoding="utf-8")
    policy = tmp_path / "p.toml"
    policy.write_text(_check("metrics.test_accuracy", "min", "0.5"), encoding="utf-8")
    code, out, _ = run_cli(["audit", "--report", path, "--policy", policy], capsys)
    assert code == 1 and "metrics.test_accuracy is NaN in report.json" in out and "null" not in out


def test_a_report_json_saved_with_a_bom_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # some editors save UTF-8 with a byte-order mark; it was "not readable JSON"
    report = tmp_path / "report.json"
    report.write_bytes(b"\xef\xbb\xbf" + json.dumps(_report()).encode())
    policy = tmp_path / "gate.toml"
    policy.write_text(_check("metrics.test_accuracy", "min", "0.5"), encoding="utf-8")
    code, _, err = run_cli(["audit", "--report", report, "--policy", policy], capsys)
    assert code == 0, err


# ---- 5. a policy or report that is not a regular file, and other words ----------------------------------

@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_a_policy_that_is_a_fifo_or_a_device_is_refused_unopened(kind: str, tmp_path: Path) -> None:
    # a FIFO blocked the audit forever (until a writer came); /dev/zero was read until the memory ran out. Run in
    # a child process with a time limit and an address-space cap, so a regression fails here, not the machine
    import subprocess
    import sys

    resource = pytest.importorskip("resource")
    if kind == "fifo":
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs on this platform")
        policy = tmp_path / "gate.toml"
        os.mkfifo(policy)
        what = "is a FIFO (named pipe), not a regular file"
    else:
        if not Path(kind).exists():
            pytest.skip(f"no {kind}")
        policy = Path(kind)
        what = "is a character device, not a regular file"
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_report()), encoding="utf-8")
    junit = tmp_path / "audit.xml"
    statm = Path("/proc/self/statm")
    cap = (int(statm.read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE") + 2 * 2**30 if statm.exists()
           else resource.RLIM_INFINITY)

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    result = subprocess.run([sys.executable, "-m", "xaudit.reports", "audit", "--report", str(report), "--policy",
                             str(policy), "--junit", str(junit), "-q"],
                            capture_output=True, text=True, timeout=60, preexec_fn=limit_memory)
    assert_one_line_error(result.returncode, result.stderr, f"policy file {str(policy)!r} {what}",
                          "pass the path of a TOML policy file")
    assert result.stdout == "" and not junit.exists()


@pytest.mark.parametrize(("content", "said"), [("null", "a JSON null"), ("[1, 2]", "a JSON array"),
                                               ("3.5", "a JSON number"), ('"report"', "a JSON string"),
                                               ("true", "a JSON boolean")])
def test_a_report_that_is_not_an_object_is_named_in_jsons_words(content: str, said: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    # "holds a JSON NoneType": Python's name for null leaked
    path = tmp_path / "report.json"
    path.write_text(content, encoding="utf-8")
    code, out, err = run_cli(["audit", "--report", path], capsys)
    line = assert_one_line_error(code, err, f"holds {said}, not a report object")
    assert "NoneType" not in line and "list" not in line and out == ""


def test_a_check_without_a_threshold_is_told_to_add_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the fix said "write two checks for a range", the fix for min and max both given
    report = tmp_path / "report.json"
    report.write_text(json.dumps(_report()), encoding="utf-8")
    policy = tmp_path / "gate.toml"
    policy.write_text('[[check]]\nvalue = "metrics.test_accuracy"\n', encoding="utf-8")
    code, out, err = run_cli(["audit", "--report", report, "--policy", policy], capsys)
    line = assert_one_line_error(code, err, "(got none)", "add the threshold", "min = ", "max = ", "equals = ")
    assert "two checks" not in line and out == ""
    policy.write_text(_check("metrics.test_accuracy", "min", "0.5") + "max = 1.0\n", encoding="utf-8")
    code, _, err = run_cli(["audit", "--report", report, "--policy", policy], capsys)
    assert_one_line_error(code, err, "(got min, max)", "write two checks for a range")
