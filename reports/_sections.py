"""Report sections: each turns a :class:`ReportContext` into its part of report.json and an HTML fragment.

A section's JSON part is a mapping of top-level report.json keys; keys of different sections must not
collide. Its HTML is rendered from that same JSON (plus figures drawn from the context's tensors), so the
page and the JSON can never disagree. New sections subclass :class:`Section` and join
:data:`DEFAULT_SECTIONS` or are passed to ``build_report(sections=...)``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import jinja2
import numpy as np
from markupsafe import Markup, escape

from xaudit.explain._cost import NVML_COUNTER_MIN_S, watts_per_core

from . import _figures
from ._build import SHORT_CALL_REPEATS, SHORT_CALL_S, MethodResult, ReportContext
from ._model_card import model_card
from ._runtime import _version
from ._subject import describe_subject

#: Samples drawn per method in the attribution figures (all explained samples are measured).
MAX_EXAMPLES_SHOWN = 6


class Section:
    """One part of the report. Subclasses set ``id``, ``title`` and ``template`` and implement ``json_part``."""

    id: ClassVar[str] = ""
    title: ClassVar[str] = ""
    template: ClassVar[str] = ""
    #: Shown at the top of the page whatever its place in the list (the summary is computed last).
    render_first: ClassVar[bool] = False
    #: Whether ``json_part`` also takes the report.json content assembled before it (the audit, the summary).
    needs_report: ClassVar[bool] = False

    def json_part(self, ctx: ReportContext) -> dict[str, Any]:
        """This section's top-level entries of report.json (plain JSON values only)."""
        raise NotImplementedError(f"{type(self).__name__} must implement json_part")

    def template_vars(self, ctx: ReportContext, report: Mapping[str, Any]) -> dict[str, Any]:
        """Extra variables for the template (figures, derived values); the full report JSON is always passed."""
        return {}

    def render(self, ctx: ReportContext, report: Mapping[str, Any], env: jinja2.Environment) -> Markup:
        """The section's HTML fragment (autoescaped by the environment)."""
        html = env.get_template(self.template).render(report=report, section=self,
                                                      **self.template_vars(ctx, report))
        return Markup(html)  # noqa: S704 - produced by an autoescaping environment

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ModelSection(Section):
    """What is audited, as a model card: architecture and layers, size, input layout, classes, data and splits,
    training recipe and epochs, where the weights came from, intended use and limitations."""

    id = "model"
    title = "Model and data"
    template = "model.html.j2"

    def json_part(self, ctx: ReportContext) -> dict[str, Any]:
        return {**describe_subject(ctx.subject), **model_card(ctx.subject, len(ctx.indices))}


class PerformanceSection(Section):
    """Train and test accuracy, the generalization gap, and the training curves."""

    id = "performance"
    title = "Accuracy and training"
    template = "performance.html.j2"

    def json_part(self, ctx: ReportContext) -> dict[str, Any]:
        history = [dataclasses.asdict(record) for record in ctx.subject.history]
        return {"metrics": dict(ctx.metrics), "training": {"epochs_run": len(history), "history": history}}

    def template_vars(self, ctx: ReportContext, report: Mapping[str, Any]) -> dict[str, Any]:
        history = report["training"]["history"]
        return {"curves": _figures.training_curves(history) if history else None}


def _figure_title(index: int, label: str, prediction: str) -> str:
    def short(name: str) -> str:
        name = name if len(name) <= 10 else name[:9] + "…"
        return name.replace("$", r"\$")  # a "$" pair would switch matplotlib to math mode

    return f"#{index}\n{short(label)} → {short(prediction)}"


