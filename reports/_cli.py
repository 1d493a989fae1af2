"""The ``xaudit`` command: ``train``, ``explain`` and ``report``.

Every user mistake (an unknown name, a bad file, data that does not fit the model, an unwritable
``--out``) is an :class:`XauditError` and becomes ONE line, ``xaudit: error: <problem and fix>``, with
exit code 2, before any long work and without leaving a partial output file: ``--out`` is probed first
and outputs are written atomically at the end. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn
from pathlib import Path

import numpy as np
import torch

from xaudit.explain import available_methods, get_explainer, parse_bytes
from xaudit.explain._cost import watts_per_core
from xaudit.explain._memory import current_budget
from xaudit.models._data import DATASETS, MAX_SEED, check_seed
from xaudit.models._layout import CHANNELS_FIRST
from xaudit.models._nets import MODELS, ModelSpec
from xaudit.models._train import TrainConfig, train_model
from xaudit.models._errors import XauditError, XauditWarning, did_you_mean

from ._atomic import (
    atomic_write,
    atomic_write_all,
    prepare_out_dir,
    prepare_out_file,
    refuse_overwriting_inputs,
    regular_file_target,
    remove_created_dirs,
)
from ._build import (
    ReportContext,
    background_samples,
    check_budget_before_training,
    compute_context,
    compute_metrics,
    explain_methods,
    predict_classes,
    resolve_methods,
    select_samples,
    unsupported_error,
)
from ._model_card import describe_run
from ._quality_build import QUALITY_MODES
from ._report import Report, json_safe, write_report
from ._runtime import machine_info, resolve_device, xaudit_version
from ._subject import Subject, describe_subject, epoch_printer, resolve_subject, training_config

Progress = Callable[[str], None]

#: What ``report`` (and ``audit --out``) writes into its output directory.
REPORT_FILES = ("report.html", "report.json")

_EPILOG = """\
examples:
  xaudit report                                    # built-in CNN on digits -> xaudit-report/report.html
  xaudit report --model gru --data mnist1d --methods saliency --n-explain 8
  xaudit train --model cnn --data digits --out cnn.pt
  xaudit explain --model cnn.pt --method integrated_gradients --out attr.npz
  xaudit report --model mypkg.nets:build --state-dict weights.pt --data my_data.npz
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    what = common.add_argument_group("model and data")
    what.add_argument("--model", default="cnn", metavar="MODEL",
                      help=f"a built-in model ({', '.join(MODELS)}; trained with its reference recipe and cached), "
                           "a model file (saved by `xaudit train`, or TorchScript), or a module:callable factory "
                           "returning a torch.nn.Module (default: cnn)")
    what.add_argument("--state-dict", metavar="FILE",
                      help="a state-dict file whose weights are loaded into --model")
    what.add_argument("--trust-pickle", action="store_true",
                      help="allow model files that hold pickled Python objects; unpickling can run arbitrary "
                           "code, so only use it for files you trust")
    what.add_argument("--data", metavar="DATA",
                      help=f"a built-in dataset ({', '.join(DATASETS)}) or an .npz file with x_test, y_test and "
                           "optionally x_train, y_train, class_names (default: the built-in dataset a saved model "
                           "records (a model trained on your own file needs that file named); for a built-in model, "
                           "digits for cnn and digits-seq for gru and lstm)")
    run = common.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0,
                     help=f"seed for training, the choice of explained samples and stochastic methods, 0..{MAX_SEED} "
                          "(default: 0)")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    run.add_argument("--epochs", type=_positive_int, metavar="N",
                     help="train for N epochs instead of the reference recipe's number (quick runs)")
    run.add_argument("--no-cache", action="store_true",
                     help="train built-in models afresh instead of reusing the cached copy "
                          "($XAUDIT_CACHE_DIR, default ~/.cache/xaudit)")
    run.add_argument("--memory-budget", default="2GiB", metavar="SIZE",
                     help="most memory one explanation method may take, e.g. 512MiB or 4GiB (MiB/GiB and "
                          "a bare m/g are binary, MB/GB decimal); inputs are chunked to fit (default: 2GiB)")
    run.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return common


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option or option value said in one line like every other bad input (``xaudit:
    error: …``, exit 2) instead of the usage block first. A missing command lists the commands; a misspelled
    one gets a "did you mean". Subcommand parsers are of this class too (argparse builds them with the
    parent's class)."""

    _argv: Sequence[str] = ()

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        self._argv = tuple(sys.argv[1:] if args is None else args)  # to name the command in an error
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        if self.prog == "xaudit" and ("COMMAND" in message or "invalid choice" in message):
            self.exit(2, f"xaudit: error: {self._command_problem()} (see xaudit --help)\n")
        command = self.prog
        if command == "xaudit":  # unrecognized arguments are found by the top parser, after the command's
            named = [a for a in self._argv if not a.startswith("-")][:1]
            command = f"xaudit {named[0]}" if named else "xaudit COMMAND"
        self.exit(2, f"xaudit: error: {message} (see {command} --help)\n")

    def _command_problem(self) -> str:
        """The top parser's missing or unknown command, with the commands to choose from."""
        choices = next(a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction))
        # argparse takes the first word that is not an option as the command, whatever follows it
        given = next((a for a in self._argv if not a.startswith("-")), None)
        if given is None:
            *first, last = choices
            return f"give a command: {', '.join(first)} or {last}"
        return str(did_you_mean("command", given, choices))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``xaudit`` command."""
    parser = _Parser(
        prog="xaudit", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Explain and audit PyTorch CNN and RNN classifiers: attributions with measured cost, "
                    "and one self-contained HTML report.")
    parser.add_argument("--version", action="version", version=f"xaudit {xaudit_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = _common_options()
    methods = ", ".join(available_methods())

    report = commands.add_parser(
        "report", parents=[common], help="write report.html and report.json",
        description="Train (or load) a model, explain test samples with every method, and write a "
                    "self-contained report.html (opens offline) plus report.json. With no arguments: the "
                    "built-in cnn on digits, written to xaudit-report/.")
    report.add_argument("--out", default="xaudit-report", metavar="DIR",
                        help="directory for report.html and report.json (default: xaudit-report)")
    add_report_options(report)
    report.set_defaults(run=_run_report)

    train = commands.add_parser(
        "train", parents=[common], help="train a model and save it",
        description="Train a built-in model with its reference recipe (or a factory or TorchScript model with the "
                    "default recipe) and save it: a built-in model as a model file that records the data, recipe "
                    "and history; any other model as its weights (a state dict), loaded back with --model <the "
                    "same model> --state-dict FILE. A saved model file trains further from its weights, with its "
                    "architecture's reference recipe; the new file records the earlier run too.")
    train.add_argument("--out", default="model.pt", metavar="FILE", help="model file to write (default: model.pt)")
    train.set_defaults(run=_run_train)

    explain = commands.add_parser(
        "explain", parents=[common], help="compute attributions and their cost",
        description="Explain test samples with one method; write attributions, inputs, targets, labels and "
                    "test indices to an .npz, and the cost as JSON next to it (also printed on stdout).")
    explain.add_argument("--method", required=True, metavar="NAME", help=f"explanation method: {methods}")
    explain.add_argument("--out", default="attributions.npz", metavar="FILE",
                         help="the .npz to write (the name must end in .npz); the cost goes to the same name "
                              "with .json (default: attributions.npz)")
    explain.add_argument("--n-explain", type=_positive_int, metavar="N",
                         help="explain N seeded test samples (default: all test samples)")
    explain.set_defaults(run=_run_explain)

    from ._cli_audit import add_audit_parser  # _cli_audit and _cli_sweep reuse this module's helpers
    from ._cli_sweep import add_sweep_parser

    add_sweep_parser(commands)
    add_audit_parser(commands, common)
    return parser


def add_report_options(parser: argparse.ArgumentParser) -> None:
    """What a report computes (``report`` and ``audit``): --methods, --n-explain and --quality."""
    parser.add_argument("--methods", metavar="A,B",
                        help=f"comma-separated explanation methods (default: all of {', '.join(available_methods())})")
    parser.add_argument("--n-explain", type=_positive_int, default=32, metavar="N",
                        help="how many test samples to explain and measure (default: 32)")
    parser.add_argument("--quality", choices=QUALITY_MODES, default="full",
                        help="score the explanations: full (faithfulness, sanity checks, stability, the cost/quality "
                             "frontier), fast (deletion and insertion AUC only) or none (default: full)")


def _printer(quiet: bool) -> Progress | None:
    if quiet:
        return None
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"xaudit [{time.perf_counter() - start:6.1f} s] {message}", file=sys.stderr, flush=True)

    return progress


@contextmanager
def _cleanup_on_failure(created: list[Path]) -> Iterator[None]:
    """Remove the output directories this run created if it fails, so a failed run leaves nothing behind."""
    try:
        yield
    except BaseException:
        remove_created_dirs(created)
        raise


def _subject(args: argparse.Namespace, progress: Progress | None, *, trains: bool = False) -> Subject:
    """The subject of a command; ``trains``: the command trains a loaded model itself (``train``), so
    --epochs only goes to resolve_subject for a bare built-in name."""
    builtin_name = args.model in MODELS and args.state_dict is None
    epochs = args.epochs if builtin_name or not trains else None
    return resolve_subject(args.model, args.data, state_dict=args.state_dict, trust_pickle=args.trust_pickle,
                           seed=args.seed, epochs=epochs, use_cache=not args.no_cache, progress=progress)


def _run_report(args: argparse.Namespace) -> int:
    progress = _printer(args.quiet)
    created = prepare_out_dir(args.out, files=REPORT_FILES)
    with _cleanup_on_failure(created):
        ctx = report_context(args, progress)
        if progress:
            progress("rendering the report")
        files = write_report(Report.from_context(ctx), args.out)
    if progress:
        progress(f"wrote {files.html} and {files.json}")
    return 0


def report_context(args: argparse.Namespace, progress: Progress | None) -> ReportContext:
    """Train or load the model and compute everything a report shows, from ``report``/``audit`` options."""
    names = resolve_methods(args.methods)
    device = resolve_device(args.device)
    budget = parse_bytes(args.memory_budget)
    check_budget_before_training(args.model, args.data, names, budget, state_dict=args.state_dict, seed=args.seed)
    subject = _subject(args, progress)
    return compute_context(subject, names, n_explain=args.n_explain, seed=args.seed, device=device,
                           progress=progress, memory_budget=budget, quality=args.quality)


def _inputs(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The files a command reads (built-in model and dataset names are not files, and are skipped)."""
    return [("--model", args.model), ("--data", args.data), ("--state-dict", args.state_dict)]


