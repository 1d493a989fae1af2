"""Built-in CNN/RNN classifiers, datasets, training with regularization and augmentation knobs, and safe model I/O.

Nothing here imports from ``xaudit.explain`` or ``xaudit.reports``: data flows models → explain → reports.
"""

from __future__ import annotations

from ._augment import AUGMENTATIONS, Augmentation
from ._cache import cached_train, default_cache_dir
from ._data import DATASETS, Dataset, load_dataset
from ._errors import UnsafeModelFileError, XauditError, XauditWarning, did_you_mean
from ._io import LoadedModel, load_model, save_model
from ._nets import MODELS, ModelSpec, build_model, count_parameters, model_kind
from ._recipes import DEFAULT_DATA, default_data, reference_config
from ._train import EpochRecord, TrainConfig, TrainResult, evaluate, predict_proba, train_model
from ._validate import check_inputs
# overfitting diagnostics and sweeps (issue #5)
from ._backends import BACKENDS
from ._calibration import Calibration, calibration_from_proba, model_calibration
from ._diagnostics import Diagnostics, generalization_gap, learning_curve, overfitting_diagnostics
from ._grid import KNOBS, SweepPoint, parse_grid
from ._memorization import memorization_test, shuffle_dataset, spatial_shuffle_test
from ._spectra import WeightSpectra, fit_power_law, weight_spectra
from ._sweep import run_sweep, trained_model
from ._sweep_result import RECOMMENDATION_RULE, Recommendation, SweepResult, TrialResult

__all__ = [
    "AUGMENTATIONS",
    "DATASETS",
    "MODELS",
    "Augmentation",
    "Dataset",
    "EpochRecord",
    "LoadedModel",
    "ModelSpec",
    "TrainConfig",
    "TrainResult",
    "UnsafeModelFileError",
    "XauditError",
    "XauditWarning",
    "build_model",
    "cached_train",
    "check_inputs",
    "count_parameters",
    "default_cache_dir",
    "did_you_mean",
    "evaluate",
    "load_dataset",
    "load_model",
    "model_kind",
    "predict_proba",
    "reference_config",
    "default_data",
    "DEFAULT_DATA",
    "save_model",
    "train_model",
    # overfitting diagnostics and sweeps
    "BACKENDS",
    "KNOBS",
    "RECOMMENDATION_RULE",
    "Calibration",
    "Diagnostics",
    "Recommendation",
    "SweepPoint",
    "SweepResult",
    "TrialResult",
    "WeightSpectra",
    "calibration_from_proba",
    "fit_power_law",
    "generalization_gap",
    "learning_curve",
    "memorization_test",
    "model_calibration",
    "overfitting_diagnostics",
    "parse_grid",
    "run_sweep",
    "shuffle_dataset",
    "spatial_shuffle_test",
    "trained_model",
    "weight_spectra",
]