class AttributionSection(Section):
    """One page per method: its paper and settings, cost per sample, quality numbers and sanity verdict in
    words, and a gallery of explained test samples (overlays for images, per-time-step heatmaps for
    sequences), or the reason it could not run. The pages render from the ``methods`` entries of report.json."""

    id = "attributions"
    title = "Explanation methods"
    template = "attributions.html.j2"

    def json_part(self, ctx: ReportContext) -> dict[str, Any]:
        names = ctx.subject.class_names
        return {"examples": {
            "test_indices": ctx.indices.tolist(),
            "labels": ctx.labels.tolist(),
            "predictions": ctx.targets.tolist(),
            "label_names": [names[i] if i < len(names) else str(i) for i in ctx.labels.tolist()],
            "prediction_names": [names[i] for i in ctx.targets.tolist()],
            "explained_class": "predicted",
            "n_explained": len(ctx.indices),
            "n_shown": min(len(ctx.indices), MAX_EXAMPLES_SHOWN),
            "background": ctx.background or None,
            "layout": _figures.sample_layout(ctx.subject.dataset.input_shape),
        }}

    def template_vars(self, ctx: ReportContext, report: Mapping[str, Any]) -> dict[str, Any]:
        examples = report["examples"]
        shown = examples["n_shown"]
        titles = [_figure_title(i, lab, pred) for i, lab, pred in
                  zip(examples["test_indices"], examples["label_names"], examples["prediction_names"])][:shown]
        inputs = ctx.subject.dataset.x_test[ctx.indices[:shown]].numpy()
        galleries: dict[str, dict[str, Any]] = {}
        for result in ctx.methods:
            if result.explanation is None:
                continue
            attributions = result.explanation.attributions[:shown].numpy()
            # signedness is read from the values: methods do not declare it, and abs-valued variants exist
            signed = bool((attributions < 0).any())
            galleries[result.name] = {"signed": signed,
                                      "uri": _figures.sample_grid(inputs, attributions, titles, signed=signed)}
        # one page per method: its report.json entry (cost, quality, verdict) next to its gallery
        entries = report.get("methods") or [_method_entry(r) for r in ctx.methods]  # no cost section: bare entries
        pages = [{"m": m, "gallery": galleries.get(m["name"])} for m in entries]
        return {"inputs_uri": _figures.sample_grid(inputs, None, titles), "pages": pages,
                "random_map": report.get("random_map"),
                "rows": list(zip(examples["test_indices"], examples["label_names"],
                                 examples["prediction_names"]))[:shown]}


def _method_entry(result: MethodResult) -> dict[str, Any]:
    """A method's report.json entry without its cost (:class:`CostSection` adds that)."""
    exp = result.explanation
    return {"name": result.name, "family": result.family, "paper": result.paper, "supported": result.supported,
            "reason": result.reason, "failed": result.failed, "capabilities": dict(result.capabilities),
            "config": None if exp is None else dict(exp.config),
            # what the call ran with on these inputs (automatic values resolved, inapplicable ones left out)
            "settings": None if exp is None else dict(exp.settings),
            "quality": dict(result.quality)}


def _memory_note(sources: set[str]) -> str:
    if sources == {"rss"}:
        return ("peak resident set size above the level at the start of the call (the kernel's high-water "
                "mark is reset through /proc/self/clear_refs, and the heap's free pages given back to the system "
                "with malloc_trim, first, so it is the method's own peak, whatever ran before it)")
    if sources == {"cuda_max_memory_allocated"}:
        return "torch.cuda.max_memory_allocated above the allocation at the start of the call"
    return "process peak resident set size above the start of the call (lifetime peak: could not be reset)"


class CostSection(Section):
    """Per-method cost table (the report.json ``methods`` list) and how it was measured."""

    id = "cost"
    title = "Cost of each method"
    template = "cost.html.j2"

    def json_part(self, ctx: ReportContext) -> dict[str, Any]:
        methods = []
        for result in ctx.methods:
            entry = _method_entry(result)
            exp = result.explanation
            if exp is None:
                entry.update(n_samples=0, fit_wall_s=None, cost=None)
            else:
                entry.update(n_samples=len(exp), fit_wall_s=result.fit_wall_s, plan=dict(exp.plan),
                             cost=exp.cost.per_sample())
            methods.append(entry)
        costs = [m["cost"] for m in methods if m["cost"]]
        energy_sources = sorted({c["energy_source"] for c in costs})
        measurement = {
            "machine": ctx.machine,
            "device": str(ctx.device),
            "n_samples": len(ctx.indices),
            "warmup": ("one untimed gradient pass over all the explained samples before any method (where the "
                       "model's output has a gradient with respect to its input), and each method once, untimed, "
                       "on one sample before its measured call"),
            "timing": ("wall: time.perf_counter (CUDA events on GPU); CPU: time.process_time, all threads summed; "
                       "one-time setup (importing the library a method calls, its private model copy) is done "
                       f"before the clock starts; a call shorter than {SHORT_CALL_S:g} s is timed {SHORT_CALL_REPEATS} "
                       "times and the fastest kept"),
            "memory": _memory_note({c["memory_source"] for c in costs}),
            "memory_budget_bytes": ctx.memory_budget_bytes,
            "flops": "forward + input-gradient backward FLOPs of one sample × the counted model evaluations",
            "energy_sources": energy_sources,
            "watts_per_core_estimate": watts_per_core() if "estimate" in energy_sources else None,
            "nvml_counter_min_s": NVML_COUNTER_MIN_S,
            "figures": {"matplotlib": _version("matplotlib"), "seaborn": _version("seaborn"),
                        "jinja2": _version("jinja2"), "dpi": _figures.DPI,
                        "how": "drawn headless with matplotlib's Agg canvas and embedded as base64 PNG data: URIs"},
        }
        return {"methods": methods, "measurement": measurement}