def _run_train(args: argparse.Namespace) -> int:
    progress = _printer(args.quiet)
    refuse_overwriting_inputs(args.out, _inputs(args))
    created = prepare_out_file(args.out)
    with _cleanup_on_failure(created):
        resolve_device(args.device)  # validated for consistency; training runs where the model lives
        subject = _subject(args, progress, trains=True)
        builtin = args.model in MODELS
        if not builtin or args.state_dict is not None:
            # resolve_subject trained only a bare built-in name; a loaded, factory or warm-started model
            # is trained here, in place: a built-in architecture (named, or a saved xaudit model file) with its
            # reference recipe, any other with the default recipe
            saved_builtin = isinstance(getattr(subject.model, "spec", None), ModelSpec) and subject.name in MODELS
            architecture = args.model if builtin else (subject.name if saved_builtin else None)
            config = (training_config(architecture, subject.dataset, seed=args.seed, epochs=args.epochs)
                      if architecture else
                      TrainConfig(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {})))
            if progress:
                progress(f"training {subject.name} on {subject.dataset.name} ({config.epochs} epochs)")
            if architecture:
                # trains on with the dropout the net was built with (a file's own, 0 for --state-dict)
                spec = getattr(subject.model, "spec", None)
                config = dataclasses.replace(config, dropout=float(getattr(spec, "dropout", config.dropout)))
            # where these weights came from, kept in the new file: the file's own runs, or the weights file
            before = subject.warm_start
            if subject.train_config is not None or subject.history:
                before += (describe_run(subject.source, subject.train_config, subject.history),)
            elif saved_builtin or args.state_dict is not None:
                before += (describe_run(subject.source, None, ()),)
            result = train_model(subject.model, subject.dataset, config,
                                 progress=epoch_printer(progress, subject.name))
            subject = dataclasses.replace(subject, train_config=config, history=result.history, warm_start=before)
        _save_trained(subject, Path(args.out), progress)
    if progress:
        metrics = compute_metrics(subject.model, subject.dataset)
        progress(f"saved {args.out}: train accuracy {metrics['train_accuracy']:.2%}, "
                 f"test accuracy {metrics['test_accuracy']:.2%}")
    return 0


