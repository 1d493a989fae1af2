"""Sequences stored channels-first (N×C×L, the layout ``nn.Conv1d`` takes) read as time steps × features.

xaudit reads a 3-D array as N×T×F: LIME's segments are windows of time steps, occlusion slides over time,
the spatial-shuffle test permutes time steps and the maps are drawn time × feature. A 1-D CNN written for
N×C×L data gets its data as it is, so all of that would run along the channels, silently. When the model
hands its input, unchanged, to an ``nn.Conv1d`` (whose input is N×C×L by definition), the data is
channels-first: the report then reads it transposed to N×L×C and explains :class:`ChannelsFirst` (the model
given its input transposed back), which computes exactly what the model computes on the user's layout.
"""

from __future__ import annotations

import torch
from torch import nn

from ._modes import eval_mode

#: How report.json and the model card name the layouts.
TIME_FEATURES = "N×T×F (time steps × features)"
CHANNELS_FIRST = "N×C×L (channels × length, as nn.Conv1d takes it): read as N×L×C, time steps × channels"


class ChannelsFirst(nn.Module):
    """``model`` on N×L×C inputs: it is given them transposed to the N×C×L it was written for."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.transpose(1, 2))


def takes_channels_first(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``model`` passes the 3-D batch ``x`` itself to an ``nn.Conv1d`` (then ``x`` is N×C×L).

    One eval-mode forward of two samples with temporary pre-hooks (removed, and the mode restored, after).
    A model that cannot take hooks (TorchScript) or changes its input first (a transpose, a reshape) is read
    as it is.
    """
    if x.dim() != 3 or isinstance(model, torch.jit.ScriptModule):
        return False
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    if not convs:
        return False
    probe = x[:2]
    seen: list[bool] = []

    def first_input(_module: nn.Module, args: tuple) -> None:
        if not seen:
            seen.append(bool(args) and args[0] is probe)

    param = next(model.parameters(), None)
    if param is not None:
        probe = probe.to(param.device)
    handles = [m.register_forward_pre_hook(first_input) for m in convs]
    try:
        with eval_mode(model), torch.no_grad():
            model(probe)
    finally:
        for handle in handles:
            handle.remove()
    return bool(seen and seen[0])