class MeasurementSection(Section):
    """How every figure of the report was measured: machine, OS, device, versions, timing, memory and energy.

    It writes no report.json key of its own: it renders the ``measurement`` object :class:`CostSection`
    writes, and the quality metrics' settings, in one place.
    """

    id = "measurement"
    title = "How each figure was measured"
    template = "measurement.html.j2"

    def json_part(self, ctx: ReportContext) -> dict[str, Any]:
        return {}


def format_number(value: float | None, unit: str = "", *, scale: float = 1.0, digits: int = 3) -> str:
    """``value × scale`` with ``digits`` significant digits and an SI prefix for large numbers; "–" for None."""
    if value is None or not np.isfinite(value):
        return "–"
    value = float(value) * scale
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor and unit not in ("ms", "J", "%"):
            return f"{value / factor:.{digits}g} {prefix}{unit}".strip()
    return f"{value:.{digits}g} {unit}".strip()


# Inside an identifier: after ".", "_", "/" or "-" when a letter or "[" follows, and before "[" after a letter or
# "]" (digits stay together, so "0.95" and "features.0" never split).
_IDENTIFIER_BREAK = re.compile(r"(?<=.[._/-])(?=[A-Za-z\[])|(?<=[A-Za-z\]])(?=\[)")
#: A piece longer than this with no such place (a hash, a name without separators) may wrap every so many characters.
_LONGEST_PIECE = 32


def breakable(text: object, min_length: int = 20) -> Markup:
    """``text`` escaped, with ``<wbr>`` line-break opportunities inside its tokens of ``min_length`` characters or more.

    Table cells keep their words whole (the CSS never breaks inside a word), so an identifier such as
    ``methods[integrated_gradients].cost.wall_s_per_sample`` would otherwise set its column's narrowest
    width and push the table wider than the page: ``<wbr>`` lets it wrap after a dot, underscore, slash or
    hyphen, and only where its column is too narrow. Shorter tokens (words, ``features.0.weight``) are left
    alone. ``<wbr>`` adds no character, so the text copied, searched or sorted on is unchanged.
    """
    if isinstance(text, Markup):
        return text
    wbr = Markup("<wbr>")
    parts: list[Markup] = []
    for token in re.split(r"(\s+)", str(text)):
        if len(token) < min_length or token.isspace():
            parts.append(escape(token))
            continue
        pieces = [piece[i:i + _LONGEST_PIECE] for piece in _IDENTIFIER_BREAK.split(token)
                  for i in range(0, len(piece), _LONGEST_PIECE)]
        parts.append(wbr.join(escape(piece) for piece in pieces))
    return Markup("").join(parts)


def format_bytes(value: float | None) -> str:
    if value is None:
        return "–"
    for factor, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {unit}"
    return f"{int(value)} B"


# imported here, not at the top: these sections subclass Section, defined above
from ._overfit_section import OverfittingSection  # noqa: E402
from ._quality_sections import FrontierSection, QualitySection, SampleCurveSection  # noqa: E402
from ._summary_section import SummarySection  # noqa: E402
from ._audit import AuditSection  # noqa: E402

DEFAULT_SECTIONS: tuple[Section, ...] = (ModelSection(), PerformanceSection(), OverfittingSection(), CostSection(),
                                         QualitySection(), FrontierSection(), SampleCurveSection(),
                                         AttributionSection(), MeasurementSection(), AuditSection(), SummarySection())
"""The sections of a standard report, in page order; the summary reads all the others, so it comes last in the
list and is drawn first on the page (``render_first``)."""
