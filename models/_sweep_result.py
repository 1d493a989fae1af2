"""Typed sweep results: one :class:`TrialResult` per trained model, summaries per grid point, the recommendation.

Every result is a frozen dataclass with ``to_json`` (plain JSON values) and, for the records a run
directory stores, ``from_json``; a sweep returns the same :class:`SweepResult` type whatever its flags.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._grid import Grid, SweepPoint, format_value, grid_to_json
from ._train import TrainConfig

#: Per-trial metrics summarised per point (mean, standard deviation, standard error over repeats).
METRICS: tuple[str, ...] = ("train_accuracy", "val_accuracy", "test_accuracy", "train_loss", "val_loss",
                            "test_loss", "gap", "val_gap", "loss_gap", "fit_time_s")
#: Decimals a difference of two accuracies is rounded to. Each accuracy k/n is the double nearest its exact
#: value, but their difference can land one rounding error past a round number (1.0 − 0.95 is
#: 0.050000000000000044), and so past a threshold it exactly meets; 12 decimals are far below any difference
#: of two accuracies on fewer than 10^6 samples each (≥ 1e-12) and far above the rounding noise (~1e-16).
ACCURACY_DECIMALS = 12


def accuracy_difference(a: float, b: float) -> float:
    """``a − b`` for two accuracies, rounded to :data:`ACCURACY_DECIMALS` so that exact differences stay exact."""
    return round(a - b, ACCURACY_DECIMALS)


@dataclass(frozen=True)
class EpochMetrics:
    """Loss and accuracy after one epoch on the fit, validation and test splits (eval mode, un-augmented)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    test_loss: float
    test_accuracy: float


@dataclass(frozen=True)
class TrialCost:
    """What one trial cost: wall and CPU seconds of training, epochs run, samples seen, and training FLOPs.

    ``train_flops`` is forward + backward FLOPs of one sample (``torch.utils.flop_counter``) × samples seen;
    None where the counter cannot see the model (``nn.LSTM`` counts 0 on CPU).
    """

    fit_time_s: float
    cpu_time_s: float
    epochs_run: int
    samples_seen: int
    n_params: int
    train_flops: float | None


@dataclass(frozen=True)
class TrialResult:
    """One trained model of a sweep: its point, repeat and seed, the per-epoch curves and the final metrics.

    Final metrics are those of the weights the model ends with (the best epoch under early stopping):
    train and validation from that epoch's record, test evaluated after training. ``gap`` is train − test
    accuracy (the generalization gap), ``val_gap`` train − validation accuracy (the gap the recommendation
    may look at without touching the test set).
    """

    key: str
    point_index: int
    repeat: int
    seed: int
    config: TrainConfig
    train_fraction: float
    n_train: int
    history: tuple[EpochMetrics, ...]
    best_epoch: int
    stopped_early: bool
    train_accuracy: float
    train_loss: float
    val_accuracy: float | None
    val_loss: float | None
    test_accuracy: float
    test_loss: float
    cost: TrialCost

    @property
    def gap(self) -> float:
        return accuracy_difference(self.train_accuracy, self.test_accuracy)

    @property
    def val_gap(self) -> float | None:
        return None if self.val_accuracy is None else accuracy_difference(self.train_accuracy, self.val_accuracy)

    @property
    def loss_gap(self) -> float:
        return self.test_loss - self.train_loss

    @property
    def fit_time_s(self) -> float:
        return self.cost.fit_time_s

    def metric(self, name: str) -> float | None:
        return getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "point_index": self.point_index, "repeat": self.repeat, "seed": self.seed,
                "config": self.config.to_dict(), "train_fraction": self.train_fraction, "n_train": self.n_train,
                "history": [vars(e) for e in self.history], "best_epoch": self.best_epoch,
                "stopped_early": self.stopped_early, "train_accuracy": self.train_accuracy,
                "train_loss": self.train_loss, "val_accuracy": self.val_accuracy, "val_loss": self.val_loss,
                "test_accuracy": self.test_accuracy, "test_loss": self.test_loss, "gap": self.gap,
                "val_gap": self.val_gap, "cost": vars(self.cost)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> TrialResult:
        derived = {"gap", "val_gap"}
        values = {k: v for k, v in d.items() if k not in derived}
        values["config"] = TrainConfig.from_dict(d["config"])
        values["history"] = tuple(EpochMetrics(**e) for e in d["history"])
        values["cost"] = TrialCost(**d["cost"])
        return cls(**values)

    def outcome(self) -> dict[str, Any]:
        """Everything but the timings: what must be identical whenever the same trial is run again."""
        out = self.to_json()
        out["cost"] = {k: v for k, v in out["cost"].items() if k not in ("fit_time_s", "cpu_time_s")}
        return out


