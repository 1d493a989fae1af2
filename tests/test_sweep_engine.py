"""The sweep engine: result shapes, determinism, run directories, and resuming after a kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from xaudit.models._errors import XauditError
from xaudit.models._sweep import run_sweep, trained_model
from xaudit.models._sweep_result import METRICS, SweepResult, TrialResult
from xaudit.models._train import TrainConfig

#: A tiny, fast sweep: 200 digits images, 2 epochs.
BASE = TrainConfig(epochs=2, batch_size=32)
DATA = dict(data="digits", n_train=200, n_test=100)


def _sweep(grid, **kwargs) -> SweepResult:
    options = {"base": BASE, "backend": "sequential", **DATA, **kwargs}
    return run_sweep("cnn", grid=grid, **options)


@pytest.fixture(scope="module")
def two_by_two() -> SweepResult:
    return _sweep(["weight_decay=0,1e-3", "augment=none,shift"], repeats=2)


def test_result_shapes(two_by_two: SweepResult) -> None:
    r = two_by_two
    assert len(r.points) == 4 and len(r.trials) == 8 and r.repeats == 2
    assert [(t.point_index, t.repeat) for t in r.trials] == [(p, k) for p in range(4) for k in range(2)]
    # common random numbers: repeat k of every point has seed 0 + k
    assert {t.seed for t in r.trials if t.repeat == 1} == {1}
    for t in r.trials:
        assert isinstance(t, TrialResult)
        assert len(t.history) == t.cost.epochs_run == 2
        assert t.gap == pytest.approx(t.train_accuracy - t.test_accuracy)
        assert 0 <= t.test_accuracy <= 1 and t.val_accuracy is not None
        assert t.cost.fit_time_s > 0 and t.cost.samples_seen > 0 and t.cost.train_flops > 0
        assert t.history[-1].test_accuracy == pytest.approx(t.test_accuracy)  # no early stopping: last epoch
    assert len(r.summaries) == 4 and set(r.summaries[0].stats) == set(METRICS)
    assert r.summaries[0]["test_accuracy"].n == 2
    curve = r.curve("augment")
    assert [c.value for c in curve] == [(), ("shift",)] and curve[0].stats["test_accuracy"].n == 4
    with pytest.raises(XauditError, match="did you mean 'augment'"):
        r.curve("augmnt")


def test_to_json_is_plain_json(two_by_two: SweepResult) -> None:
    data = json.loads(json.dumps(two_by_two.to_json(), allow_nan=False))
    assert data["grid"] == {"weight_decay": [0.0, 0.001], "augment": [[], ["shift"]]}
    assert len(data["points"]) == 4 and len(data["trials"]) == 8
    assert data["recommendation"]["baseline"] == 0 and data["recommendation"]["baseline_is_unregularized"]
    assert set(data["curves"]) == {"weight_decay", "augment"}
    assert TrialResult.from_json(data["trials"][3]) == two_by_two.trials[3]


def test_same_seed_same_results_and_the_global_rng_is_untouched(two_by_two: SweepResult) -> None:
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    again = _sweep(["weight_decay=0,1e-3", "augment=none,shift"], repeats=2)
    assert torch.equal(torch.rand(1), before)
    assert [t.outcome() for t in again.trials] == [t.outcome() for t in two_by_two.trials]
    other = _sweep(["weight_decay=0"], seed=7)
    assert other.trials[0].outcome() != two_by_two.trials[0].outcome()


def test_train_fraction_gives_nested_stratified_subsets() -> None:
    from xaudit.models._sweep import load_sweep_data, train_subset

    data = load_sweep_data("digits", 200, 50)
    half, quarter = train_subset(data, 0.5, 3), train_subset(data, 0.25, 3)
    assert abs(half.n_train - 100) <= 10 and set(half.y_train.tolist()) == set(data.y_train.tolist())
    rows = {tuple(x.flatten().tolist()) for x in half.x_train}
    assert all(tuple(x.flatten().tolist()) in rows for x in quarter.x_train)
    assert torch.equal(half.x_test, data.x_test)


def test_run_dir_records_and_reloads_models(tmp_path: Path) -> None:
    result = _sweep(["dropout=0,0.2"], run_dir=tmp_path / "run")
    root = tmp_path / "run"
    assert sorted(p.name for p in (root / "trials").iterdir()) == ["p000-r00.json", "p001-r00.json"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["trials"] == ["p000-r00", "p001-r00"] and manifest["sweep"]["grid"] == {"dropout": [0.0, 0.2]}
    # the kept weights and a fresh retraining give the same model: a trial is a pure function of its inputs
    from xaudit.models._sweep import load_sweep_data

    kept = trained_model(result, 1)
    retrained = trained_model(_sweep(["dropout=0,0.2"]), 1, dataset=load_sweep_data(**DATA))
    for (name, a), (_, b) in zip(kept.state_dict().items(), retrained.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(XauditError, match="already holds a sweep"):
        _sweep(["dropout=0,0.2"], run_dir=root)
    different = r"cannot resume .*different grid \(dropout=0.0,0.2 there, dropout=0.0,0.5 here\)"
    with pytest.raises(XauditError, match=different):
        _sweep(["dropout=0,0.5"], run_dir=root, resume=True)
    with pytest.raises(XauditError, match="different base training config"):
        _sweep(["dropout=0,0.2"], run_dir=root, resume=True, base=TrainConfig(epochs=3, batch_size=32))
    with pytest.raises(XauditError, match="different training subset size"):
        _sweep(["dropout=0,0.2"], run_dir=root, resume=True, n_train=150)
    resumed = _sweep(["dropout=0,0.2"], run_dir=root, resume=True)
    assert resumed.computed == () and resumed.reused == ("p000-r00", "p001-r00")


def test_unwritable_run_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(XauditError, match="is a file, not a directory"):
        _sweep(["dropout=0"], run_dir=blocker / "run")


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"repeats": 0}, "repeats must be at least 1"),
    ({"base": TrainConfig(val_fraction=0.0)}, "val_fraction is 0"),
    ({"backend": "rey"}, "did you mean 'ray'"),
    ({"n_train": 0}, "n_train must be at least 1"),
])
def test_bad_setup_fails_before_training(kwargs: dict, fragment: str) -> None:
    with pytest.raises(XauditError, match=fragment):
        _sweep(["dropout=0"], **kwargs)


_KILLABLE = textwrap.dedent("""
    import sys
    from xaudit.models._sweep import run_sweep
    from xaudit.models._train import TrainConfig
    if __name__ == "__main__":
        run_sweep("cnn", "digits", ["weight_decay=0,1e-4,1e-3,1e-2"], base=TrainConfig(epochs=6, batch_size=32),
                  n_train=200, n_test=100, backend="local", workers=2, run_dir=sys.argv[1])
