"""The report object: JSON from the sections, HTML rendered from it, both written atomically.

The HTML is one self-contained file: figures are base64 PNG ``data:`` URIs, the CSS is inline, fonts are
the system's, one short inline script sorts tables and shows one method page at a time (without it every
page shows), and there is no link, import or web address of any kind; a Content-Security-Policy forbids
loading anything. So the page opens offline in any browser years later (the reports of other tools broke
on widgets and CDNs: captum #1192, deepchecks #1654).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
import torch
from markupsafe import Markup

from xaudit.models._data import Dataset

from ._atomic import atomic_write_all
from ._build import ReportContext, build_context
from ._runtime import xaudit_version
from ._sections import DEFAULT_SECTIONS, Section, breakable, format_bytes, format_number
from ._subject import ModelSource

_TEMPLATES = Path(__file__).parent / "templates"


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        # every template renders HTML (the CSS is included verbatim), so escape everything
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = format_number
    env.filters["bytes"] = format_bytes
    env.filters["breakable"] = breakable
    return env


def json_safe(value: Any) -> Any:
    """Plain JSON values: tuples to lists, numpy/torch scalars to Python, NaN/Inf to null (JSON has neither)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, torch.Tensor):
        return json_safe(value.tolist())
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class ReportFiles(NamedTuple):
    """Where :func:`write_report` put the report."""

    html: Path
    json: Path


@dataclass(frozen=True, eq=False)
class Report:
    """A computed report: ``json`` is report.json's content; HTML is rendered from it on demand.

    >>> report = build_report("cnn", "digits", n_explain=8)
    >>> report.json["metrics"]["test_accuracy"]
    >>> report.write("xaudit-report")
    """

    json: dict[str, Any]
    context: ReportContext
    sections: tuple[Section, ...] = DEFAULT_SECTIONS

    def __repr__(self) -> str:
        # a summary: the dataclass repr printed all of report.json (70 KB for the quick start's report)
        accuracy = self.json.get("metrics", {}).get("test_accuracy")
        methods = [m.get("name") for m in self.json.get("methods", []) if isinstance(m, dict)]
        said = f"{accuracy:.4f}" if isinstance(accuracy, float) else repr(accuracy)
        return (f"Report(test_accuracy={said}, methods={methods}, sections={[s.id for s in self.sections]}; "
                "the numbers are in .json, the page in .to_html())")

    @classmethod
    def from_context(cls, ctx: ReportContext, sections: Sequence[Section] | None = None) -> Report:
        """Assemble report.json from each section's part; a section with ``needs_report = True`` (the audit,
        the summary) also receives the content assembled before it: ``json_part(ctx, content)``."""
        sections = tuple(DEFAULT_SECTIONS if sections is None else sections)
        content: dict[str, Any] = {"xaudit_version": xaudit_version(), "generated_utc": ctx.created_utc,
                                   "seed": ctx.seed, "sections": [s.id for s in sections]}
        for section in sections:
            if section.needs_report:
                # a plain-JSON copy: what the section reads is exactly what report.json will hold
                part = section.json_part(ctx, json_safe(content))  # type: ignore[call-arg]
            else:
                part = section.json_part(ctx)
            clash = sorted(content.keys() & part.keys())
            if clash:
                raise ValueError(f"section {section.id!r} writes report.json keys {clash} that are already set")
            content.update(part)
        return cls(json=json_safe(content), context=ctx, sections=sections)

    def to_json(self) -> str:
        return json.dumps(self.json, indent=2, allow_nan=False) + "\n"

    @functools.cached_property
    def _body(self) -> Markup:
        # rendered once: drawing the figures is most of the cost, and a Report never changes
        env = _environment()
        fragments = [(s, s.render(self.context, self.json, env)) for s in self.sections]
        return Markup(env.get_template("body.html.j2").render(report=self.json, sections=fragments))

    def to_html(self) -> str:
        """The whole self-contained HTML document."""
        return _environment().get_template("page.html.j2").render(report=self.json, body=self._body)

    def _repr_html_(self) -> str:
        # notebooks get the same sections inside a scoped container (no <html>/<head>)
        return _environment().get_template("fragment.html.j2").render(body=self._body)

    def write(self, out_dir: str | os.PathLike[str]) -> ReportFiles:
        """Write report.html and report.json into ``out_dir`` (created if needed), each atomically."""
        return write_report(self, out_dir)


def write_report(report: Report, out_dir: str | os.PathLike[str]) -> ReportFiles:
    """Render, then write ``report.html`` and ``report.json`` into ``out_dir``; rendering finishes before any write."""
    out = Path(out_dir)
    html, text = report.to_html(), report.to_json()
    out.mkdir(parents=True, exist_ok=True)
    # both or neither: a disk that fills up after the HTML must not leave a report without its JSON
    html_path, json_path = atomic_write_all([(out / "report.html", html.encode("utf-8")),
                                             (out / "report.json", text.encode("utf-8"))])
    return ReportFiles(html=html_path, json=json_path)


def build_report(
    model: ModelSource = "cnn",
    data: Dataset | str | os.PathLike[str] | None = None,
    *,
    methods: str | Sequence[str] | None = None,
    n_explain: int = 32,
    seed: int = 0,
    device: str | torch.device | None = None,
    epochs: int | None = None,
    state_dict: str | os.PathLike[str] | None = None,
    trust_pickle: bool = False,
    use_cache: bool = True,
    sections: Sequence[Section] | None = None,
    progress: Callable[[str], None] | None = None,
    memory_budget: int | str | None = None,
    quality: str = "full",
) -> Report:
    """Compute a report on ``model`` and ``data``: metrics, training curves, attributions and cost per method.

    ``model`` is a built-in name (trained with its reference recipe, or taken from the training cache),
    a model file, a ``"module:callable"`` factory, a ``torch.nn.Module``, or a ``LoadedModel`` /
    ``TrainResult``. ``data`` is a :class:`~xaudit.models.Dataset`, a built-in name or an ``.npz`` path
    (None: the built-in dataset a saved model records, else ``digits`` for ``cnn`` and ``digits-seq`` for
    ``gru`` and ``lstm``; a model file trained on the user's own file needs it named). ``methods``
    defaults to every registered method; ``n_explain`` seeded test samples are explained, each for its
    predicted class. ``device``
    None keeps the model where it is; ``"cpu"``, ``"cuda[:N]"`` or ``"auto"`` move it. ``epochs``
    overrides the training recipe (quick runs); ``progress`` receives one line per step;
    ``memory_budget`` (bytes or ``"2GiB"``) bounds each method's memory, chunking inputs to fit.
    ``quality`` scores the explanations: ``"full"`` (faithfulness, sanity, stability, the frontier),
    ``"fast"`` (deletion and insertion AUC only) or ``"none"``.
    """
    ctx = build_context(model, data, methods=methods, n_explain=n_explain, seed=seed, device=device,
                        epochs=epochs, state_dict=state_dict, trust_pickle=trust_pickle, use_cache=use_cache,
                        progress=progress, memory_budget=memory_budget, quality=quality)
    return Report.from_context(ctx, sections)
