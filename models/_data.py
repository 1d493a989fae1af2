"""Datasets: the built-in image and sequence benchmarks, and user data from an ``.npz`` file."""

from __future__ import annotations

import contextlib
import functools
import io
import numbers
import os
import random
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._atomic import refuse_special_file
from ._errors import XauditError, XauditWarning, did_you_mean

DATASETS: tuple[str, ...] = ("digits", "digits-seq", "mnist1d")
"""Names :func:`load_dataset` accepts besides ``.npz`` paths."""

KINDS: tuple[str, ...] = ("image", "sequence")

_NPZ_USAGE = "save it with numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"

#: The largest seed: seeds reach numpy and scikit-learn (``random_state``), which take unsigned 32-bit integers.
MAX_SEED = 2**32 - 1

#: Most classes a user .npz may number without ``class_names``: each class gets a made-up name ("0", "1", …),
#: so one stray huge label must be refused before a name per class up to it is built.
MAX_UNNAMED_CLASSES = 100_000


@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled train/test split in the layout models consume.

    ``kind`` is ``"image"`` (x is N×C×H×W) or ``"sequence"`` (x is N×T×F: time steps × features).
    x tensors are float32 unless loaded for a model of another floating dtype (:meth:`with_dtype`), y tensors
    int64; the train split may have 0 rows when a user file only carries test data.
    """

    name: str
    kind: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise did_you_mean("data kind", self.kind, KINDS)
        want_ndim = 4 if self.kind == "image" else 3
        layout = "N×C×H×W" if self.kind == "image" else "N×T×F"
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != want_ndim:
                raise XauditError(
                    f"{self.kind} dataset {self.name!r} has x_{split} of shape {tuple(x.shape)}: "
                    f"pass a {want_ndim}-D tensor laid out {layout}"
                )
            if y.ndim != 1 or len(y) != len(x):
                raise XauditError(
                    f"dataset {self.name!r} has {len(x)} x_{split} rows but y_{split} of shape "
                    f"{tuple(y.shape)}: pass one integer label per sample"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:] and len(self.x_train):
            raise XauditError(
                f"dataset {self.name!r} has train samples shaped {tuple(self.x_train.shape[1:])} but test samples "
                f"shaped {tuple(self.x_test.shape[1:])}: give both splits the same per-sample shape"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) for images, (T, F) for sequences."""
        return tuple(self.x_test.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.x_test.shape[0])

    def with_dtype(self, dtype: torch.dtype) -> Dataset:
        """This dataset with x in floating ``dtype`` (itself when it already is): data for a model whose weights
        are ``dtype`` (see :func:`~._validate.model_dtype`)."""
        if self.x_test.dtype == dtype and self.x_train.dtype == dtype:
            return self
        if not dtype.is_floating_point:
            raise XauditError(f"data can only be cast to a floating dtype, not {dtype}: pass e.g. torch.float32")
        x_train, x_test = self.x_train.to(dtype), self.x_test.to(dtype)
        for key, x in (("x_train", x_train), ("x_test", x_test)):
            bad = int((~torch.isfinite(x)).sum())
            if bad:  # values too large for a narrower dtype become Inf
                raise XauditError(f"data {key!r} of {self.name!r} has {bad} values that are NaN/Inf in {dtype}: "
                                  "clean or rescale them before auditing")
        return Dataset(self.name, self.kind, x_train, self.y_train, x_test, self.y_test, self.class_names)

    def subset(self, n_train: int | None = None, n_test: int | None = None) -> Dataset:
        """The first ``n_train`` train and ``n_test`` test samples (``None`` keeps a split whole).

        The built-in splits are already shuffled, so a prefix is a fair sample; used for quick runs.
        """
        return Dataset(
            name=self.name,
            kind=self.kind,
            x_train=self.x_train[:n_train],
            y_train=self.y_train[:n_train],
            x_test=self.x_test[:n_test],
            y_test=self.y_test[:n_test],
            class_names=self.class_names,
        )


def check_seed(seed: object, *, name: str = "seed") -> int:
    """``seed`` as an int when it is a whole number in 0..:data:`MAX_SEED`, else a one-line :class:`XauditError`
    naming ``name`` (``"--seed"`` on the command line) and the fix."""
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED:
        return int(seed)
    example = f"{name} 0" if name.startswith("--") else f"{name}=0"
    raise XauditError(f"{name} must be a whole number in 0..{MAX_SEED} (numpy and scikit-learn take 32-bit seeds), "
                      f"got {seed!r}: pass one in that range, e.g. {example}")


