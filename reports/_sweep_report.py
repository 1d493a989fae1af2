"""The sweep page: sweep.json (the :class:`SweepResult` as JSON, plus drift and provenance) and sweep.html
rendered from it — self-contained like report.html (inline CSS, base64 figures, no script or web address).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from markupsafe import Markup

from xaudit.models._sweep_result import SweepResult

from . import _sweep_figures as figures
from ._atomic import atomic_write_text
from ._drift import ExplanationDrift
from ._report import _environment, json_safe
from ._runtime import machine_info, xaudit_version


class SweepFiles(NamedTuple):
    """Where :func:`write_sweep_report` put the page."""

    html: Path
    json: Path


def sweep_json(result: SweepResult, drift: ExplanationDrift | None = None) -> dict[str, Any]:
    """sweep.json's content: the sweep, its explanation drift (or None) and where it ran."""
    content = {"xaudit_version": xaudit_version(),
               "generated_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               **result.to_json(), "drift": None if drift is None else drift.to_json(),
               "machine": machine_info(torch.device("cpu"))}
    return json_safe(content)


def _figures_for(report: Mapping[str, Any]) -> dict[str, Any]:
    rec = report["recommendation"]
    trials = {(t["point_index"], t["repeat"]): t for t in report["trials"]}
    runs = [(f"baseline #{rec['baseline']}: {rec['baseline_label']}", trials[(rec["baseline"], 0)]["history"])]
    if rec["chosen"] != rec["baseline"]:
        runs.append((f"recommended #{rec['chosen']}: {rec['label']}", trials[(rec["chosen"], 0)]["history"]))
    return {"curves_uri": figures.validation_curves(report["curves"]),
            "scatter_uri": figures.gap_scatter(report["points"], rec["chosen"], rec["baseline"]),
            "epochs_uri": figures.epoch_curves(runs),
            "drift_uri": figures.drift_plot(report["drift"]) if report.get("drift") else None}


def _render(template: str, report: Mapping[str, Any]) -> str:
    env = _environment()
    body = Markup(env.get_template("sweep_body.html.j2").render(report=report, **_figures_for(report)))
    return env.get_template(template).render(report=report, body=body)


@dataclass(frozen=True, eq=False)
class SweepReport:
    """A rendered-on-demand sweep page; ``json`` is sweep.json's content."""

    json: dict[str, Any]

    @classmethod
    def from_result(cls, result: SweepResult, drift: ExplanationDrift | None = None) -> SweepReport:
        return cls(sweep_json(result, drift))

    def to_json(self) -> str:
        return json.dumps(self.json, indent=2, allow_nan=False) + "\n"

    def to_html(self) -> str:
        return _render("sweep_page.html.j2", self.json)

    def _repr_html_(self) -> str:
        return _render("fragment.html.j2", self.json)

    def write(self, out_dir: str | os.PathLike[str]) -> SweepFiles:
        """Write sweep.html and sweep.json into ``out_dir``; both are rendered before either is written."""
        html, text = self.to_html(), self.to_json()
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return SweepFiles(html=atomic_write_text(out / "sweep.html", html),
                          json=atomic_write_text(out / "sweep.json", text))


def write_sweep_report(result: SweepResult, out_dir: str | os.PathLike[str],
                       drift: ExplanationDrift | None = None) -> SweepFiles:
    """Render and write ``sweep.html`` and ``sweep.json`` for ``result`` into ``out_dir``."""
    return SweepReport.from_result(result, drift).write(out_dir)
