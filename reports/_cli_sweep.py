"""``xaudit sweep``: train a grid of regularization/augmentation settings and write sweep.html + sweep.json.

The output directory is also the sweep's run directory (manifest.json, one record per finished trial,
the trained weights), so an interrupted sweep continues with ``--resume``. Errors follow the CLI's
contract: one line, ``xaudit: error: ...``, exit code 2, raised before any training starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from xaudit.models._backends import BACKENDS
from xaudit.models._data import DATASETS, MAX_SEED
from xaudit.models._errors import XauditError
from xaudit.models._grid import KNOBS, parse_grid
from xaudit.models._nets import MODELS
from xaudit.models._recipes import default_data
from xaudit.models._rundir import finished_keys
from xaudit.models._sweep import run_sweep
from xaudit.models._train import TrainConfig

from ._atomic import prepare_out_dir
from ._cli import _cleanup_on_failure, _one_line, _positive_int, _printer, _Terminated

_EPILOG = """\
knobs (--grid KNOB=V1,V2,... , repeat for a grid):
{knobs}

examples:
  xaudit sweep --model cnn --data mnist1d --grid weight_decay=0,1e-4,1e-3 --grid augment=none,shift --epochs 30
  xaudit sweep --data digits --grid train_fraction=0.1,0.25,0.5,1 --repeats 3 --out learning-curve
  xaudit sweep ... --backend ray --address auto      # the same sweep on a running Ray cluster
  xaudit sweep ... --resume                          # finish an interrupted sweep in the same --out
"""


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sweep`` to an ``add_subparsers()`` object (its ``run`` default is :func:`run_sweep_command`)."""
    knobs = "\n".join(f"  {k.name:<17} {k.help}" for k in KNOBS.values())
    parser = subparsers.add_parser(
        "sweep", help="sweep regularization and augmentation; write sweep.html and sweep.json",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG.format(knobs=knobs),
        description="Train a fresh built-in model for every point of a grid over the training knobs (and every "
                    "repeat), record train/validation/test curves, the gap and the cost of each point, recommend "
                    "the config with the best validation accuracy and the smallest gap, and show how the "
                    "explanations drift as regularization grows.")
    what = parser.add_argument_group("model and data")
    what.add_argument("--model", default="cnn", metavar="MODEL",
                      help=f"a built-in model: {', '.join(MODELS)} (default: cnn)")
    what.add_argument("--data", metavar="DATA",
                      help=f"a built-in dataset ({', '.join(DATASETS)}) or an .npz file (default: digits for "
                           "cnn, digits-seq for gru and lstm)")
    what.add_argument("--n-train", type=_positive_int, metavar="N",
                      help="use the first N training samples (quick runs)")
    what.add_argument("--n-test", type=_positive_int, metavar="N", help="use the first N test samples")
    grid = parser.add_argument_group("grid")
    grid.add_argument("--grid", action="append", default=[], metavar="KNOB=V1,V2",
                      help="a knob and its values; repeat for more knobs (see the list below)")
    grid.add_argument("--epochs", type=_positive_int, metavar="N", help="epochs of every trial (default: 30)")
    grid.add_argument("--repeats", type=_positive_int, default=1, metavar="K",
                      help="trials per point, repeat r seeded with --seed + r (default: 1)")
    grid.add_argument("--seed", type=int, default=0, help=f"seed of repeat 0, 0..{MAX_SEED} (default: 0)")
    run = parser.add_argument_group("run")
    run.add_argument("--out", default="xaudit-sweep", metavar="DIR",
                     help="run directory: trial records, weights, sweep.html and sweep.json (default: xaudit-sweep)")
    run.add_argument("--resume", action="store_true",
                     help="continue the sweep in --out, training only the trials without a record")
    run.add_argument("--backend", default="local", choices=BACKENDS,
                     help="local: a process pool on this machine (default); sequential: one trial at a time in "
                          "this process; ray: Ray tasks (pip install \"xaudit[ray]\")")
    run.add_argument("--workers", type=_positive_int, metavar="N",
                     help="parallel trials (local) or CPUs of a local Ray cluster (default: every usable core)")
    run.add_argument("--address", metavar="ADDR", help="join this Ray cluster (e.g. auto or ray://host:10001) "
                                                       "instead of starting a local one; needs --backend ray")
    run.add_argument("--drift", default="saliency", metavar="A,B",
                     help="explanation methods whose drift across the points is measured, or none (default: saliency)")
    run.add_argument("--n-drift", type=_positive_int, default=16, metavar="N",
                     help="test inputs explained per point for the drift, at least 2 (default: 16)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(run=run_sweep_command)
    return parser


def _drift_methods(text: str) -> tuple[str, ...]:
    from ._build import resolve_methods

    if text.strip().lower() in ("", "none", "off"):
        return ()
    return resolve_methods(text)


def run_sweep_command(args: argparse.Namespace) -> int:
    """Run ``xaudit sweep`` for parsed ``args``; user errors print one line and return 2."""
    try:
        return _run(args)
    except XauditError as exc:
        print(f"xaudit: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    progress = _printer(args.quiet)
    # every string becomes a checked object before anything is created or trained
    base = TrainConfig(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
    grid = parse_grid(args.grid, base=base)
    drift_methods = _drift_methods(args.drift)
    if drift_methods and args.n_drift < 2:
        # explanation_drift refuses it too, but only after every trial has trained
        raise XauditError(f"--n-drift must be at least 2 for the explanation drift, got {args.n_drift}: pass e.g. "
                          "--n-drift 16, or --drift none to skip the drift")
    if args.address and args.backend != "ray":
        raise XauditError(f"--address joins a Ray cluster and needs --backend ray (got --backend {args.backend})")
    created = prepare_out_dir(args.out, files=("manifest.json", "sweep.html", "sweep.json"))
    with _cleanup_on_failure(created):
        try:
            result = run_sweep(args.model, args.data or default_data(args.model), grid, base=base,
                               repeats=args.repeats, seed=args.seed, n_train=args.n_train, n_test=args.n_test,
                               backend=args.backend, workers=args.workers, address=args.address,
                               run_dir=args.out, resume=args.resume, progress=progress)
        except (KeyboardInterrupt, _Terminated):  # Ctrl-C or SIGTERM: the saved trials stay for --resume
            done = len(finished_keys(Path(args.out)))
            print(f"xaudit: sweep interrupted with {done} trial(s) saved in {args.out}: run the same command "
                  "with --resume to finish it", file=sys.stderr)
            raise
        drift = None
        if drift_methods:
            from ._drift import explanation_drift

            if progress:
                progress(f"explanation drift of {', '.join(drift_methods)} on {args.n_drift} test inputs")
            drift = explanation_drift(result, methods=drift_methods, n_samples=args.n_drift, seed=args.seed,
                                      progress=progress)
        from ._sweep_report import write_sweep_report

        files = write_sweep_report(result, args.out, drift)
    rec = result.recommendation
    summary = (f"recommended #{rec.chosen.point.index} ({rec.chosen.point.label}): test "
               f"{rec.chosen['test_accuracy'].mean:.1%} vs baseline {rec.baseline['test_accuracy'].mean:.1%}, gap "
               f"{rec.chosen['gap'].mean:.1%} vs {rec.baseline['gap'].mean:.1%}")
    print(summary)
    if progress:
        progress(f"wrote {files.html} and {files.json}")
    return 0
