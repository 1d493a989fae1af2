"""The small digits CNN the library-comparison benchmarks train, kept apart from the built-in models so the
comparisons always run on the same network."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn


def train_digits_cnn(epochs: int, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    """(model in eval mode, train images, test images N×1×8×8 in [0, 1], test accuracy)."""
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[:1400], order[1400:]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 2 * 2, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for batch in torch.split(train[torch.randperm(len(train))], 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
    return model, x[train], x[test], accuracy