def load_dataset(source: str | os.PathLike[str], *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Dataset:
    """Load a built-in dataset by name (see :data:`DATASETS`) or a user ``.npz`` file, with x in ``dtype``.

    ``dtype`` is the floating dtype of the model the data is for (:func:`~._validate.model_dtype`): a float64
    model gets the file's float64 values, not float32 roundings of them.

    ``seed`` is the ``random_state`` of the stratified 80/20 split of the ``digits`` datasets. MNIST-1D keeps
    its published generator seed and split (4000/1000) so accuracies compare with Greydanus 2020; a user
    file defines its own split, so ``seed`` does not apply to either.
    """
    name = os.fspath(source)
    seed = check_seed(seed)  # for every source, though only the digits split uses it: one rule for all data
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise XauditError(f"data can only be loaded in a floating dtype, not {dtype}: pass e.g. torch.float32")
    if name in ("digits", "digits-seq"):
        x_train, y_train, x_test, y_test = _digits_arrays(seed)
        if name == "digits":
            # 8×8 grey images, values 0..16 → [0, 1]
            shape: tuple[int, ...] = (1, 8, 8)
            kind = "image"
        else:
            # the same images read row by row, top to bottom: 8 steps of 8 features
            shape = (8, 8)
            kind = "sequence"
        return _from_arrays(name, kind, x_train, y_train, x_test, y_test, shape, dtype)
    if name == "mnist1d":
        x_train, y_train, x_test, y_test = _mnist1d_arrays()
        return _from_arrays(name, "sequence", x_train, y_train, x_test, y_test, (40, 1), dtype)
    path = Path(name)
    if path.suffix.lower() == ".npz" or path.exists():
        return _load_npz(path, dtype)
    raise did_you_mean("dataset", name, DATASETS)


def _from_arrays(
    name: str,
    kind: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    sample_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    # fresh tensors each call: the cached arrays must never be written through a returned Dataset
    def x(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a, dtype=dtype).reshape(len(a), *sample_shape)

    def y(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.int64)

    return Dataset(name, kind, x(x_train), y(y_train), x(x_test), y(y_test), tuple(str(i) for i in range(10)))


@functools.lru_cache(maxsize=8)
def _digits_arrays(seed: int) -> tuple[np.ndarray, ...]:
    """The sklearn digits (1797 images), scaled to [0, 1] and split 80/20 stratified by class."""
    from sklearn.datasets import load_digits  # deferred: importing sklearn costs ~0.5 s
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    parts = train_test_split(x, bunch.target, test_size=0.2, stratify=bunch.target, random_state=seed)
    x_train, x_test, y_train, y_test = parts
    return _frozen(x_train, y_train, x_test, y_test)


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays() -> tuple[np.ndarray, ...]:
    """MNIST-1D at its defaults (Greydanus 2020): 4000 train and 1000 test signals of length 40.

    Generating takes ~2.5 s, hence the in-process cache.
    """
    # mnist1d imports matplotlib.pyplot at module level, so it is only imported when asked for
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds Python's and numpy's global RNGs; the caller's streams are put back afterwards
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return _frozen(data["x"], data["y"], data["x_test"], data["y_test"])


def _frozen(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    out = []
    for a in arrays:
        a = np.array(a)
        a.flags.writeable = False
        out.append(a)
    return tuple(out)


def _load_npz(path: Path, dtype: torch.dtype = torch.float32) -> Dataset:
    """Read and validate a user ``.npz`` with x_test, y_test and optionally x_train, y_train, class_names; x is
    cast to ``dtype``."""
    label = str(path)
    refuse_special_file(path, what="data file",
                        fix=f"pass the path of an .npz file, or a built-in dataset ({', '.join(DATASETS)})")
    if not path.is_file():
        raise XauditError(
            f"data file not found: {label!r}: check the path, or use a built-in dataset ({', '.join(DATASETS)})"
        )
    if not zipfile.is_zipfile(path):
        raise XauditError(f"data file {label!r} is not a valid .npz (not a zip archive): {_NPZ_USAGE}")
    try:
        # allow_pickle=False: an .npz of object arrays could run code when loaded
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "pickle" in reason:
            reason = "it holds Python object arrays"
        raise XauditError(f"data file {label!r} is not a valid numeric .npz ({reason}): {_NPZ_USAGE}") from exc

    for key in ("x_test", "y_test"):
        if key not in arrays:
            raise XauditError(f"data file {label!r} is missing key {key!r}: {_NPZ_USAGE}")
    has = ("x_train" in arrays, "y_train" in arrays)
    if has[0] != has[1]:
        missing = "y_train" if has[0] else "x_train"
        raise XauditError(f"data file {label!r} is missing key {missing!r}: {_NPZ_USAGE} (or drop both train arrays)")

    # read at float64 only for a float64 model; other dtypes (float16, bfloat16, which numpy lacks) are cast to
    # from float32 by with_dtype below, which also catches values that overflow them
    np_dtype = np.dtype(np.float64 if dtype == torch.float64 else np.float32)
    x_test = _check_x(label, "x_test", arrays["x_test"], np_dtype)
    y_test = _check_y(label, "y_test", arrays["y_test"], len(x_test))
    if not len(x_test):
        raise XauditError(f"data file {label!r} has an empty x_test: add at least one test sample")
    if has[0]:
        x_train = _check_x(label, "x_train", arrays["x_train"], np_dtype)
        y_train = _check_y(label, "y_train", arrays["y_train"], len(x_train))
        if len(x_train) and x_train.shape[1:] != x_test.shape[1:]:
            raise XauditError(
                f"data file {label!r} has train samples shaped {x_train.shape[1:]} but test samples shaped "
                f"{x_test.shape[1:]}: give both splits the same per-sample shape"
            )
    else:
        x_train = np.zeros((0, *x_test.shape[1:]), dtype=np_dtype)
        y_train = np.zeros(0, dtype=np.int64)

    top_train, top_test = int(y_train.max(initial=0)), int(y_test.max(initial=0))
    n_classes = max(top_train, top_test) + 1
    if "class_names" in arrays:
        names = tuple(str(s) for s in np.asarray(arrays["class_names"]).reshape(-1))
        if len(names) < n_classes:
            raise XauditError(
                f"data file {label!r} has {len(names)} class_names but labels up to {n_classes - 1}: "
                f"give one name per class 0..{n_classes - 1}"
            )
        seen: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in seen:  # the report, its figures and the audit would not tell the classes apart
                raise XauditError(f"data file {label!r} names classes {seen[name]} and {i} both {name!r}: give "
                                  "each class its own name in class_names")
            seen[name] = i
    else:
        if n_classes > MAX_UNNAMED_CLASSES:
            key, top = ("y_test", top_test) if top_test >= top_train else ("y_train", top_train)
            raise XauditError(
                f"data {key!r} in {label!r} has label {top}, but without class_names at most "
                f"{MAX_UNNAMED_CLASSES} classes are accepted: labels must be class indices 0..C-1 for a C-class "
                "model (store class_names, one per class, for more classes)"
            )
        names = tuple(str(i) for i in range(max(n_classes, 2)))

    kind = "image" if x_test.ndim == 4 else "sequence"
    if x_test.ndim == 2:
        # a flat signal per row is a univariate sequence: N×L → N×L×1
        x_train, x_test = x_train[..., None], x_test[..., None]
    return Dataset(
        name=label,
        kind=kind,
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(y_test),
        class_names=names,
    ).with_dtype(dtype)


def _check_x(label: str, key: str, x: np.ndarray, dtype: np.dtype = np.dtype(np.float32)) -> np.ndarray:
    """Validate one feature array and return it in ``dtype`` (the model's floating dtype; float32 by default)."""
    if x.dtype.kind not in "biuf":
        raise XauditError(f"data {key!r} in {label!r} has dtype {x.dtype}: store numbers (float32 is best)")
    if x.ndim not in (2, 3, 4):
        raise XauditError(
            f"data {key!r} in {label!r} has shape {x.shape}: use N×C×H×W for images, N×T×F or N×L for sequences"
        )
    if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        raise XauditError(
            f"data {key!r} in {label!r} has shape {x.shape}, which looks channels-last (N×H×W×C): "
            "save images as N×C×H×W, e.g. x.transpose(0, 3, 1, 2)"
        )
    if x.dtype == np.uint8 and x.size and int(x.max()) > 1:
        warnings.warn(f"data {key!r} in {label!r} is uint8 (values up to {int(x.max())}): it is fed to the model "
                      "unscaled; if the model was trained on floats in 0..1, save x / 255 as float32",
                      XauditWarning, stacklevel=2)
    x = x.astype(dtype)
    # counted after the cast, so float64 values too large for float32 show up as Inf here
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise XauditError(f"data {key!r} has {bad} NaN/Inf values: clean or impute them before auditing")
    return x


def _check_y(label: str, key: str, y: np.ndarray, n: int) -> np.ndarray:
    """Validate one label array (class indices 0..K-1, one per sample) and return it as int64."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise XauditError(
            f"data {key!r} in {label!r} has shape {y.shape}: store one class index per sample "
            "(for one-hot labels use y.argmax(1))"
        )
    if len(y) != n:
        x_key = "x_" + key.split("_", 1)[1]
        raise XauditError(
            f"data file {label!r} has {n} {x_key} samples but {len(y)} {key} labels: give one label per sample"
        )
    # integral floats (1.0) are common from tools that store everything as float; they are cast below
    integral_float = y.dtype.kind == "f" and bool(np.all(np.isfinite(y))) and bool(np.all(y == np.round(y)))
    if y.dtype.kind not in "iub" and not integral_float:
        raise XauditError(
            f"data {key!r} in {label!r} has labels of dtype {y.dtype}: store integer class indices 0..K-1"
        )
    if len(y):
        # range checked in the file's dtype: a uint64 or float label beyond int64 must not wrap on the cast
        low, high = int(y.min()), int(y.max())
        if low < 0:
            raise XauditError(f"data {key!r} in {label!r} has negative label {low}: store class indices 0..K-1")
        if high > np.iinfo(np.int64).max:
            raise XauditError(
                f"data {key!r} in {label!r} has label {high}, too large for a class index: "
                "labels must be class indices 0..C-1 for a C-class model"
            )
    return y.astype(np.int64)
