"""Regularization and augmentation sweeps: a fresh model per grid point and repeat, like scikit-learn's
``validation_curve``, run in a process pool or on Ray, resumable from a run directory.

A trial is a pure function of (model name, training config with its seed, train fraction, data): the
same trial gives bit-identical weights and metrics in this process, in a pool worker or on a Ray node
(it pins torch to one thread, so the reduction order never depends on the machine's thread count).
Repeat ``r`` of every point uses seed ``seed + r`` — common random numbers: all points of one repeat start
from the same initial weights and see the same validation split, so differences between points are the
knobs' doing, not the draw's (the way ``validation_curve`` scores every value on the same CV folds).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._backends import Backend, make_backend
from ._data import Dataset, check_seed, load_dataset
from ._errors import XauditError, did_you_mean
from ._grid import Grid, SweepPoint, grid_points, grid_to_json, parse_grid
from ._nets import MODELS, build_model, count_parameters
from ._rundir import finished_keys, open_manifest, prepare_run_dir, read_state_dict, read_trial
from ._rundir import remove_stale_temporaries, write_trial
from ._sweep_result import EpochMetrics, SweepResult, TrialCost, TrialResult
from ._train import TrainConfig, evaluate, stratified_split, train_model

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrialTask:
    """Everything a worker needs besides the data to train one trial."""

    key: str
    point_index: int
    repeat: int
    model: str
    config: TrainConfig
    train_fraction: float
    hidden: int | None
    keep_model: bool


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_subset(dataset: Dataset, fraction: float, seed: int) -> Dataset:
    """A stratified ``fraction`` of the training split (at least one sample per class); test split unchanged.

    The subsets are nested: for one seed, a smaller fraction's samples are a subset of a larger one's, so a
    learning curve adds data rather than swapping it.
    """
    if fraction >= 1:
        return dataset
    y = dataset.y_train
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    keep = []
    for cls in torch.unique(y):
        members = order[y[order] == cls]
        keep.append(members[:max(1, round(fraction * len(members)))])
    idx = torch.cat(keep).sort().values
    return dataclasses.replace(dataset, x_train=dataset.x_train[idx], y_train=dataset.y_train[idx])


def _train_flops(model: nn.Module, sample: torch.Tensor, samples_seen: int) -> float | None:
    if any(isinstance(m, nn.LSTM) for m in model.modules()):
        return None  # FlopCounterMode counts nn.LSTM as 0 on CPU: a number would be wrong, not approximate
    from torch.utils.flop_counter import FlopCounterMode

    # a throwaway copy with a fixed init seed: the count needs a graph, not the trained weights
    probe = build_model(model.spec.name, model.spec.input_shape, model.spec.n_classes, hidden=model.spec.hidden,
                        seed=0)
    with FlopCounterMode(display=False) as counter:
        probe(sample[:1]).sum().backward()
    return float(counter.get_total_flops()) * samples_seen


@functools.cache
def _warm_up() -> None:
    """Pay once per process what the first trial would otherwise be billed for: torch.optim's first step
    imports torch._dynamo (its steps are wrapped in ``torch._disable_dynamo``), ~1-4 s here."""
    import torch._dynamo  # noqa: F401


def portable_trial(task: TrialTask, dataset: Dataset) -> tuple[TrialResult, dict[str, np.ndarray] | None]:
    """:func:`run_trial` with the weights as numpy arrays, which a pool worker pickles by value. Tensors would
    travel by torch's file-descriptor sharing, whose listener leaves a ``/tmp/pymp-*`` directory behind for
    every worker ended by Ctrl-C (its exit handlers never run)."""
    trial, weights = run_trial(task, dataset)
    return trial, None if weights is None else {k: v.numpy() for k, v in weights.items()}


def run_trial(task: TrialTask, dataset: Dataset) -> tuple[TrialResult, dict[str, torch.Tensor] | None]:
    """Train one trial and measure it; returns the result and, if ``task.keep_model``, its final weights."""
    _warm_up()
    with _one_thread():
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        config = task.config
        data = train_subset(dataset, task.train_fraction, config.seed)
        model = build_model(task.model, dataset.input_shape, dataset.n_classes, dropout=config.dropout,
                            seed=config.seed, hidden=task.hidden)
        test_curve: list[tuple[float, float]] = []
        spent = [0.0, 0.0]  # wall and CPU seconds of the per-epoch test evaluation: measuring, not fitting

        def record_test(*_: Any) -> None:
            wall, cpu = time.perf_counter(), time.process_time()
            # eval mode under no_grad draws no random numbers, so the training run is unchanged
            test_curve.append(evaluate(model, data.x_test, data.y_test))
            spent[0] += time.perf_counter() - wall
            spent[1] += time.process_time() - cpu

        result = train_model(model, data, config, progress=record_test)
        fit_time_s = time.perf_counter() - start_wall - spent[0]
        cpu_time_s = time.process_time() - start_cpu - spent[1]
        test_loss, test_accuracy = evaluate(result.model, data.x_test, data.y_test)
        history = tuple(EpochMetrics(r.epoch, r.train_loss, r.train_accuracy, r.val_loss, r.val_accuracy, tl, ta)
                        for r, (tl, ta) in zip(result.history, test_curve))
        final = result.history[result.best_epoch - 1]
        # the same call on a fresh generator of the same seed gives train_model's own split (its first draw)
        fit_idx, _ = stratified_split(data.y_train, config.val_fraction, torch.Generator().manual_seed(config.seed))
        samples_seen = len(fit_idx) * len(result.history)
        cost = TrialCost(fit_time_s=fit_time_s, cpu_time_s=cpu_time_s, epochs_run=len(result.history),
                         samples_seen=samples_seen, n_params=count_parameters(model),
                         train_flops=_train_flops(model, data.x_test, samples_seen))
        trial = TrialResult(
            key=task.key, point_index=task.point_index, repeat=task.repeat, seed=config.seed, config=config,
            train_fraction=task.train_fraction, n_train=data.n_train, history=history,
            best_epoch=result.best_epoch, stopped_early=result.stopped_early,
            train_accuracy=final.train_accuracy, train_loss=final.train_loss, val_accuracy=final.val_accuracy,
            val_loss=final.val_loss, test_accuracy=test_accuracy, test_loss=test_loss, cost=cost)
        weights = {k: v.detach().clone() for k, v in result.model.state_dict().items()} if task.keep_model else None
    return trial, weights


def trial_key(point_index: int, repeat: int) -> str:
    return f"p{point_index:03d}-r{repeat:02d}"


def data_fingerprint(dataset: Dataset) -> str:
    """SHA-256 of the data's arrays (shape, dtype and bytes): a resumed sweep must train on the same data."""
    digest = hashlib.sha256()
    for t in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        t = t.contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def load_sweep_data(data: str | os.PathLike[str] | Dataset, n_train: int | None, n_test: int | None) -> Dataset:
    for label, n in (("n_train", n_train), ("n_test", n_test)):
        if n is not None and n < 1:
            raise XauditError(f"{label} must be at least 1, got {n}: pass e.g. {label}=500 (or None for all)")
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    if n_train is not None or n_test is not None:
        dataset = dataset.subset(n_train, n_test)
    if dataset.n_train == 0 or dataset.n_test == 0:
        raise XauditError(f"dataset {dataset.name!r} needs training and test samples for a sweep: it has "
                          f"{dataset.n_train} and {dataset.n_test}")
    return dataset