@dataclass(frozen=True)
class Stat:
    """Mean, standard deviation (ddof=1; 0 for one repeat) and standard error of the mean over repeats."""

    mean: float | None
    std: float | None
    se: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        xs = np.array([v for v in values if v is not None], dtype=float)
        if not len(xs):
            return cls(None, None, None, 0)
        std = float(xs.std(ddof=1)) if len(xs) > 1 else 0.0
        return cls(float(xs.mean()), std, std / math.sqrt(len(xs)), len(xs))

    def to_json(self) -> dict[str, Any]:
        return vars(self).copy()


@dataclass(frozen=True)
class PointSummary:
    """A grid point with every metric of :data:`METRICS` summarised over its repeats."""

    point: SweepPoint
    stats: Mapping[str, Stat]

    def __getitem__(self, metric: str) -> Stat:
        return self.stats[metric]

    def to_json(self) -> dict[str, Any]:
        return {**self.point.to_json(), **{m: s.to_json() for m, s in self.stats.items()}}


_REGULARIZERS_OFF: Mapping[str, Any] = {"weight_decay": 0.0, "l1": 0.0, "dropout": 0.0, "early_stopping": None,
                                        "augment": (), "augment_strength": 0.0}


def is_unregularized(point: SweepPoint) -> bool:
    """True when no regularizer is on: no weight decay, L1, dropout, early stopping or augmentation."""
    c = point.config
    return (c.weight_decay == 0 and c.l1 == 0 and c.dropout == 0 and c.early_stopping is None
            and (not c.augment or c.augment_strength == 0))


RECOMMENDATION_RULE = (
    "Among the points trained on the full training split (train_fraction = its largest value in the grid), "
    "take the best mean validation accuracy; every point within one standard error of it (SE over repeats; "
    "with one repeat, exact ties only) is a candidate; the candidate with the smallest mean train − validation "
    "gap wins, then the lower mean validation loss, then the earlier grid point. The test set plays no part "
    "in the choice: it only reports what the choice bought against the baseline, the unregularized point "
    "(no weight decay, L1, dropout, early stopping or augmentation), or the first full-data point if there is none."
)


@dataclass(frozen=True)
class Recommendation:
    """The recommended point, the baseline it is compared with, and what it bought on the test set."""

    chosen: PointSummary
    baseline: PointSummary
    baseline_is_unregularized: bool
    candidates: tuple[int, ...]
    test_gain: float | None
    gap_change: float | None
    rule: str = RECOMMENDATION_RULE

    def to_json(self) -> dict[str, Any]:
        return {"chosen": self.chosen.point.index, "label": self.chosen.point.label,
                "baseline": self.baseline.point.index, "baseline_label": self.baseline.point.label,
                "baseline_is_unregularized": self.baseline_is_unregularized, "candidates": list(self.candidates),
                "test_accuracy": self.chosen["test_accuracy"].mean,
                "baseline_test_accuracy": self.baseline["test_accuracy"].mean,
                "test_gain": self.test_gain, "gap": self.chosen["gap"].mean,
                "baseline_gap": self.baseline["gap"].mean, "gap_change": self.gap_change, "rule": self.rule}


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else accuracy_difference(a, b)


def recommend(summaries: Sequence[PointSummary]) -> Recommendation:
    """Apply :data:`RECOMMENDATION_RULE` to the point summaries of a sweep."""
    full = max(s.point.train_fraction for s in summaries)
    pool = [s for s in summaries if s.point.train_fraction == full]
    scored = [s for s in pool if s["val_accuracy"].mean is not None]
    if scored:
        best = max(scored, key=lambda s: (s["val_accuracy"].mean, -s.point.index))
        floor = best["val_accuracy"].mean - (best["val_accuracy"].se or 0.0)
        candidates = [s for s in scored if s["val_accuracy"].mean >= floor]

        def order(s: PointSummary) -> tuple[float, float, int]:
            gap, loss = s["val_gap"].mean, s["val_loss"].mean
            return (math.inf if gap is None else gap, math.inf if loss is None else loss, s.point.index)

        chosen = min(candidates, key=order)
    else:  # no validation split anywhere: nothing to select on without the test set
        candidates, chosen = [], pool[0]
    baselines = [s for s in pool if is_unregularized(s.point)]
    baseline = baselines[0] if baselines else pool[0]
    return Recommendation(chosen=chosen, baseline=baseline, baseline_is_unregularized=bool(baselines),
                          candidates=tuple(s.point.index for s in candidates),
                          test_gain=_sub(chosen["test_accuracy"].mean, baseline["test_accuracy"].mean),
                          gap_change=_sub(chosen["gap"].mean, baseline["gap"].mean))


