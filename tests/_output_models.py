"""Tiny user models with awkward outputs or inputs, for the ``package.module:callable`` tests of model outputs
(imported by name, not collected). All take 1×8×8 images, like the digits data."""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """A 3-class CNN returning logits."""

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class SoftmaxHead(nn.Module):
    """The same CNN ending in ``nn.Softmax``: it returns probabilities (a common pattern in user code)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.softmax = nn.Softmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.softmax(self.body(x))


class LogSoftmaxHead(SoftmaxHead):
    def __init__(self, body: nn.Module) -> None:
        super().__init__(body)
        self.softmax = nn.LogSoftmax(dim=1)


class NaNOutputs(nn.Module):
    """log of a linear layer: NaN wherever the layer is negative."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.fc(x.flatten(1)))


class BatchOfOne(nn.Module):
    """Flattens with ``x.view(1, -1)``: works on one sample only."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.view(1, -1))


class OneRow(nn.Module):
    """Averages the batch away: one output row whatever the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1)).mean(0, keepdim=True)


def make_logits() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN()


def make_softmax() -> nn.Module:
    """``make_logits()`` with a softmax head, its last layer scaled up so it is confident."""
    model = SoftmaxHead(make_logits())
    with torch.no_grad():
        model.body.fc.weight.mul_(20)
    return model


def make_nan() -> nn.Module:
    torch.manual_seed(0)
    return NaNOutputs()


def make_batch_of_one() -> nn.Module:
    torch.manual_seed(0)
    return BatchOfOne()


def make_float64() -> nn.Module:
    return make_logits().double()


class Conv1dNCL(nn.Module):
    """A 1-D CNN written for N×C×L signals (3 channels, length 20): its first layer takes the input as it is."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 5, padding=2)
        self.fc = nn.Linear(4 * 20, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def make_conv1d_ncl() -> nn.Module:
    torch.manual_seed(3)
    return Conv1dNCL()


class Detached(nn.Module):
    """A model whose forward detaches its input: its output has no gradient with respect to the input."""

    def __init__(self) -> None:
        super().__init__()
        self.body = TinyCNN(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.detach())


def make_detached() -> nn.Module:
    torch.manual_seed(0)
    return Detached()
