"""xaudit.models datasets: built-ins and validated .npz loading."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from xaudit.models import DATASETS, Dataset, XauditError, XauditWarning, load_dataset


def _one_line(exc: pytest.ExceptionInfo[XauditError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("name", "kind", "train_shape", "test_shape"),
    [
        ("digits", "image", (1437, 1, 8, 8), (360, 1, 8, 8)),
        ("digits-seq", "sequence", (1437, 8, 8), (360, 8, 8)),
        ("mnist1d", "sequence", (4000, 40, 1), (1000, 40, 1)),
    ],
)
def test_builtin_shapes_kinds_dtypes(name, kind, train_shape, test_shape):
    ds = load_dataset(name)
    assert ds.name == name and ds.kind == kind
    assert tuple(ds.x_train.shape) == train_shape and tuple(ds.x_test.shape) == test_shape
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.input_shape == test_shape[1:]
    assert ds.n_classes == 10 and ds.class_names == tuple(str(i) for i in range(10))
    assert (ds.n_train, ds.n_test) == (train_shape[0], test_shape[0])
    assert set(ds.y_test.tolist()) == set(range(10))
    assert torch.isfinite(ds.x_train).all()


def test_builtins_are_listed():
    assert DATASETS == ("digits", "digits-seq", "mnist1d")


def test_digits_split_is_deterministic_and_stratified():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0
    other = load_dataset("digits", seed=1)
    assert not torch.equal(a.y_test, other.y_test)
    # stratified: every class keeps ~20% of its samples in test
    counts = torch.bincount(a.y_test, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37


def test_digits_seq_is_digits_read_row_by_row():
    img, seq = load_dataset("digits"), load_dataset("digits-seq")
    assert torch.equal(img.x_test[:, 0], seq.x_test)
    assert torch.equal(img.y_test, seq.y_test)


def test_returned_tensors_do_not_alias_the_cache():
    a = load_dataset("digits")
    a.x_train.zero_()
    assert float(load_dataset("digits").x_train.sum()) > 0


def test_mnist1d_leaves_global_rngs_alone():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    load_dataset("mnist1d")
    assert np.random.rand() == expected


def test_unknown_name_suggests_builtin():
    with pytest.raises(XauditError) as exc:
        load_dataset("digts")
    assert "did you mean 'digits'" in _one_line(exc)


def test_subset_takes_prefixes():
    ds = load_dataset("digits").subset(100, 20)
    assert (ds.n_train, ds.n_test) == (100, 20)


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def _good_arrays(rng=None):
    rng = rng or np.random.default_rng(0)
    return {
        "x_train": rng.normal(size=(30, 12, 3)).astype(np.float32),
        "y_train": rng.integers(0, 3, 30),
        "x_test": rng.normal(size=(10, 12, 3)).astype(np.float32),
        "y_test": np.arange(10) % 3,
    }


def test_npz_sequence_file(tmp_path):
    path = _save(tmp_path / "seq.npz", **_good_arrays(), class_names=np.array(["a", "b", "c"]))
    ds = load_dataset(path)
    assert ds.kind == "sequence" and ds.input_shape == (12, 3) and ds.class_names == ("a", "b", "c")
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64


def test_npz_image_and_flat_and_test_only(tmp_path):
    rng = np.random.default_rng(1)
    images = _save(tmp_path / "img.npz", x_test=rng.random((5, 3, 6, 7)), y_test=np.array([0, 1, 0, 1, 1]))
    ds = load_dataset(str(images))
    assert ds.kind == "image" and ds.input_shape == (3, 6, 7)
    assert ds.n_train == 0 and tuple(ds.x_train.shape) == (0, 3, 6, 7) and ds.class_names == ("0", "1")
    flat = _save(tmp_path / "flat.npz", x_test=rng.random((4, 20)), y_test=np.array([0, 1, 2, 1]))
    ds = load_dataset(flat)
    assert ds.kind == "sequence" and ds.input_shape == (20, 1)


def _bad_cases():
    good = _good_arrays()
    nan_x = good["x_test"].copy()
    nan_x[0, 0, :3] = np.nan
    inf_x = good["x_train"].copy()
    inf_x[1, 2, 0] = np.inf
    without = {k: v for k, v in good.items() if k != "y_test"}
    return {
        "missing key": (without, "missing key 'y_test'"),
        "length mismatch": ({**good, "y_test": good["y_test"][:7]}, "10 x_test samples but 7 y_test labels"),
        "nan": ({**good, "x_test": nan_x}, "data 'x_test' has 3 NaN/Inf values"),
        "inf": ({**good, "x_train": inf_x}, "data 'x_train' has 1 NaN/Inf values"),
        "negative label": ({**good, "y_test": -good["y_test"] - 1}, "negative label"),
        "float label": ({**good, "y_test": good["y_test"] + 0.5}, "integer class indices"),
        "shape differs": ({**good, "x_test": good["x_test"][:, :6]}, "same per-sample shape"),
        "channels last": ({"x_test": np.zeros((4, 8, 8, 3)), "y_test": np.zeros(4, dtype=int)}, "channels-last"),
        "only x_train": ({k: v for k, v in good.items() if k != "y_train"}, "missing key 'y_train'"),
    }


@pytest.mark.parametrize("case", sorted(_bad_cases()))
def test_npz_bad_contents_raise_one_line(tmp_path, case):
    arrays, expected = _bad_cases()[case]
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(XauditError) as exc:
        load_dataset(path)
    assert expected in _one_line(exc)


def test_npz_missing_file(tmp_path):
    with pytest.raises(XauditError) as exc:
        load_dataset(tmp_path / "nope.npz")
    assert "not found" in _one_line(exc)


def test_npz_garbage_and_object_arrays(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive")
    with pytest.raises(XauditError) as exc:
        load_dataset(garbage)
    assert "not a valid .npz" in _one_line(exc)
    objects = tmp_path / "objects.npz"
    np.savez(objects, x_test=np.array([object(), object()], dtype=object), y_test=np.array([0, 1]))
    with pytest.raises(XauditError) as exc:
        load_dataset(objects)
    assert "Python object arrays" in _one_line(exc)


def test_dataset_validates_layout():
    x, y = torch.zeros(4, 8, 8), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(XauditError) as exc:
        Dataset("d", "image", x, y, x, y, ("0", "1"))
    assert "N×C×H×W" in _one_line(exc)


@pytest.mark.parametrize("key", ["y_test", "y_train"])
def test_npz_huge_label_is_refused_before_naming_every_class(tmp_path, key):
    # one stray label of 2 million made the loader build 2 million class names ("0", "1", …) before any check;
    # 2**40 was OOM-killed. Without class_names the label must be refused first, in flat memory.
    import tracemalloc

    from xaudit.models._data import MAX_UNNAMED_CLASSES

    top = 20 * MAX_UNNAMED_CLASSES
    good = _good_arrays()
    labels = good[key].copy()
    labels[1] = top
    path = _save(tmp_path / "big.npz", **{**good, key: labels})
    tracemalloc.start()
    try:
        with pytest.raises(XauditError) as exc:
            load_dataset(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = _one_line(exc)
    assert f"data {key!r}" in message and f"label {top}" in message and "class indices 0..C-1" in message
    assert peak < 16 * 2**20, f"refusing one label took {peak / 2**20:.0f} MiB"
    # the bound is on the class count, not on ordinary labels: the most classes allowed still load
    path = _save(tmp_path / "ok.npz", **{**good, key: np.where(labels == top, MAX_UNNAMED_CLASSES - 1, labels)})
    assert load_dataset(path).n_classes == MAX_UNNAMED_CLASSES


@pytest.mark.parametrize("labels", [np.array([0, 1, 2**64 - 1], dtype=np.uint64), np.array([0.0, 1.0, 1e30])],
                         ids=["uint64", "float"])
def test_npz_label_beyond_int64_is_not_wrapped_to_negative(tmp_path, labels):
    # the int64 cast wrapped these to negative numbers, reported as "negative label -1"
    path = _save(tmp_path / "big.npz", x_test=np.zeros((3, 12, 3), dtype=np.float32), y_test=labels)
    with pytest.raises(XauditError) as exc:
        load_dataset(path)
    message = _one_line(exc)
    assert f"label {int(labels.max())}, too large for a class index" in message and "negative" not in message


def test_uint8_images_are_read_unscaled_with_a_warning(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((4, 1, 8, 8)) * 255).astype(np.uint8)
    np.savez(tmp_path / "u8.npz", x_test=x, y_test=np.arange(4) % 2)
    with pytest.warns(XauditWarning, match=r"'x_test' .* is uint8 \(values up to \d+\): .*save x / 255"):
        data = load_dataset(tmp_path / "u8.npz")
    assert torch.equal(data.x_test, torch.from_numpy(x.astype(np.float32)))  # unscaled: we cannot know the range
    np.savez(tmp_path / "mask.npz", x_test=(x > 127).astype(np.uint8), y_test=np.arange(4) % 2)  # 0/1: no notice
    with warnings.catch_warnings():
        warnings.simplefilter("error", XauditWarning)
        load_dataset(tmp_path / "mask.npz")


def test_two_classes_with_one_name_are_refused(tmp_path) -> None:
    np.savez(tmp_path / "dup.npz", x_test=np.zeros((3, 1, 4, 4), np.float32), y_test=np.array([0, 1, 2]),
             class_names=np.array(["cat", "dog", "cat"]))
    with pytest.raises(XauditError, match=r"names classes 0 and 2 both 'cat'"):
        load_dataset(tmp_path / "dup.npz")
