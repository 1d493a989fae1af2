"""The verdict at the top of the report: does the model generalize, which explanation to trust and at what
cost, which methods fail the sanity check, and whether the audit passed.

Everything here is read from the report.json content the other sections wrote (``metrics``,
``diagnostics``, ``methods``, ``recommendations``, ``audit``), so the summary can never say something the
rest of the report does not. :func:`summarize` is a pure function over that dict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._sections import Section

if TYPE_CHECKING:
    from ._build import ReportContext

#: Gap verdicts of :func:`xaudit.models.generalization_gap` read as "does the model generalize?".
GENERALIZES = {"no_overfitting": True, "mild": True, "overfitting": False, "severe": False, "underfitting": False}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1e3:.3g} ms" if value < 1.0 else f"{value:.3g} s"


def _generalization(report: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    metrics = report.get("metrics") or {}
    gap = (report.get("diagnostics") or {}).get("gap") or {}
    test, train = metrics.get("test_accuracy"), metrics.get("train_accuracy")
    verdict = gap.get("verdict")
    facts = {"test_accuracy": test, "train_accuracy": train, "gap": metrics.get("generalization_gap"),
             "gap_verdict": verdict, "generalizes": GENERALIZES.get(verdict) if verdict else None}
    head = f"Test accuracy {_pct(test)}" + (f" (train {_pct(train)})" if train is not None else "")
    if verdict:
        line = f"{head}; {gap.get('interpretation') or verdict.replace('_', ' ')}."
    else:
        line = f"{head}; the overfitting diagnostics were not part of this report."
    return facts, line


def _methods(report: Mapping[str, Any]) -> tuple[list[str], list[str], list[str], list[str]]:
    """Names of the methods that were run, pass the randomization check, fail it, and could not run."""
    ran, passing, failing, unsupported = [], [], [], []
    for m in report.get("methods") or []:
        if not m.get("supported", m.get("cost") is not None):
            unsupported.append(m["name"])
            continue
        ran.append(m["name"])
        passed = (m.get("quality") or {}).get("sanity_passed")
        if passed is True:
            passing.append(m["name"])
        elif passed is False:
            failing.append(m["name"])
    return ran, passing, failing, unsupported


def _deletion_words(entry: Mapping[str, Any]) -> str:
    """"deletion AUC 0.33 against 0.55 for a random map, faithfulness 0.39" from a recommendation or point."""
    auc, ref, faith = entry.get("deletion_auc"), entry.get("random_deletion_auc"), entry.get("faithfulness")
    words = []
    if auc is not None:
        words.append(f"deletion AUC {auc:.2g}" + (f" against {ref:.2g} for a random map" if ref is not None else ""))
    if faith is not None:
        words.append(f"faithfulness {faith:.2f}")
    return ", ".join(words)


def _trust(report: Mapping[str, Any], passing: Sequence[str], failing: Sequence[str]) -> tuple[dict[str, Any], str]:
    """The recommended method: the most faithful sane one within the largest budget, and the cheapest sane one.

    Only the recommendations name a method to trust, and they come from the same test as the verdicts' "faithful
    by deletion" (:func:`xaudit.explain._frontier.faithful_by_deletion`), so the two cannot disagree.
    """
    recs = [r for r in report.get("recommendations") or [] if r.get("method")]
    if recs:
        best = max(recs, key=lambda r: r["budget_s_per_sample"])
        cheapest = min(recs, key=lambda r: r["budget_s_per_sample"])
        cost = f"{_seconds(best['wall_s_per_sample'])} per sample"
        evidence = ", ".join(w for w in (_deletion_words(best), cost) if w)
        line = (f"Trust {best['method']}: the most faithful method that passes the model-randomization check and "
                f"beats a random map by deletion ({evidence}).")
        if cheapest["method"] != best["method"]:
            line += (f" Under {cheapest['budget']}, {cheapest['method']} is the best choice "
                     f"({_seconds(cheapest['wall_s_per_sample'])} per sample).")
        return {"trusted_method": best["method"], "trusted_s_per_sample": best["wall_s_per_sample"]}, line
    none = {"trusted_method": None, "trusted_s_per_sample": None}
    if failing and not passing:
        return none, "No explanation can be trusted: every checked method fails the model-randomization check."
    points = (report.get("frontier") or {}).get("points") or []
    if points and not passing:
        faithful = max((p for p in points if p.get("faithful") and p.get("faithfulness") is not None),
                       key=lambda p: p["faithfulness"], default=None)
        if faithful is not None:
            return none, (f"No method is recommended: the randomization check was not run. By deletion alone "
                          f"{faithful['method']} is the most faithful ({_deletion_words(faithful)}, "
                          f"{_seconds(faithful['wall_s_per_sample'])} per sample), which can reward maps that only "
                          "show the input.")
        if any(p.get("faithfulness") is not None for p in points):
            return none, ("No method is recommended: the randomization check was not run, and no method beats a "
                          "random map by deletion.")
    reasons = [r["reason"] for r in sorted(report.get("recommendations") or [], key=lambda r: r["budget_s_per_sample"])]
    if reasons:
        return none, reasons[-1]  # the largest budget's reason says why not even it has a method
    return none, "No method is recommended: explanation quality was not measured in this report."


def _audit(report: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    audit = report.get("audit")
    if not audit:
        return {"audit_passed": None, "audit_failed_checks": []}, None
    checks = audit.get("checks") or []
    failed = [c["name"] for c in checks if not c.get("passed")]
    if audit.get("passed"):
        line = f"Audit passed: all {len(checks)} checks are within their thresholds."
    else:
        line = f"Audit FAILED: {len(failed)} of {len(checks)} checks fail ({', '.join(failed) or 'see the audit'})."
    return {"audit_passed": bool(audit.get("passed")), "audit_failed_checks": failed}, line


def summarize(report: Mapping[str, Any]) -> dict[str, Any]:
    """report.json's ``summary``: the verdict ``lines`` (plain strings, page order) and the facts behind them."""
    generalization, gen_line = _generalization(report)
    ran, passing, failing, unsupported = _methods(report)
    trust, trust_line = _trust(report, passing, failing)
    audit, audit_line = _audit(report)
    lines = [gen_line, trust_line]
    if failing:
        lines.append(f"Fail the model-randomization check (their maps barely depend on the learned weights, so "
                     f"do not read them as the model's reasoning): {', '.join(failing)}.")
    elif passing:
        lines.append(f"All {len(passing)} checked methods pass the model-randomization check.")
    if unsupported:
        lines.append(f"Not run on this model: {', '.join(unsupported)} (reasons on their method pages).")
    if audit_line:
        lines.append(audit_line)
    return {"lines": lines, **generalization, **trust, "methods_run": ran, "sanity_passed": passing,
            "sanity_failed": failing, "unsupported": unsupported, **audit}


class SummarySection(Section):
    """The verdict: generalization, the explanation to trust at its cost, sanity failures, the audit outcome.

    It reads the other sections' JSON, so it is listed last (computed last) and rendered first.
    """

    id = "summary"
    title = "Summary"
    template = "summary.html.j2"
    needs_report = True
    render_first = True

    def json_part(self, ctx: ReportContext, report: Mapping[str, Any] | None = None) -> dict[str, Any]:
        # ``report`` is the content assembled so far (the sections before this one); without it there is
        # nothing to summarize yet, and the page still shows the verdict, computed in template_vars
        return {"summary": None if report is None else summarize(report)}

    def template_vars(self, ctx: ReportContext, report: Mapping[str, Any]) -> dict[str, Any]:
        # recomputed from the full report so the page is right even when report.json's copy predates a section
        return {"summary": summarize(report)}