def _check_setup(model: str, base: TrainConfig, repeats: int, seed: int) -> None:
    if model not in MODELS:
        raise did_you_mean("model", model, MODELS)
    if int(repeats) < 1:
        raise XauditError(f"repeats must be at least 1, got {repeats}: pass e.g. repeats=3")
    if base.val_fraction <= 0:
        raise XauditError("the sweep recommends on validation accuracy but val_fraction is 0: set it to e.g. 0.1")
    check_seed(seed)


def run_sweep(
    model: str,
    data: str | os.PathLike[str] | Dataset,
    grid: Mapping[str, Any] | Sequence[str] | Grid,
    *,
    base: TrainConfig | None = None,
    repeats: int = 1,
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    hidden: int | None = None,
    backend: str | Backend = "local",
    workers: int | None = None,
    address: str | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    keep_models: bool = True,
    progress: Progress | None = None,
) -> SweepResult:
    """Train a fresh ``model`` for every point of ``grid`` and every repeat; return a :class:`SweepResult`.

    ``grid`` is ``["weight_decay=0,1e-4", "augment=none,shift"]``, a mapping ``{"dropout": [0, 0.2]}`` or a
    parsed grid (knobs: :data:`~xaudit.models.KNOBS`). ``base`` is the config the grid changes (its seed
    is replaced by ``seed + repeat``). ``n_train``/``n_test`` take the first samples of each split
    (quick runs). ``backend`` is ``"local"`` (a spawned process pool of ``workers``, default every core),
    ``"sequential"`` or ``"ray"`` (``address`` joins a running cluster). With ``run_dir`` every finished
    trial is recorded there, with its weights if ``keep_models``; ``resume=True`` reuses the records of
    an interrupted run of the same sweep and trains only the rest.

    >>> result = run_sweep("cnn", "digits", ["weight_decay=0,1e-3"], base=TrainConfig(epochs=5))
    >>> result.recommendation.chosen.point.label
    """
    base = TrainConfig() if base is None else base
    parsed = grid if _is_parsed(grid) else parse_grid(grid, base=base)  # type: ignore[arg-type]
    _check_setup(model, base, repeats, seed)
    runner = make_backend(backend, workers=workers, address=address)
    dataset = load_sweep_data(data, n_train, n_test)
    # a model that cannot read this data (a GRU on images) fails here, before the run directory is written;
    # seeded, so the global RNG is untouched
    build_model(model, dataset.input_shape, dataset.n_classes, hidden=hidden, seed=0)
    points = grid_points(parsed, base, dataset.kind)
    tasks = [TrialTask(trial_key(p.index, r), p.index, r, model, dataclasses.replace(p.config, seed=(seed + r) % 2**32),
                       p.train_fraction, hidden, keep_models and run_dir is not None)
             for p in points for r in range(int(repeats))]
    fingerprint = data_fingerprint(dataset)
    start = time.perf_counter()

    finished: dict[str, TrialResult] = {}
    root: Path | None = None
    if run_dir is not None:
        root = prepare_run_dir(run_dir)
        sweep = {"model": model, "data": dataset.name, "data_fingerprint": fingerprint, "n_train": n_train,
                 "n_test": n_test, "hidden": hidden, "grid": grid_to_json(parsed), "base_config": base.to_dict(),
                 "repeats": int(repeats), "seed": int(seed)}
        open_manifest(root, sweep, [t.key for t in tasks], resume=resume)
        remove_stale_temporaries(root)
        done = finished_keys(root)
        for task in tasks:
            trial = read_trial(root, task.key) if task.key in done else None
            if trial is not None and trial.config == task.config and trial.train_fraction == task.train_fraction:
                finished[task.key] = trial
    reused = tuple(t.key for t in tasks if t.key in finished)
    todo = [t for t in tasks if t.key not in finished]
    if progress:
        resumed = f", {len(reused)} reused from {run_dir}" if reused else ""
        progress(f"sweep of {len(points)} points × {repeats} repeats on {dataset.name} "
                 f"({len(todo)} trials to train on {runner.name}{resumed})")

    def on_result(i: int, outcome: tuple[TrialResult, dict[str, np.ndarray] | None]) -> None:
        trial, arrays = outcome
        # Ray hands back arrays read-only, straight from its object store: a tensor must own writable memory
        weights = None if arrays is None else {k: torch.from_numpy(v if v.flags.writeable else v.copy())
                                               for k, v in arrays.items()}
        if root is not None:
            write_trial(root, trial, weights)
        finished[trial.key] = trial
        if progress:
            progress(_describe_trial(points[trial.point_index], trial, len(finished), len(tasks)))

    runner.run(portable_trial, todo, dataset, on_result)
    return SweepResult(
        model=model, data=dataset.name, data_fingerprint=fingerprint, grid=parsed, base_config=base,
        points=points, trials=tuple(finished[t.key] for t in tasks), repeats=int(repeats), seed=int(seed),
        backend=runner.name, wall_s=time.perf_counter() - start, run_dir=None if root is None else str(root),
        reused=reused, computed=tuple(t.key for t in todo), hidden=hidden, n_train=n_train, n_test=n_test,
        input_shape=dataset.input_shape, n_classes=dataset.n_classes)


