"""Sweep grids: the training knobs a sweep may vary, parsed from strings into typed values once, at the edge.

A grid maps knob names to the values to try, in order; its points are the cartesian product (like
scikit-learn's ``ParameterGrid``, but in the order the knobs were given, so the first point is the one
with every knob at its first value). Knobs are the :class:`TrainConfig` fields a sweep may change, plus
``train_fraction`` (the learning curve). ``seed`` is not a knob (every point gets the same per-repeat
seeds, see :mod:`._sweep`), nor is ``val_fraction``: the recommendation compares validation scores, which
are only comparable on the same validation split.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ._augment import AUGMENTATIONS
from ._errors import XauditError, did_you_mean
from ._train import TrainConfig

#: Value meaning "off" for ``augment`` and ``early_stopping``.
NONE_WORDS = ("none", "off", "no", "")

# The grid may name augmentations generically ("shift", "noise", as in the issue and the MNIST-1D paper);
# on sequence data those mean the sequence augmentations of the same effect. Resolved once, per dataset kind.
_GENERIC_AUGMENT: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "sequence": MappingProxyType({"shift": "time_shift", "noise": "jitter"}),
    "image": MappingProxyType({}),
})


def _number(kind: type, text: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise XauditError(f"expected {what}, got {text!r}") from None


def _float(value: Any) -> float:
    out = _number(float, value) if isinstance(value, str) else float(value)
    if not math.isfinite(out):
        raise XauditError(f"expected a finite number, got {value!r}")
    return out


def _int(value: Any) -> int:
    if isinstance(value, str):
        return _number(int, value.strip())
    if isinstance(value, float) and not value.is_integer():
        raise XauditError(f"expected a whole number, got {value!r}")
    return int(value)


def _patience(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS):
        return None
    return _int(value)


def _augment(value: Any) -> tuple[str, ...]:
    """``"none"`` → (), ``"shift+noise"`` → ("shift", "noise"); lists and tuples pass through."""
    if value is None:
        return ()
    if isinstance(value, str):
        parts = [p.strip() for p in value.split("+")]
        if len(parts) == 1 and parts[0].lower() in NONE_WORDS:
            return ()
        if any(not p for p in parts):
            raise XauditError(f"augmentation {value!r} has an empty name: join names with '+', e.g. shift+noise")
    else:
        parts = [str(p) for p in value]
    known = set(AUGMENTATIONS) | {g for table in _GENERIC_AUGMENT.values() for g in table}
    for name in parts:
        if name not in known:
            raise did_you_mean("augmentation", name, known)
    twice = sorted({p for p in parts if parts.count(p) > 1})
    if twice:
        raise XauditError(f"augmentation {'+'.join(parts)!r} names {', '.join(twice)} more than once: name each "
                          "augmentation once (its strength is its own setting)")
    return tuple(p for p in parts if p != "none")


def _word(choices: Iterable[str], kind: str) -> Callable[[Any], str]:
    options = tuple(choices)

    def parse(value: Any) -> str:
        text = str(value).strip()
        if text not in options:
            raise did_you_mean(kind, text, options)
        return text

    return parse


def _fraction(value: Any) -> float:
    out = _float(value)
    if not 0 < out <= 1:
        raise XauditError(f"train_fraction must be in (0, 1], got {out}: pass e.g. train_fraction=0.25,0.5,1")
    return out


@dataclass(frozen=True)
class Knob:
    """One sweepable setting: ``parse`` turns a command-line string (or a Python value) into its typed value."""

    name: str
    parse: Callable[[Any], Any]
    help: str


def _knobs() -> Mapping[str, Knob]:
    from ._train import LR_SCHEDULES, OPTIMIZERS

    knobs = [
        Knob("weight_decay", _float, "L2 strength of the optimizer (≥ 0)"),
        Knob("l1", _float, "L1 penalty on weight matrices and kernels (≥ 0)"),
        Knob("dropout", _float, "dropout before the read-out, in [0, 1)"),
        Knob("early_stopping", _patience, "patience in epochs on validation loss, or none"),
        Knob("augment", _augment, "none, or augmentation names joined by '+', e.g. shift+noise"),
        Knob("augment_strength", _float, "multiplier of each augmentation's default magnitude (≥ 0)"),
        Knob("train_fraction", _fraction, "share of the training split used, in (0, 1]: the learning curve"),
        Knob("epochs", _int, "training epochs (≥ 1)"),
        Knob("lr", _float, "learning rate (> 0)"),
        Knob("batch_size", _int, "mini-batch size (≥ 1)"),
        Knob("optimizer", _word(OPTIMIZERS, "optimizer"), f"one of {', '.join(OPTIMIZERS)}"),
        Knob("lr_schedule", _word(LR_SCHEDULES, "learning-rate schedule"), f"one of {', '.join(LR_SCHEDULES)}"),
    ]
    return MappingProxyType({k.name: k for k in knobs})


KNOBS: Mapping[str, Knob] = _knobs()
"""Every knob a sweep grid may vary, by name (the single source of truth for the CLI and the checks)."""

Grid = tuple[tuple[str, tuple[Any, ...]], ...]


def _check_value(knob: str, value: Any, base: TrainConfig) -> None:
    """Let :class:`TrainConfig` judge a value on its own (negative weight decay, dropout ≥ 1, …)."""
    if knob in ("train_fraction", "augment"):
        return  # checked by their parsers; augment names are resolved per dataset kind later
    changes: dict[str, Any] = {knob: value}
    if knob == "early_stopping" and value is not None and base.val_fraction == 0:
        changes["val_fraction"] = 0.1  # judged on its own here; the combination is checked with the data
    dataclasses.replace(base, **changes)


def parse_grid(spec: Mapping[str, Any] | Sequence[str], *, base: TrainConfig = TrainConfig()) -> Grid:
    """Parse and check a grid: ``["weight_decay=0,1e-4", "augment=none,shift"]`` or ``{"dropout": [0, 0.2]}``.

    Returns ``((knob, (typed values…)), …)`` in the given order. Errors (one line each): an unknown knob
    (with a suggestion), an entry without ``=``, a knob given twice, a knob without values, a repeated
    value, an empty grid, and any value :class:`TrainConfig` rejects (e.g. a negative weight decay).
    """
    items: list[tuple[str, list[Any]]] = []
    if isinstance(spec, Mapping):
        for knob, values in spec.items():
            if isinstance(values, str) or not isinstance(values, Iterable):
                values = [values] if not isinstance(values, str) else values.split(",")
            items.append((str(knob), list(values)))
    else:
        for entry in spec:
            knob, sep, values_text = str(entry).partition("=")
            if not sep:
                raise XauditError(f"grid entry {entry!r} has no '=': write knob=v1,v2,... e.g. weight_decay=0,1e-4")
            values_text = values_text.strip()
            items.append((knob.strip(), values_text.split(",") if values_text else []))
    if not items:
        raise XauditError("the sweep grid is empty: give at least one knob, e.g. --grid weight_decay=0,1e-4,1e-3")
    seen: set[str] = set()
    grid: list[tuple[str, tuple[Any, ...]]] = []
    for knob, raw in items:
        if knob not in KNOBS:
            raise did_you_mean("sweep knob", knob, KNOBS)
        if knob in seen:
            raise XauditError(f"sweep knob {knob!r} is given twice: list all its values once, e.g. {knob}=a,b")
        seen.add(knob)
        if not raw:
            raise XauditError(f"sweep knob {knob!r} has no values: write e.g. {knob}=a,b")
        values = []
        for text in raw:
            try:
                value = KNOBS[knob].parse(text.strip() if isinstance(text, str) else text)
                _check_value(knob, value, base)
            except XauditError as exc:
                raise XauditError(f"invalid value {text!r} for sweep knob {knob!r}: {exc}") from None
            if value in values:
                raise XauditError(f"sweep knob {knob!r} lists the value {text!r} twice: list each value once")
            values.append(value)
        grid.append((knob, tuple(values)))
    return tuple(grid)


def resolve_augment(names: Sequence[str], kind: str) -> tuple[str, ...]:
    """Map generic augmentation names to the dataset kind's own and check they apply to it."""
    table = _GENERIC_AUGMENT.get(kind, {})
    out = tuple(table.get(n, n) for n in names)
    for name in out:
        aug = AUGMENTATIONS[name]
        if aug.kind not in ("any", kind):
            usable = [n for n, a in AUGMENTATIONS.items() if a.kind in ("any", kind)] + sorted(table)
            raise XauditError(f"augmentation {name!r} is for {aug.kind} data but the sweep's dataset holds {kind} "
                              f"data: choose from {', '.join(usable)}")
    return out


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: the knob values it sets, and the resulting training config (seed = the sweep's base seed).

    ``index`` is its position in the grid's cartesian product; ``label`` is ``"knob=value, …"``.
    """

    index: int
    values: tuple[tuple[str, Any], ...]
    config: TrainConfig
    train_fraction: float = 1.0

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={format_value(k, v)}" for k, v in self.values)

    def value(self, knob: str) -> Any:
        """The knob's value at this point (from the grid, or the base config when the grid does not vary it)."""
        for name, value in self.values:
            if name == knob:
                return value
        return self.train_fraction if knob == "train_fraction" else getattr(self.config, knob)

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label,
                "values": {k: json_value(v) for k, v in self.values},
                "config": self.config.to_dict(), "train_fraction": self.train_fraction}


