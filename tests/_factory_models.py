"""Tiny model factories for the ``package.module:callable`` loading tests (imported by name, not collected)."""

from __future__ import annotations

from torch import nn


def make_tiny_mlp() -> nn.Module:
    """A 2-class MLP on 4 features."""
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def make_not_a_module() -> str:
    return "not a model"


def make_broken() -> nn.Module:
    raise ValueError("factory exploded")
