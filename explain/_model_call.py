"""What every explanation call does around the model: the input checks, the eval-mode guard, the evaluation
counter, seeding, and the device helpers. Split from ``_base`` (the contract); ``_base`` re-exports them."""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from xaudit.models._errors import XauditError
from xaudit.models._modes import eval_mode
from xaudit.models._nets import model_kind
from xaudit.models._walk import modules_of, per_generation

from ._cost import EvalCounter

_N_OUTPUTS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, tuple[int, int]]] = weakref.WeakKeyDictionary()


def input_kind(sample_shape: Sequence[int]) -> str:
    """``image`` for per-sample C×H×W inputs, ``sequence`` for T×F inputs."""
    if len(sample_shape) == 3:
        return "image"
    if len(sample_shape) == 2:
        return "sequence"
    raise XauditError(
        f"inputs with per-sample shape {tuple(sample_shape)} are neither images (C×H×W) nor sequences (T×F): "
        "reshape them to one of those layouts (one sample needs its batch dimension too: x.unsqueeze(0))"
    )


def is_recurrent(model: nn.Module) -> bool:
    """Whether the model has a recurrent layer (TorchScript models included)."""
    return model_kind(model) == "rnn"


def needs_cudnn_rnn_workaround(model: nn.Module, device: torch.device) -> bool:
    """cuDNN refuses RNN backward in eval mode ("cudnn RNN backward can only be called in training mode",
    captum #564); on CUDA we keep eval mode (no dropout) and disable cuDNN for the call instead."""
    return device.type == "cuda" and is_recurrent(model)


@contextlib.contextmanager
def model_guard(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration; every module's flags restored afterwards.

    Freezing parameters means backward passes compute input gradients only (faster, and no parameter's
    ``.grad`` is ever touched).
    """
    # from the call's one walk (modules_of); a parameter shared by two modules is listed once, as parameters() does
    requires = list({id(p): p for m in modules_of(model) for p in m._parameters.values()
                     if p is not None and p.requires_grad}.values())
    with eval_mode(model):
        for p in requires:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in requires:
                p.requires_grad_(True)


class CountingModel(nn.Module):
    """Wraps the user's model to count samples through forward and backward. Adds no hook to the model."""

    def __init__(self, model: nn.Module, counter: EvalCounter) -> None:
        super().__init__()
        self.model = model
        self.counter = counter

    def forward(self, x: torch.Tensor, *args: Any) -> torch.Tensor:
        out = self.model(x, *args)
        n = int(out.shape[0])
        self.counter.forward += n
        if out.requires_grad:
            def count_backward(grad: torch.Tensor, _n: int = n) -> None:
                self.counter.backward += _n
            out.register_hook(count_backward)
        return out


def target_gradient(model: nn.Module, inputs: torch.Tensor,
                     targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(gradient of each row's target output with respect to the inputs, the target outputs), one backward."""
    with torch.enable_grad():
        x = inputs.detach().requires_grad_(True)
        out = model(x)
        if out.dim() != 2:
            raise XauditError("the model's output for the target is not one number per input: return "
                              "N×classes logits from forward")
        picked = out[torch.arange(len(x), device=x.device), targets]
        (grad,) = torch.autograd.grad(picked.sum(), x)
    return grad, picked.detach()


def manual_seed(seed: int, device: torch.device | str | None = None) -> None:
    """Seed torch's CPU generator and, for a CUDA ``device``, that device's generator: only the generators
    ``torch.random.fork_rng(devices=[device])`` gives back.

    Not ``torch.manual_seed``: it also seeds every CUDA, XPU and MTIA device, which the fork does not restore,
    and while CUDA is not initialised it queues each seeding with a formatted stack trace (~0.6 ms a call).
    """
    torch.default_generator.manual_seed(seed)
    if device is not None and torch.device(device).type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def rng_devices(device: torch.device | str | None) -> list[torch.device]:
    return [torch.device(device)] if device is not None and torch.device(device).type == "cuda" else []


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str | None = None) -> Iterator[None]:
    """Seed torch's and numpy's global generators for the block (torch's CPU one, and ``device``'s if it is a
    GPU), then give the caller's states back."""
    if seed is None:
        yield
        return
    np_state = np.random.get_state()
    with torch.random.fork_rng(devices=rng_devices(device)):
        manual_seed(seed, device)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            np.random.set_state(np_state)


def _n_outputs(model: nn.Module, x: torch.Tensor) -> int:
    """The model's number of outputs (classes) for inputs like ``x``, cached per model generation and sample shape
    as the FLOP and memory probes are: a one-sample forward on every call was ~5% of a 256-sample saliency call.

    The probe is also the check that the inputs fit the model: a forward that raises, or an output that is
    not one row of class scores per input (two inputs are probed, so a model that only works on batches of
    one is caught here too), is a one-line XauditError before any method runs.
    """
    # a new head on the same object is a new probe
    return per_generation(_N_OUTPUTS, model, (tuple(x.shape[1:]), x.dtype), lambda: _probe_outputs(model, x))


def _probe_outputs(model: nn.Module, x: torch.Tensor) -> int:
    k = min(len(x), 2)
    try:
        with torch.no_grad():
            out = model(x[:k])
    except XauditError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the model raises on these inputs, said in one line
        said = " ".join(str(err).split())[:200] or type(err).__name__
        raise XauditError(f"inputs of shape {tuple(x.shape)} do not fit the model ({said}): pass a batch "
                          "shaped N × the model's input shape (one sample: x.unsqueeze(0))") from err
    if isinstance(out, (tuple, list, dict)):
        pick = "['logits']" if isinstance(out, dict) else "[0]"
        raise XauditError(f"the model returned a {type(out).__name__} for a batch of {k}, not a tensor: "
                          "explanations need one row of class scores per input (N × classes); wrap it so "
                          f"forward returns only those, e.g. a module whose forward is model(x){pick}")
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != k:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise XauditError(f"the model returned {got} for a batch of {k}: explanations need one row of class "
                          "scores per input (N × classes) from forward, whatever the batch size")
    return int(out.shape[-1])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_batch(inputs: Any) -> torch.Tensor:
    if isinstance(inputs, np.ndarray):
        inputs = torch.from_numpy(inputs)
    if not isinstance(inputs, torch.Tensor):
        raise XauditError(f"inputs must be a torch.Tensor or numpy array, got {type(inputs).__name__}")
    if inputs.dim() == 0 or inputs.shape[0] == 0:
        raise XauditError("the batch to explain is empty: pass at least one input")
    if inputs.is_inference():  # made inside torch.inference_mode(): autograd may not save it, so a normal copy
        with torch.inference_mode(False):
            inputs = inputs.clone()
    if not inputs.dtype.is_floating_point:
        inputs = inputs.float()
    # a finite sum means every value is finite (an Inf or NaN anywhere makes it Inf or NaN); only a sum that
    # overflowed needs the elementwise check, which costs ~10× the sum on CPU (bool tensors are slow there)
    if not math.isfinite(float(inputs.sum())) and not torch.isfinite(inputs).all():
        raise XauditError("inputs contain NaN or Inf values: clean them before explaining")
    return inputs


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")
