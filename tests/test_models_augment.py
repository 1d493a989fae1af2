"""xaudit.models augmentations: the registry contract, checked for every entry."""

from __future__ import annotations

import pytest
import torch

from xaudit.models import AUGMENTATIONS, Augmentation, XauditError

BATCH = {"image": torch.rand(6, 2, 16, 12), "sequence": torch.randn(6, 40, 3)}
NAMES = sorted(AUGMENTATIONS)


def _batch(aug: Augmentation) -> torch.Tensor:
    return BATCH["image" if aug.kind == "any" else aug.kind]


def test_registry_covers_both_kinds():
    assert {n for n, a in AUGMENTATIONS.items() if a.kind == "image"} == {"shift", "rotation", "noise", "cutout"}
    assert {n for n, a in AUGMENTATIONS.items() if a.kind == "sequence"} == {
        "jitter", "scaling", "time_shift", "time_warp"
    }
    assert AUGMENTATIONS["none"].kind == "any"
    assert all(name == aug.name for name, aug in AUGMENTATIONS.items())


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_and_determinism(name):
    aug = AUGMENTATIONS[name]
    x = _batch(aug)
    a = aug(x, 1.0, torch.Generator().manual_seed(0))
    b = aug(x, 1.0, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()
    if name != "none":
        c = aug(x, 1.0, torch.Generator().manual_seed(1))
        assert not torch.equal(a, x)
        assert not torch.equal(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_strength_zero_is_identity(name):
    aug = AUGMENTATIONS[name]
    x = _batch(aug)
    assert torch.equal(aug(x, 0.0, torch.Generator().manual_seed(0)), x)


@pytest.mark.parametrize("name", [n for n in NAMES if AUGMENTATIONS[n].kind != "any"])
def test_wrong_kind_raises_one_line(name):
    aug = AUGMENTATIONS[name]
    other = BATCH["sequence" if aug.kind == "image" else "image"]
    with pytest.raises(XauditError) as exc:
        aug(other, 1.0, torch.Generator())
    assert "\n" not in str(exc.value) and aug.kind in str(exc.value)


def test_negative_strength_raises():
    with pytest.raises(XauditError):
        AUGMENTATIONS["noise"](BATCH["image"], -1.0, torch.Generator())


def test_shift_and_time_shift_move_content_without_changing_it():
    x = torch.zeros(50, 1, 16, 16)
    x[:, :, 6:10, 6:10] = 1.0  # a centred square survives any shift of up to 2 px intact
    shifted = AUGMENTATIONS["shift"](x, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(shifted.sum((1, 2, 3)), x.sum((1, 2, 3)))
    seq = torch.randn(20, 30, 2)
    rolled = AUGMENTATIONS["time_shift"](seq, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(rolled.sort(1).values, seq.sort(1).values)


def test_time_warp_keeps_endpoints_and_range():
    seq = torch.randn(10, 40, 2)
    warped = AUGMENTATIONS["time_warp"](seq, 1.0, torch.Generator().manual_seed(0))
    assert torch.allclose(warped[:, 0], seq[:, 0]) and torch.allclose(warped[:, -1], seq[:, -1], atol=1e-5)
    assert float(warped.max()) <= float(seq.max()) + 1e-6


def test_cutout_zeroes_a_square_and_jitter_has_its_sigma():
    x = torch.ones(200, 1, 16, 16)
    cut = AUGMENTATIONS["cutout"](x, 1.0, torch.Generator().manual_seed(0))
    zeroed = (cut == 0).sum((1, 2, 3))
    assert int(zeroed.max()) == 16 and int(zeroed.min()) >= 1  # a 4×4 square, sometimes clipped at the border
    std = (AUGMENTATIONS["jitter"](torch.zeros(100, 100, 10), 2.0, torch.Generator().manual_seed(0))).std()
    assert abs(float(std) - 0.1) < 0.005