def _save_trained(subject: Subject, out: Path, progress: Progress | None) -> None:
    """An xaudit model file for built-in architectures; a plain state dict for any other module.

    Only built-in models can be rebuilt from a file alone; for a factory or TorchScript model the
    weights are what the user needs, to be loaded back with ``--model <same> --state-dict <out>``.
    """
    from xaudit.models import save_model  # model I/O on use, as in _subject

    if isinstance(getattr(subject.model, "spec", None), ModelSpec):
        save_model(subject.model, out, dataset=subject.dataset.name, train_config=subject.train_config,
                   history=subject.history, warm_start=subject.warm_start)
        return
    weights = {k: v.detach().cpu().clone() for k, v in subject.model.state_dict().items()}
    atomic_write(out, lambda fh: torch.save(weights, fh))
    if progress:
        progress(f"{subject.name} is not a built-in model, so {out} holds its weights only (a state dict): "
                 f"load them with --model <the same model> --state-dict {out}")


def _run_explain(args: argparse.Namespace) -> int:
    progress = _printer(args.quiet)
    out = Path(args.out)
    if out.suffix.lower() != ".npz":  # .json is where the cost goes; any other name would hide an .npz archive
        fix = out / "attributions.npz" if out.name in ("", "..") or out.is_dir() else out.with_suffix(".npz")
        raise XauditError(f"--out {args.out!r} must be an .npz file (attributions, inputs, targets); the cost goes "
                          f"next to it as .json: use e.g. {str(fix)!r}")
    cost_path = out.with_suffix(".json")  # a.npz or a.NPZ -> a.json
    refuse_overwriting_inputs(out, _inputs(args))
    refuse_overwriting_inputs(cost_path, _inputs(args), option="--out's cost file")
    created = prepare_out_file(out, example="attributions.npz")
    with _cleanup_on_failure(created):
        regular_file_target(cost_path, option="--out's cost file")
        (name,) = resolve_methods([args.method])
        device = resolve_device(args.device)
        budget = parse_bytes(args.memory_budget)
        check_budget_before_training(args.model, args.data, [name], budget, state_dict=args.state_dict,
                                     seed=args.seed, refuse_unsupported=True)
        subject = _subject(args, progress)
        subject.model.to(device)
        dataset = subject.dataset
        indices = select_samples(dataset.n_test, args.n_explain or dataset.n_test, args.seed)
        x = dataset.x_test[indices]
        targets = predict_classes(subject.model, x)
        background = background_samples(dataset, args.seed, explained=indices)
        reason = get_explainer(name)(subject.model).unsupported_reason(tuple(x.shape[1:]))
        if reason:  # said once, as the error (not first as a "skipped" progress line)
            raise unsupported_error(name, reason)
        (result,) = explain_methods(subject.model, x, targets, background, [name], seed=args.seed,
                                    progress=progress, memory_budget=budget, say_failures=False)
        if result.explanation is None:
            raise unsupported_error(name, result.reason or "unsupported")
        exp = result.explanation
        summary = {"xaudit_version": xaudit_version(), **exp.to_dict(), "fit_wall_s": result.fit_wall_s,
                   "cost_total": exp.cost.to_dict(), **describe_subject(subject),
                   "machine": machine_info(device), "memory_budget_bytes": current_budget(budget), "npz": out.name}
        attributions, inputs = exp.attributions, exp.inputs
        if subject.input_layout == CHANNELS_FIRST:  # back to the layout of the user's data file
            attributions, inputs = attributions.transpose(1, 2), inputs.transpose(1, 2)
        arrays = {"attributions": attributions.numpy(), "inputs": inputs.numpy(),
                  "targets": exp.targets.numpy(), "labels": dataset.y_test[indices].numpy(),
                  "test_indices": indices.numpy(), "class_names": np.array(subject.class_names, dtype=str),
                  # per-sample checks of the method's own axiom: IG's/deeplift's convergence_delta, SHAP's
                  # additivity_error and base_value
                  **{key: value.numpy() for key, value in exp.extras.items()}}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        text = json.dumps(json_safe(summary), indent=2, allow_nan=False) + "\n"
        # both or neither: a disk that fills up after the .npz must not leave attributions without their cost
        atomic_write_all([(out, buffer.getvalue()), (cost_path, text.encode("utf-8"))])
    print(text, end="")
    if progress:
        progress(f"wrote {out} and {cost_path}")
    return 0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run ``xaudit`` with ``argv`` (default: the command line); returns the exit code."""
    with _cli_warnings():
        return _main(argv)


@contextmanager
def _cli_warnings() -> Iterator[None]:
    """xaudit's own warnings as one line ``xaudit: warning: …`` (Python's format adds the file, the line number
    and the source line); everyone else's as before."""
    saved = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if issubclass(category, XauditWarning):
            print(f"xaudit: warning: {' '.join(str(message).split())}", file=sys.stderr if file is None else file)
        else:
            saved(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = saved


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: keep argparse's code, return it
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        with _terminate_as_exception():
            check_seed(args.seed, name="--seed")  # every command has one; numpy and scikit-learn take 32 bits
            watts_per_core()  # the environment's energy setting, checked before any work
            return int(args.run(args))
    except XauditError as exc:
        print(f"xaudit: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xaudit: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("xaudit: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM


class _Terminated(BaseException):
    """SIGTERM (``timeout``'s default signal, a cancelled CI job) as an exception, so a run's clean-up (the
    output directories it created, temporary files) happens as it does on Ctrl-C."""


@contextmanager
def _terminate_as_exception() -> Iterator[None]:
    def terminate(signum: int, frame: Any) -> None:
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread (main() called from a worker): leave the signal alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