def _is_parsed(grid: Any) -> bool:
    return isinstance(grid, tuple) and all(isinstance(e, tuple) and len(e) == 2 and isinstance(e[1], tuple)
                                           for e in grid)


def _describe_trial(point: SweepPoint, trial: TrialResult, done: int, total: int) -> str:
    val = "–" if trial.val_accuracy is None else f"{trial.val_accuracy:.1%}"
    return (f"trial {done}/{total} [{point.label or 'base'}, repeat {trial.repeat}]: train {trial.train_accuracy:.1%} "
            f"val {val} test {trial.test_accuracy:.1%} ({trial.fit_time_s:.1f} s)")


def trained_model(result: SweepResult, point_index: int, repeat: int = 0, *,
                  dataset: Dataset | None = None) -> nn.Module:
    """The trained model of one trial, in eval mode: its weights from the run directory when they were kept,
    otherwise trained again — a trial is a pure function of its inputs, so it comes back bit-identical.

    Training again needs ``dataset``: the same data the sweep ran on (checked by fingerprint).
    """
    if not 0 <= point_index < len(result.points):
        raise XauditError(f"point_index {point_index} is out of range: the sweep has {len(result.points)} points")
    if not 0 <= repeat < result.repeats:
        raise XauditError(f"repeat {repeat} is out of range: the sweep ran {result.repeats} repeats")
    key = trial_key(point_index, repeat)
    point = result.points[point_index]
    config = dataclasses.replace(point.config, seed=(result.seed + repeat) % 2**32)
    weights = read_state_dict(Path(result.run_dir), key) if result.run_dir else None
    if weights is None:
        if dataset is None:
            raise XauditError(f"the weights of trial {key} were not kept: pass dataset=<the sweep's data> to "
                              "train it again (bit-identical)")
        if data_fingerprint(dataset) != result.data_fingerprint:
            raise XauditError(f"the dataset passed is not the one sweep {result.data!r} ran on: pass the same "
                              "data (with the same n_train/n_test subset)")
        task = TrialTask(key, point_index, repeat, result.model, config, point.train_fraction, result.hidden, True)
        _, weights = run_trial(task, dataset)
        assert weights is not None
    model = build_model(result.model, result.input_shape, result.n_classes, dropout=config.dropout,
                        hidden=result.hidden, seed=0)  # seeded only to leave the global RNG alone
    model.load_state_dict(weights)
    return model.eval()
