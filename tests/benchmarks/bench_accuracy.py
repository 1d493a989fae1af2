"""The built-in models reach their capacity targets with ``reference_config`` recipes.

Trains the digits CNN, the MNIST-1D CNN and the MNIST-1D GRU from scratch (seed 0) and prints a markdown
table: model, data, train accuracy (un-augmented train split, eval mode), test accuracy, the target, pass,
and fit time — wall seconds and this process's CPU seconds, since on a shared machine wall time mostly
measures the neighbours. Exits 1 if any model misses its target.

Targets: digits ``cnn`` ≥ 0.98; MNIST-1D ``cnn`` ≥ 0.94 and ``gru`` ≥ 0.91 (Greydanus 2020 reports CNN 94%
and GRU 91% for the paper's baselines).

Run: ``python tests/benchmarks/bench_accuracy.py [--threads 1] [--only cnn:mnist1d]`` (about 3 minutes of CPU
at one thread). One torch thread by default: these models are small, and on a shared 2-core machine a
second OpenMP thread makes every op wait for the busier core (measured 25× slower per step under load).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from xaudit.models import evaluate, load_dataset, reference_config, train_model

CASES: tuple[tuple[str, str, float], ...] = (
    ("cnn", "digits", 0.98),
    ("cnn", "mnist1d", 0.94),
    ("gru", "mnist1d", 0.91),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0 = torch's default)")
    parser.add_argument("--only", action="append", default=[], metavar="MODEL:DATA", help="run only these cases")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cases = [c for c in CASES if not args.only or f"{c[0]}:{c[1]}" in args.only]

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}\n")
    rows = [
        "| model | data | train acc | test acc | threshold | pass | fit s (wall) | fit s (CPU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    failed = False
    for model_name, data_name, threshold in cases:
        data = load_dataset(data_name)
        config = reference_config(model_name, data_name)
        cpu = time.process_time()
        result = train_model(model_name, data, config)
        cpu_s = time.process_time() - cpu
        _, train_acc = evaluate(result.model, data.x_train, data.y_train)
        _, test_acc = evaluate(result.model, data.x_test, data.y_test)
        ok = test_acc >= threshold
        failed |= not ok
        rows.append(
            f"| {model_name} | {data_name} | {train_acc:.4f} | {test_acc:.4f} | {threshold:.2f} | "
            f"{'PASS' if ok else 'FAIL'} | {result.fit_time_s:.0f} | {cpu_s:.0f} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)  # progress while the rest trains
    print("\n".join(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