@dataclass(frozen=True)
class CurvePoint:
    """One value of a knob in a validation curve: every metric pooled over the trials at that value."""

    value: Any
    stats: Mapping[str, Stat]


@dataclass(frozen=True, eq=False)
class SweepResult:
    """Everything a sweep measured: its grid and points, one :class:`TrialResult` per (point, repeat).

    ``trials`` is ordered by point, then repeat. ``reused`` lists the trial keys read back from the run
    directory instead of being trained (a resumed sweep); ``computed`` those trained by this call.
    """

    model: str
    data: str
    data_fingerprint: str
    grid: Grid
    base_config: TrainConfig
    points: tuple[SweepPoint, ...]
    trials: tuple[TrialResult, ...]
    repeats: int
    seed: int
    backend: str
    wall_s: float
    run_dir: str | None = None
    reused: tuple[str, ...] = ()
    computed: tuple[str, ...] = ()
    hidden: int | None = None
    n_train: int | None = None
    n_test: int | None = None
    input_shape: tuple[int, ...] = ()

    def __repr__(self) -> str:
        # a summary: the dataclass repr printed every trial and epoch (21 KB in the audit notebook)
        grid = ", ".join(f"{knob}={list(values)}" for knob, values in self.grid)
        return (f"SweepResult(model={self.model!r}, data={self.data!r}, grid=({grid}), points={len(self.points)}, "
                f"trials={len(self.trials)}, repeats={self.repeats}, backend={self.backend!r}, "
                f"wall_s={self.wall_s:.1f})")
    n_classes: int = 0

    def _repr_html_(self) -> str:
        # imported on demand: models/ must not import reports/ at module level (models → explain → reports)
        from xaudit.reports._notebook import sweep_html

        return sweep_html(self)

    def trials_at(self, point_index: int) -> tuple[TrialResult, ...]:
        return tuple(t for t in self.trials if t.point_index == point_index)

    @functools.cached_property
    def summaries(self) -> tuple[PointSummary, ...]:
        """Per point, every metric's mean/std/SE over repeats (a pure function of the trials, cached)."""
        return tuple(PointSummary(p, {m: Stat.of([t.metric(m) for t in self.trials_at(p.index)]) for m in METRICS})
                     for p in self.points)

    @property
    def recommendation(self) -> Recommendation:
        return recommend(self.summaries)

    def curve(self, knob: str) -> tuple[CurvePoint, ...]:
        """Validation curve of ``knob`` (scikit-learn's ``validation_curve``): metrics per value, pooled over
        every other knob's values and the repeats. For the learning curve pass ``"train_fraction"``."""
        values = dict(self.grid).get(knob)
        if values is None:
            from ._errors import did_you_mean

            raise did_you_mean("knob of this sweep", knob, [k for k, _ in self.grid])
        out = []
        for value in values:
            trials = [t for t in self.trials if self.points[t.point_index].value(knob) == value]
            out.append(CurvePoint(value, {m: Stat.of([t.metric(m) for t in trials]) for m in METRICS}))
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        """The sweep as plain JSON values: setup, points with summaries, trials, curves, the recommendation."""
        rec = self.recommendation
        return {
            "model": self.model, "data": self.data, "data_fingerprint": self.data_fingerprint,
            "n_train": self.n_train, "n_test": self.n_test, "hidden": self.hidden,
            "input_shape": list(self.input_shape), "n_classes": self.n_classes,
            "grid": grid_to_json(self.grid), "base_config": self.base_config.to_dict(),
            "grid_labels": {knob: [format_value(knob, v) for v in values] for knob, values in self.grid},
            "repeats": self.repeats, "seed": self.seed, "backend": self.backend, "wall_s": self.wall_s,
            "run_dir": self.run_dir, "reused": list(self.reused), "computed": list(self.computed),
            "points": [s.to_json() for s in self.summaries],
            "curves": {knob: [{"value": format_value(knob, c.value), **{m: s.to_json() for m, s in c.stats.items()}}
                              for c in self.curve(knob)] for knob, _ in self.grid},
            "recommendation": rec.to_json(),
            "trials": [t.to_json() for t in self.trials],
        }
