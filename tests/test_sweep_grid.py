"""Sweep grids: strings become typed values once, bad grids fail with one-line errors, points are the product."""

from __future__ import annotations

import pytest

from xaudit.models._errors import XauditError
from xaudit.models._grid import KNOBS, grid_from_json, grid_points, grid_to_json, parse_grid
from xaudit.models._sweep_result import PointSummary, Stat, TrialCost, TrialResult, is_unregularized, recommend
from xaudit.models._train import TrainConfig


def test_values_are_parsed_into_their_types() -> None:
    grid = parse_grid(["weight_decay=0,1e-4", "augment=none,shift+noise", "early_stopping=none,3",
                       "epochs=2", "optimizer=adamw", "train_fraction=0.5,1"])
    values = dict(grid)
    assert values["weight_decay"] == (0.0, 1e-4) and all(type(v) is float for v in values["weight_decay"])
    assert values["augment"] == ((), ("shift", "noise"))
    assert values["early_stopping"] == (None, 3)
    assert values["epochs"] == (2,) and values["optimizer"] == ("adamw",)
    assert values["train_fraction"] == (0.5, 1.0)
    assert [k for k, _ in grid] == ["weight_decay", "augment", "early_stopping", "epochs", "optimizer",
                                    "train_fraction"]


def test_mapping_and_strings_give_the_same_grid() -> None:
    assert parse_grid({"dropout": [0, 0.2], "augment": ["none", ("time_shift", "jitter")]}) == \
        parse_grid(["dropout=0,0.2", "augment=none,time_shift+jitter"])


def test_json_round_trip() -> None:
    grid = parse_grid(["augment=none,shift", "early_stopping=none,2", "lr=1e-3"])
    assert grid_from_json(grid_to_json(grid)) == grid


@pytest.mark.parametrize(("entries", "fragments"), [
    (["wieght_decay=0,1"], ["unknown sweep knob", "did you mean 'weight_decay'"]),
    ([], ["grid is empty"]),
    (["weight_decay"], ["has no '='"]),
    (["weight_decay="], ["has no values"]),
    (["weight_decay=0,-1e-4"], ["invalid value '-1e-4'", "weight_decay must be ≥ 0"]),
    (["dropout=0,1.5"], ["dropout must be in [0, 1)"]),
    (["epochs=two"], ["expected a whole number"]),
    (["augment=none,shfit"], ["unknown augmentation 'shfit'", "did you mean 'shift'"]),
    (["optimizer=adamm"], ["did you mean 'adam'"]),
    (["train_fraction=0,1"], ["train_fraction must be in (0, 1]"]),
    (["lr=1e-3,0.001"], ["twice"]),
    (["lr=1e-3", "lr=1e-2"], ["given twice"]),
    (["seed=0,1"], ["unknown sweep knob 'seed'"]),
])
def test_bad_grids_fail_with_one_line(entries: list[str], fragments: list[str]) -> None:
    with pytest.raises(XauditError) as info:
        parse_grid(entries)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_points_are_the_cartesian_product_in_given_order() -> None:
    grid = parse_grid(["weight_decay=0,1e-3", "augment=none,shift", "train_fraction=0.5,1"])
    points = grid_points(grid, TrainConfig(epochs=2), "sequence")
    assert len(points) == 8
    assert [p.index for p in points] == list(range(8))
    assert points[0].label == "weight_decay=0, augment=none, train_fraction=0.5"
    # the generic "shift" means the sequence augmentation of the same effect on sequence data
    assert points[2].config.augment == ("time_shift",)
    assert points[7].config.weight_decay == 1e-3 and points[7].train_fraction == 1.0
    assert all(p.config.epochs == 2 for p in points)


def test_image_only_augmentation_on_sequences_is_refused() -> None:
    with pytest.raises(XauditError, match="'rotation' is for image data"):
        grid_points(parse_grid(["augment=rotation"]), TrainConfig(), "sequence")


def test_an_augmentation_named_twice_in_one_value_is_refused() -> None:
    with pytest.raises(XauditError, match=r"'shift\+noise\+shift' names shift more than once") as err:
        parse_grid(["augment=none,shift+noise+shift"])
    assert "\n" not in str(err.value)
    assert parse_grid(["augment=shift+noise"])  # each once is fine


def test_every_knob_is_a_training_setting_or_the_train_fraction() -> None:
    fields = set(TrainConfig.__dataclass_fields__)
    assert set(KNOBS) - {"train_fraction"} <= fields
    assert "seed" not in KNOBS and "val_fraction" not in KNOBS


def _summary(point, val: list[float], train: list[float], test: list[float]) -> PointSummary:
    gap = [a - b for a, b in zip(train, test)]
    val_gap = [a - b for a, b in zip(train, val)]
    stats = {"val_accuracy": Stat.of(val), "train_accuracy": Stat.of(train), "test_accuracy": Stat.of(test),
             "gap": Stat.of(gap), "val_gap": Stat.of(val_gap), "val_loss": Stat.of([1.0] * len(val))}
    return PointSummary(point, stats)


def test_recommendation_rule_one_standard_error_then_smallest_gap() -> None:
    points = grid_points(parse_grid(["weight_decay=0,1e-4,1e-3"]), TrainConfig(), "image")
    assert is_unregularized(points[0]) and not is_unregularized(points[1])
    summaries = [
        _summary(points[0], [0.80, 0.82], [1.0, 1.0], [0.80, 0.80]),    # baseline
        _summary(points[1], [0.90, 0.92], [1.0, 1.0], [0.90, 0.90]),    # best validation, gap 0.09
        _summary(points[2], [0.905, 0.905], [0.93, 0.93], [0.91, 0.91]),  # within 1 SE of the best, gap 0.025
    ]
    rec = recommend(summaries)
    # best mean val is point 1 (0.91, SE 0.01): point 2 (0.905) is within one SE and has the smaller gap
    assert rec.candidates == (1, 2)
    assert rec.chosen.point.index == 2 and rec.baseline.point.index == 0 and rec.baseline_is_unregularized
    assert rec.test_gain == pytest.approx(0.11)
    assert rec.gap_change == pytest.approx(0.02 - 0.2)


def test_recommendation_ignores_smaller_training_sets() -> None:
    points = grid_points(parse_grid(["train_fraction=0.5,1"]), TrainConfig(), "image")
    summaries = [_summary(points[0], [0.95], [0.95], [0.5]), _summary(points[1], [0.9], [1.0], [0.9])]
    assert recommend(summaries).chosen.point.index == 1


def test_trial_gaps_are_exact_at_round_numbers() -> None:
    # 100% train, 950 of 1000 test and 970 of 1000 validation samples right: gaps of exactly 5 and 3 points
    trial = TrialResult(key="p000-r00", point_index=0, repeat=0, seed=0, config=TrainConfig(), train_fraction=1.0,
                        n_train=900, history=(), best_epoch=1, stopped_early=False, train_accuracy=1.0, train_loss=0.0,
                        val_accuracy=970 / 1000, val_loss=0.1, test_accuracy=950 / 1000, test_loss=0.2,
                        cost=TrialCost(1.0, 1.0, 1, 900, 10, None))
    assert trial.gap == 0.05 and trial.val_gap == 0.03
    assert trial.to_json()["gap"] == 0.05