""")


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker processes from /proc")
def test_resume_after_kill_9_trains_only_the_missing_trials(tmp_path: Path) -> None:
    root = tmp_path / "run"
    script = tmp_path / "killable.py"  # a file, not -c: spawned workers re-import the parent's main module
    script.write_text(_KILLABLE)
    proc = subprocess.Popen([sys.executable, str(script), str(root)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while not list((root / "trials").glob("p*.json")):
            assert proc.poll() is None, "the sweep exited before it was killed"
            assert time.monotonic() < deadline, "no trial record appeared"
            time.sleep(0.01)
        workers = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    # the pool's workers notice that their parent died and exit instead of waiting for work forever
    deadline = time.monotonic() + 30
    while any(_alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert workers and not any(_alive(w) for w in workers), "orphaned pool workers"
    (root / "trials" / ".p003-r00.json.abc.tmp").write_text("{half a reco")  # what a kill mid-write leaves
    before = {p.name: p.stat().st_mtime_ns for p in (root / "trials").glob("p*.json")}
    assert 1 <= len(before) < 4, f"the kill landed after {len(before)} of 4 trials"

    resumed = _sweep(["weight_decay=0,1e-4,1e-3,1e-2"], base=TrainConfig(epochs=6, batch_size=32), run_dir=root,
                     resume=True)
    done = {name.removesuffix(".json") for name in before}
    assert set(resumed.reused) == done
    assert set(resumed.computed) == {f"p00{i}-r00" for i in range(4)} - done
    assert {p.name: p.stat().st_mtime_ns for p in (root / "trials").glob("p*.json") if p.name in before} == before
    assert not list((root / "trials").glob(".*.tmp"))

    fresh = _sweep(["weight_decay=0,1e-4,1e-3,1e-2"], base=TrainConfig(epochs=6, batch_size=32))
    assert [t.outcome() for t in resumed.trials] == [t.outcome() for t in fresh.trials]
