"""Notebook display: the ``_repr_html_`` of explanations, sweeps and overfitting diagnostics.

Result types in :mod:`xaudit.explain` and :mod:`xaudit.models` must not import :mod:`xaudit.reports` at module
level (data flows models → explain → reports), so their ``_repr_html_`` imports this module when a notebook
asks for it. Everything here renders with the report's own pieces — the autoescaping Jinja2 environment,
``fragment.html.j2`` (the report CSS scoped under ``.xaudit-report``, no ``<html>``/``<head>``), and the
figure functions of :mod:`._figures` — so a notebook shows what the HTML report would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from markupsafe import Markup

from . import _figures
from ._report import _environment, json_safe

if TYPE_CHECKING:
    from xaudit.explain._base import Explanation
    from xaudit.models._diagnostics import Diagnostics
    from xaudit.models._sweep_result import SweepResult

#: Samples drawn in an explanation's gallery (the cost table covers all of them).
MAX_SHOWN = 6


def fragment(body: str | Markup) -> str:
    """``body`` inside the report's scoped container and stylesheet: HTML a notebook can embed as is.

    ``body`` must already be escaped (rendered by the autoescaping environment or built with ``Markup``).
    """
    return _environment().get_template("fragment.html.j2").render(body=Markup(body))  # noqa: S704


def _titles(targets: np.ndarray) -> list[str]:
    # the explanation knows class indices, not class names: "#sample → explained class"
    return [f"#{i}\n→ {int(t)}" for i, t in enumerate(targets)]


def explanation_vars(exp: Explanation, *, max_shown: int = MAX_SHOWN) -> dict[str, Any]:
    """Template variables of the explanation card: method, cost per sample, settings and the gallery figure."""
    shown = min(len(exp), max_shown)
    inputs = exp.inputs[:shown].detach().cpu().float().numpy()
    attributions = exp.attributions[:shown].detach().cpu().float().numpy()
    targets = exp.targets[:shown].detach().cpu().numpy().reshape(-1)
    # signedness is read from the values, as in the report: methods do not declare it
    signed = bool((attributions < 0).any())
    return {"method": exp.method, "family": exp.family, "n_samples": len(exp), "n_shown": shown,
            "sample_shape": list(exp.inputs.shape[1:]), "config": json_safe(dict(exp.settings or exp.config)),
            "cost": exp.cost.per_sample(), "signed": signed, "layout": _figures.sample_layout(inputs.shape[1:]),
            "gallery_uri": _figures.sample_grid(inputs, attributions, _titles(targets), signed=signed)}


def explanation_html(exp: Explanation, *, max_shown: int = MAX_SHOWN) -> str:
    """A compact card for one explanation: method, samples, cost per sample and a gallery of the first few."""
    card = _environment().get_template("explanation.html.j2").render(**explanation_vars(exp, max_shown=max_shown))
    return fragment(card)


def sweep_html(result: SweepResult) -> str:
    """The sweep page (recommendation, points, curves, setup) as a notebook fragment, without explanation drift."""
    from ._sweep_report import SweepReport

    return SweepReport.from_result(result)._repr_html_()


def diagnostics_html(diagnostics: Diagnostics) -> str:
    """The report's overfitting section (cards, verdicts, reliability diagram, weight spectra) for notebooks."""
    from ._overfit_section import render_overfitting

    body = Markup('<div class="xaudit-report"><h3>Overfitting diagnostics</h3>{}</div>').format(
        render_overfitting(diagnostics.to_json()))
    return fragment(body)
