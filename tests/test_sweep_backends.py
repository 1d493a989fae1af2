"""The same trials give identical results in this process, in the local process pool and on Ray."""

from __future__ import annotations

import importlib.util
import os

import pytest

from xaudit.models._backends import LocalBackend, RayBackend, SequentialBackend, make_backend
from xaudit.models._errors import XauditError
from xaudit.models._sweep import run_sweep
from xaudit.models._sweep_result import SweepResult
from xaudit.models._train import TrainConfig

BASE = TrainConfig(epochs=2, batch_size=32)
GRID = ["weight_decay=0,1e-3"]


def _sweep(backend: str, **kwargs) -> SweepResult:
    return run_sweep("cnn", "digits", GRID, base=BASE, n_train=200, n_test=100, backend=backend, workers=2, **kwargs)


@pytest.fixture(scope="module")
def reference() -> SweepResult:
    return _sweep("sequential")


def test_local_pool_matches_sequential(reference: SweepResult) -> None:
    pooled = _sweep("local")
    assert pooled.backend == "local"
    assert [t.outcome() for t in pooled.trials] == [t.outcome() for t in reference.trials]


def test_ray_local_cluster_matches_local_backend(reference: SweepResult) -> None:
    if importlib.util.find_spec("ray") is None:
        # CI installs the dev extra, which includes Ray: a missing Ray there is a broken install, not a skip
        assert os.environ.get("CI") != "true", "Ray is part of the dev extra and must be installed in CI"
        pytest.skip("Ray is an optional extra: pip install 'xaudit[ray]'")
    import ray

    on_ray = _sweep("ray")
    assert on_ray.backend == "ray" and len(on_ray.trials) == 2
    assert [t.outcome() for t in on_ray.trials] == [t.outcome() for t in reference.trials]
    assert not ray.is_initialized(), "a cluster the sweep started must be shut down"


def test_make_backend() -> None:
    assert isinstance(make_backend("local", workers=3), LocalBackend) and make_backend("local", workers=3).workers == 3
    assert isinstance(make_backend("sequential"), SequentialBackend)
    assert isinstance(make_backend("ray", address="auto"), RayBackend)
    with pytest.raises(XauditError, match="workers must be at least 1"):
        make_backend("local", workers=0)


def test_an_invalid_point_fails_before_any_worker_starts() -> None:
    # "rotation" is an image augmentation given to sequence data: caught before any worker starts
    with pytest.raises(XauditError, match="is for image data"):
        run_sweep("cnn", "digits-seq", ["augment=rotation"], base=BASE, n_train=50, n_test=20, backend="local")


def _explode_on_one(task: int, shared: object) -> int:
    if task == 1:
        raise XauditError("trial 1 failed")
    return task * 10


def test_a_failing_trial_stops_the_pool_and_keeps_its_error() -> None:
    seen: dict[int, int] = {}
    with pytest.raises(XauditError, match="trial 1 failed"):
        LocalBackend(2).run(_explode_on_one, [0, 1, 2, 3], None, seen.__setitem__)
    assert set(seen.values()) <= {0, 20, 30}
    finished: dict[int, int] = {}
    SequentialBackend().run(_explode_on_one, [0, 2], None, finished.__setitem__)
    assert finished == {0: 0, 1: 20}


_UNGUARDED = """
from xaudit.models import XauditError, TrainConfig, run_sweep
try:  # no `if __name__ == "__main__":`, so every spawned worker runs this again and dies starting up
    run_sweep("cnn", "digits", ["weight_decay=0,1e-3"], base=TrainConfig(epochs=1), n_train=100, n_test=50,
              backend="local", workers=2)
except XauditError as err:
    print("XauditError:", err)
"""


def test_a_dead_worker_is_a_clear_error_not_a_broken_pool(tmp_path) -> None:
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"  # a file, not -c: spawned workers re-import the parent's main module
    script.write_text(_UNGUARDED)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert "XauditError: a sweep worker process died" in proc.stdout, proc.stderr[-2000:]
    assert '`if __name__ == "__main__":`' in proc.stdout and "--resume" in proc.stdout


class _Recording(SequentialBackend):
    """Runs trials here and keeps what each returned, as a pool worker would send it back."""

    def __init__(self) -> None:
        self.outcomes: list[object] = []

    def run(self, fn, tasks, shared, on_result) -> None:  # type: ignore[no-untyped-def]
        def keep(i: int, outcome: object) -> None:
            self.outcomes.append(outcome)
            on_result(i, outcome)

        super().run(fn, tasks, shared, keep)


def test_trial_results_cross_processes_without_torch_tensors(tmp_path) -> None:
    # a torch tensor travels between processes by file-descriptor sharing, whose listener left a /tmp/pymp-*
    # directory behind in every worker that Ctrl-C ended: trials send their weights as numpy arrays
    import torch

    backend = _Recording()
    result = run_sweep("cnn", "digits", ["weight_decay=0,1e-3"], base=TrainConfig(epochs=1), n_train=60,
                       n_test=30, backend=backend, run_dir=tmp_path / "run", keep_models=True)
    assert len(backend.outcomes) == 2

    def tensors(value: object) -> int:
        if isinstance(value, torch.Tensor):
            return 1
        if isinstance(value, dict):
            return sum(tensors(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(tensors(v) for v in value)
        return 0

    assert all(tensors(outcome) == 0 for outcome in backend.outcomes)
    assert all(outcome[1] for outcome in backend.outcomes)  # the weights were sent, as arrays
    assert sorted(p.name for p in (tmp_path / "run" / "models").glob("*.pt")) == ["p000-r00.pt", "p001-r00.pt"]
    assert result.points