def format_value(knob: str, value: Any) -> str:
    """How a value is written in labels and on the command line (``augment`` as ``a+b`` or ``none``)."""
    if knob == "augment":
        return "+".join(value) if value else "none"
    if value is None:
        return "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def grid_points(grid: Grid, base: TrainConfig, kind: str) -> tuple[SweepPoint, ...]:
    """The cartesian product of ``grid`` on top of ``base``; augmentations resolved for data of ``kind``."""
    names = [knob for knob, _ in grid]
    points = []
    for index, combo in enumerate(itertools.product(*(values for _, values in grid))):
        values = tuple(zip(names, combo))
        changes = {k: v for k, v in values if k != "train_fraction"}
        if "augment" in changes:
            changes["augment"] = resolve_augment(changes["augment"], kind)
        else:
            changes["augment"] = resolve_augment(base.augment, kind)
        fraction = dict(values).get("train_fraction", 1.0)
        try:
            config = dataclasses.replace(base, **changes)
        except XauditError as exc:
            label = ", ".join(f"{k}={format_value(k, v)}" for k, v in values)
            raise XauditError(f"grid point {label} is not a valid training config: {exc}") from None
        points.append(SweepPoint(index, values, config, fraction))
    return tuple(points)


def grid_to_json(grid: Grid) -> dict[str, list[Any]]:
    return {knob: [json_value(v) for v in values] for knob, values in grid}


def grid_from_json(data: Mapping[str, Sequence[Any]]) -> Grid:
    """Inverse of :func:`grid_to_json` (values re-parsed, so tuples come back as tuples)."""
    return tuple((k, tuple(KNOBS[k].parse(v) for v in values)) for k, values in data.items())
