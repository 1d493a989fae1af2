"""The audit gate: policy parsing and its errors, check evaluation on hand-built report.json dicts, the
``xaudit audit`` exit codes (0 pass, 1 fail, 2 usage), JUnit XML, and report.json's ``audit`` entry."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from _cli_helpers import assert_one_line_error, read_report_json, run_cli
from xaudit.models._errors import XauditError
from xaudit.reports import AuditSection, Policy, audit, load_policy
from xaudit.reports._audit_policy import parse_policy


def _report() -> dict[str, Any]:
    """A small report.json: two run methods (one unsupported), quality on one, a diagnostics entry."""
    return {
        "metrics": {"test_accuracy": 0.9, "generalization_gap": 0.04},
        "diagnostics": {"calibration": {"ece": 0.02}},
        "methods": [
            {"name": "saliency", "supported": True, "reason": None,
             "cost": {"wall_s_per_sample": 0.001}, "quality": {"deletion_auc": 0.3, "sanity_passed": True}},
            {"name": "integrated_gradients", "supported": True, "reason": None,
             "cost": {"wall_s_per_sample": 0.02}, "quality": {"deletion_auc": None, "sanity_passed": False}},
            {"name": "gradcam", "supported": False, "reason": "no conv layer", "cost": None, "quality": {}},
        ],
        "frontier": None,
    }


def _policy(body: str) -> Policy:
    return parse_policy(body, source="test.toml")


def _check(value: str, rule: str, threshold: str, name: str | None = None) -> str:
    named = f'name = "{name}"\n' if name else ""
    return f'[[check]]\n{named}value = "{value}"\n{rule} = {threshold}\n'


# ---- policy parsing -------------------------------------------------------------------------------------

def test_default_policy_loads_and_every_check_says_why() -> None:
    policy = load_policy(None)
    assert policy.name == "default" and policy.source == "default"
    assert [c.value for c in policy.checks][:3] == ["metrics.test_accuracy", "metrics.generalization_gap",
                                                    "diagnostics.calibration.ece"]
    assert all(c.why for c in policy.checks)
    assert load_policy("default") == policy


def test_default_trust_check_asks_more_than_a_recommendation_already_has() -> None:
    """Every recommendation is faithful by deletion (faithfulness >= FAITHFUL_MIN); a threshold at or below
    that would pass any budget with a recommendation, and above 1 nothing could pass."""
    from xaudit.explain._frontier import FAITHFUL_MIN

    (trust,) = [c for c in load_policy(None).checks if c.value == "recommendations[*].faithfulness"]
    assert trust.rule == "min" and FAITHFUL_MIN < trust.threshold < 1.0


def test_policy_file_parses_rules_and_names(tmp_path: Path) -> None:
    file = tmp_path / "gate.toml"
    file.write_text('name = "gate"\n' + _check("metrics.test_accuracy", "min", "1", name="acc")
                    + _check("methods[saliency].quality.sanity_passed", "equals", "true"), encoding="utf-8")
    policy = load_policy(file)
    assert policy.name == "gate" and policy.source == str(file)
    acc, sanity = policy.checks
    assert (acc.name, acc.rule, acc.threshold) == ("acc", "min", 1.0)
    assert sanity.name == "methods[saliency].quality.sanity_passed" and sanity.threshold is True
    assert sanity.steps == (("key", "methods"), ("select", "saliency"), ("key", "quality"),
                            ("key", "sanity_passed"))


@pytest.mark.parametrize(("body", "fragments"), [
    ("[[check]\nvalue=", ("not valid TOML", "line 1")),
    ('nmae = "x"\n' + _check("metrics.test_accuracy", "min", "0.9"), ("unknown top-level key 'nmae'", "'name'")),
    ('[[check]]\nvalue = "metrics.test_accuracy"\nmni = 0.9\n', ("unknown check key 'mni'", "did you mean 'min'")),
    ('[[check]]\nmin = 0.9\n', ("has no 'value'",)),
    (_check("metrics.test_accuracy", "min", '"0.9"'), ("is not a number", "no quotes")),
    (_check("metrics.test_accuracy", "max", "true"), ("is not a number",)),
    (_check("metrics.test_accuracy", "min", "nan"), ("is not a number",)),
    ('[[check]]\nvalue = "metrics.test_accuracy"\nmin = 0.9\nmax = 1.0\n', ("exactly one of min, max or equals",)),
    ('[[check]]\nvalue = "metrics.test_accuracy"\n', ("exactly one of", "got none")),
    (_check("metrics..test_accuracy", "min", "0.9"), ("is not a report.json path",)),
    (_check("methods[].cost", "min", "0.9"), ("is not a report.json path",)),
    ('name = "x"\n', ("has no checks",)),
    ('[check]\nvalue = "metrics.test_accuracy"\nmin = 0.9\n', ("[[check]]",)),
    (_check("metrics.test_accuracy", "min", "0.9", name="a") + _check("metrics.generalization_gap", "max", "1", name="a"),
     ("two checks are named 'a'",)),
    ('name = 3\n' + _check("metrics.test_accuracy", "min", "0.9"), ("'name' must be a non-empty string",)),
])
def test_bad_policy_is_one_error(body: str, fragments: tuple[str, ...]) -> None:
    with pytest.raises(XauditError) as info:
        _policy(body)
    message = str(info.value)
    assert "test.toml" in message and "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_missing_policy_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(XauditError, match="does not exist"):
        load_policy(tmp_path / "nope.toml")
    with pytest.raises(XauditError, match="is a directory"):
        load_policy(tmp_path)


# ---- evaluation -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rule", "threshold", "status"), [
    ("min", "0.9", "passed"),    # exactly at the threshold passes
    ("min", "0.89", "passed"),
    ("min", "0.91", "failed"),
    ("max", "0.9", "passed"),
    ("max", "0.91", "passed"),
    ("max", "0.89", "failed"),
    ("equals", "0.9", "passed"),
    ("equals", "1", "failed"),
])
def test_threshold_oracles(rule: str, threshold: str, status: str) -> None:
    result = audit(_report(), _policy(_check("metrics.test_accuracy", rule, threshold)))
    (check,) = result.checks
    assert (check.value, check.status, check.passed, result.passed) == (0.9, status, status == "passed",
                                                                       status == "passed")


@pytest.mark.parametrize(("value", "rule", "threshold", "status"), [
    (1.0 - 950 / 1000, "max", "0.05", "passed"),   # 0.050000000000000044: 100% train, 95.0% test
    (0.1 + 0.2, "max", "0.3", "passed"),           # 0.30000000000000004
    (0.7 - 0.6 - 0.1, "min", "0", "passed"),       # -2.8e-17 at a threshold of 0
    (0.1 + 0.2, "equals", "0.3", "passed"),
    (0.05 * (1 + 2e-9), "max", "0.05", "failed"),  # beyond 1e-9 relative: a real excess
    (0.95 * (1 - 2e-9), "min", "0.95", "failed"),
])
def test_float_rounding_never_fails_a_check(value: float, rule: str, threshold: str, status: str) -> None:
    result = audit({"metrics": {"x": value}}, _policy(_check("metrics.x", rule, threshold)))
    (check,) = result.checks
    assert check.status == status, check.note
    if status == "failed":  # the note shows the digits that make it fail, never "0.05 is not <= 0.05"
        shown = check.note.partition(" is not ")[0]
        assert float(shown) == pytest.approx(value, rel=5e-9) and float(shown) != float(threshold)
        assert shown in result.table() and shown in result.to_junit_xml()


def test_wildcard_expands_per_method_and_skips_unsupported() -> None:
    result = audit(_report(), _policy(_check("methods[*].cost.wall_s_per_sample", "max", "0.01", name="cost")))
    assert [(c.name, c.status, c.value) for c in result.checks] == [
        ("cost [saliency]", "passed", 0.001),
        ("cost [integrated_gradients]", "failed", 0.02),
        ("cost [gradcam]", "skipped", None)]
    assert result.checks[1].path == "methods[integrated_gradients].cost.wall_s_per_sample"
    assert "no conv layer" in result.checks[2].note and result.checks[2].passed
    assert not result.passed


def test_all_supported_wildcard_passes_with_a_skip() -> None:
    result = audit(_report(), _policy(_check("methods[*].cost.wall_s_per_sample", "max", "1")))
    assert result.passed and result.count("skipped") == 1


def test_named_method_sanity() -> None:
    policy = _policy(_check("methods[saliency].quality.sanity_passed", "equals", "true", name="s")
                     + _check("methods[integrated_gradients].quality.sanity_passed", "equals", "true", name="ig"))
    s, ig = audit(_report(), policy).checks
    assert (s.status, ig.status) == ("passed", "failed")


@pytest.mark.parametrize(("path", "note"), [
    ("methods[integrated_gradients].quality.deletion_auc", "not measured"),   # null
    ("methods[saliency].quality.infidelity", "not measured"),                  # --quality fast leaves it out
    ("frontier.pareto", "not measured"),                                       # null parent
    ("methods[lime].cost.wall_s_per_sample", "not run"),                       # registered but not run
])
def test_missing_value_fails_never_passes(path: str, note: str) -> None:
    result = audit(_report(), _policy(_check(path, "max", "1000")))
    (check,) = result.checks
    assert check.status == "failed" and not check.passed and check.value is None
    assert note in check.note
    assert not result.passed


def test_only_skipped_checks_fail_the_audit() -> None:
    result = audit(_report(), _policy(_check("methods[gradcam].cost.wall_s_per_sample", "max", "1")))
    assert [c.status for c in result.checks] == ["skipped"] and not result.passed


@pytest.mark.parametrize(("path", "rule", "fragments"), [
    ("metrics.test_acuracy", "min", ("names nothing", "did you mean 'test_accuracy'")),
    ("metrcs.test_accuracy", "min", ("names nothing", "did you mean 'metrics'")),
    ("methods[salency].cost.wall_s_per_sample", "max", ("names nothing", "did you mean 'saliency'")),
    ("metrics", "min", ("not a number",)),
    ("methods[saliency].quality.sanity_passed", "min", ("not a number", "equals")),
    ("metrics.test_accuracy.x", "min", ("not an object",)),
    ("metrics[0]", "min", ("not a list",)),
])
def test_path_mistakes_are_usage_errors(path: str, rule: str, fragments: tuple[str, ...]) -> None:
    with pytest.raises(XauditError) as info:
        audit(_report(), _policy(_check(path, rule, "1")))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_equals_kind_mismatch_is_a_usage_error() -> None:
    with pytest.raises(XauditError, match="same kind"):
        audit(_report(), _policy(_check("metrics.test_accuracy", "equals", "true")))


def test_nan_value_is_not_measured() -> None:
    report = _report()
    report["metrics"]["test_accuracy"] = float("nan")
    (check,) = audit(report, _policy(_check("metrics.test_accuracy", "min", "0"))).checks
    assert check.status == "failed" and "not measured" in check.note


def test_json_table_and_junit() -> None:
    policy = _policy('name = "gate <&>"\n' + _check("metrics.test_accuracy", "min", "0.95", name="acc")
                     + _check("methods[*].cost.wall_s_per_sample", "max", "0.01", name="cost"))
    result = audit(_report(), policy)
    data = result.to_json()
    assert data["passed"] is False and data["policy"] == "gate <&>"
    assert (data["n_passed"], data["n_failed"], data["n_skipped"]) == (1, 2, 1)
    assert data["checks"][0] == {"name": "acc", "value": 0.9, "threshold": 0.95, "rule": "min", "op": ">=",
                                 "passed": False, "status": "failed", "path": "metrics.test_accuracy",
                                 "note": "0.9 is not >= 0.95", "why": ""}
    json.dumps(data, allow_nan=False)
    table = result.table()
    assert "FAIL    acc" in table and "SKIP" in table and table.rstrip().endswith("1 passed, 2 failed, 1 skipped")
    root = ET.fromstring(result.to_junit_xml())
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "4" and suite.get("failures") == "2"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == ["acc", "cost [saliency]", "cost [integrated_gradients]", "cost [gradcam]"]
    failure = cases["acc"].find("failure")
    assert failure is not None and "0.9" in failure.get("message", "") and "0.95" in failure.get("message", "")
    assert cases["cost [saliency]"].find("failure") is None
    assert cases["cost [gradcam]"].find("skipped") is not None


def test_repr_html_escapes_names() -> None:
    policy = _policy('name = "<script>x</script>"\n' + _check("metrics.test_accuracy", "min", "0.5", name="<b>"))
    html = audit(_report(), policy)._repr_html_()
    assert "<script>x" not in html and "&lt;b&gt;" in html and "passed" in html


# ---- CLI ------------------------------------------------------------------------------------------------

@pytest.fixture()
def report_file(tmp_path: Path) -> Path:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(_report()), encoding="utf-8")
    return path


def _policy_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_cli_exit_codes_pass_and_fail(tmp_path: Path, report_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok = _policy_file(tmp_path, _check("metrics.test_accuracy", "min", "0.9"))
    code, out, _ = run_cli(["audit", "--report", report_file, "--policy", ok], capsys)
    assert code == 0 and "audit passed" in out
    bad = _policy_file(tmp_path, _check("metrics.test_accuracy", "min", "0.95"))
    junit = tmp_path / "ci" / "audit.xml"
    code, out, _ = run_cli(["audit", "--report", report_file, "--policy", bad, "--junit", junit], capsys)
    assert code == 1 and "audit FAILED" in out
    assert ET.parse(junit).getroot().find("testsuite/testcase/failure") is not None


@pytest.mark.parametrize(("body", "fragment"), [
    (None, "does not exist"),
    ("[[check]\n", "not valid TOML"),
    ('[[check]]\nvalue = "metrics.test_accuracy"\nmni = 0.9\n', "did you mean 'min'"),
    (_check("metrics.test_acuracy", "min", "0.9"), "names nothing in report.json"),
    (_check("metrics.test_accuracy", "min", '"high"'), "is not a number"),
])
def test_cli_usage_errors_exit_2_and_write_nothing(tmp_path: Path, report_file: Path, body: str | None, fragment: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "missing.toml" if body is None else _policy_file(tmp_path, body)
    junit = tmp_path / "ci" / "audit.xml"
    code, out, err = run_cli(["audit", "--report", report_file, "--policy", policy, "--junit", junit], capsys)
    assert_one_line_error(code, err, fragment)
    assert out == "" and not junit.exists() and not junit.parent.exists()


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_cli_bad_report_file(tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "report.json"
    path.write_text(content, encoding="utf-8")
    code, _, err = run_cli(["audit", "--report", path], capsys)
    assert_one_line_error(code, err, "--report")


def test_cli_report_with_out_is_a_usage_error(report_file: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["audit", "--report", report_file, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(code, err, "--out")
    assert not (tmp_path / "o").exists()


def test_cli_end_to_end_quick_model_fails_default_and_writes_audit(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out_dir, junit = tmp_path / "report", tmp_path / "audit.xml"
    code, out, err = run_cli(["audit", "--epochs", "1", "--methods", "saliency", "--n-explain", "4",
                              "--quality", "fast", "-q", "--out", out_dir, "--junit", junit], capsys)
    assert code == 1, err
    report = read_report_json(out_dir)
    assert report["audit"]["passed"] is False and report["audit"]["policy"] == "default"
    by_name = {c["name"]: c for c in report["audit"]["checks"]}
    assert by_name["test accuracy"]["value"] == pytest.approx(report["metrics"]["test_accuracy"])
    assert by_name["test accuracy"]["status"] == "failed"  # one epoch is far from 95%
    assert "audit" in report["sections"]
    assert report["summary"]["audit_passed"] is False  # the summary, computed after the audit, reports it
    assert "Audit" in (out_dir / "report.html").read_text(encoding="utf-8")
    cases = ET.parse(junit).getroot().findall("testsuite/testcase")
    assert len(cases) == len(report["audit"]["checks"])
    # the table printed is the audit of the written report
    assert "test accuracy" in out and "audit FAILED" in out
    # auditing the written report.json again gives the same verdict without recomputing
    code, again, _ = run_cli(["audit", "--report", out_dir / "report.json"], capsys)
    assert code == 1 and again.splitlines()[1:] == out.splitlines()[1:]


def test_audit_section_sees_the_report_so_far() -> None:
    from xaudit.reports._report import Report

    class FakeCtx:
        created_utc, seed = "now", 0

    class Metrics(AuditSection.__mro__[1]):  # a plain Section writing metrics
        id = "metrics"

        def json_part(self, ctx: Any) -> dict[str, Any]:
            return {"metrics": copy.deepcopy(_report()["metrics"])}

    policy = _policy(_check("metrics.test_accuracy", "min", "0.5"))
    report = Report.from_context(FakeCtx(), [Metrics(), AuditSection(policy)])  # type: ignore[arg-type]
    assert report.json["audit"]["passed"] is True
    assert report.json["audit"]["checks"][0]["value"] == 0.9


def test_a_null_value_cites_the_reason_its_entry_gives() -> None:
    # --quality fast: no sanity check, so no recommendation; the audit says so instead of only "null"
    report = _report()
    why = "The randomization check was not run, so no method is recommended under 1 ms/sample: use --quality full."
    report["recommendations"] = [{"budget": "1 ms/sample", "method": None, "faithfulness": None, "reason": why},
                                 {"budget": "1 s/sample", "method": "saliency", "faithfulness": 0.4, "reason": "ok",
                                  "random_deletion_auc": 0.5}]
    first, second = audit(report, _policy(_check("recommendations[*].faithfulness", "min", "0.3"))).checks
    assert first.status == "failed" and "not measured" in first.note and "randomization check was not run" in first.note
    assert second.status == "passed"


def test_timing_checks_say_when_the_machine_was_busy() -> None:
    report = _report()
    report["measurement"] = {"machine": {"contention": {"busy": True, "other_cpu_share": 0.6}}}
    policy = _policy(_check("methods[saliency].cost.wall_s_per_sample", "max", "1", name="t")
                     + _check("metrics.test_accuracy", "min", "0.5", name="a"))
    timing, accuracy = audit(report, policy).checks
    assert timing.status == "passed" and "busy machine (other processes took 60% of the CPU)" in timing.note
    assert "busy" not in accuracy.note
    report["measurement"]["machine"]["contention"]["busy"] = False
    assert "busy" not in audit(report, policy).checks[0].note


def test_a_report_with_faithfulness_on_the_old_scale_is_refused_for_faithfulness_checks() -> None:
    report = _report()
    report["recommendations"] = [{"budget": "1 s/sample", "method": "saliency", "faithfulness": 0.65}]  # 1 - AUC
    policy = _policy(_check("recommendations[*].faithfulness", "min", "0.3"))
    with pytest.raises(XauditError, match="scale before xaudit measured it against a random map") as err:
        audit(report, policy)
    assert "\n" not in str(err.value)
    assert audit(report, _policy(_check("metrics.test_accuracy", "min", "0.5"))).passed  # other checks still run
    report["recommendations"][0]["random_deletion_auc"] = 0.5
    assert audit(report, policy).passed


def test_a_method_that_failed_on_the_model_fails_its_checks_instead_of_being_skipped() -> None:
    # unsupported (a capability) is skipped; supported but failed at run time (NaN attributions, say) is not
    report = _report()
    report["methods"].append({"name": "lime", "supported": False, "failed": True, "cost": None, "quality": {},
                              "reason": "lime gave NaN/Inf attributions for 2 of 32 samples (first: #3): ..."})
    checks = audit(report, _policy(_check("methods[*].cost.wall_s_per_sample", "max", "1"))).checks
    by_name = {c.name.split("[")[-1].rstrip("]"): c for c in checks}
    assert by_name["gradcam"].status == "skipped"
    assert by_name["lime"].status == "failed" and "lime failed on this model: lime gave NaN/Inf" in by_name["lime"].note
    assert not audit(report, _policy(_check("methods[*].cost.wall_s_per_sample", "max", "1"))).passed


def test_a_report_marks_a_method_that_failed_at_run_time(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import torch
    from torch import nn

    from xaudit.models import Dataset
    from xaudit.reports import build_report

    class SqrtNet(nn.Module):  # finite outputs, an infinite gradient at every input that is exactly 0
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(64, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x.flatten(1).abs().sqrt())

    monkeypatch.setenv("XAUDIT_CACHE_DIR", str(tmp_path / "cache"))
    g = torch.Generator().manual_seed(0)
    x_test = torch.rand(4, 1, 8, 8, generator=g) + 0.1
    x_test[:, 0, 0, 0] = 0.0
    data = Dataset(name="tiny", kind="image", x_train=torch.rand(12, 1, 8, 8, generator=g) + 0.1,
                   y_train=torch.arange(12) % 3, x_test=x_test, y_test=torch.arange(4) % 3, class_names=("a", "b", "c"))
    torch.manual_seed(0)
    report = build_report(SqrtNet(), data, methods=["saliency", "occlusion"], n_explain=2, quality="none")
    saliency, occlusion = report.json["methods"]
    assert saliency["failed"] is True and saliency["supported"] is False and "NaN/Inf" in saliency["reason"]
    assert occlusion["failed"] is False and occlusion["cost"] is not None
    result = audit(report, _policy(_check("methods[*].cost.wall_s_per_sample", "max", "10")))
    assert [c.status for c in result.checks] == ["failed", "passed"] and not result.passed
