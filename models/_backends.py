"""Where sweep trials run: in this process, in a local process pool, or on a Ray cluster.

Every backend maps one picklable, module-level function over a list of tasks and hands each result to
``on_result`` in the calling process as soon as it is ready (completion order), so the caller can record
finished trials while others still run. A trial pins torch to one thread itself, so the backend decides
only how many trials run at once and the results do not depend on it.

The local pool uses the ``spawn`` start method: ``fork`` after torch has started its thread pools can
deadlock a child (a known PyTorch hazard), and ``spawn`` behaves the same on Linux, macOS and Windows.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from ._errors import XauditError, did_you_mean

BACKENDS: tuple[str, ...] = ("local", "sequential", "ray")
"""Names :func:`make_backend` accepts (``--backend`` on the command line)."""

Task = Any
OnResult = Callable[[int, Any], None]


class Backend(Protocol):
    """Runs ``fn(task, shared)`` for every task; ``on_result(i, result)`` is called in this process."""

    name: str

    def run(self, fn: Callable[[Task, Any], Any], tasks: Sequence[Task], shared: Any, on_result: OnResult) -> None:
        ...


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


class SequentialBackend:
    """One trial after another in this process: for debugging, and the baseline of the pool's speed-up."""

    name = "sequential"

    def run(self, fn: Callable[[Task, Any], Any], tasks: Sequence[Task], shared: Any, on_result: OnResult) -> None:
        for i, task in enumerate(tasks):
            on_result(i, fn(task, shared))


def _init_worker() -> None:
    # Ctrl-C reaches the whole process group; only the parent should react (it stops the pool), otherwise
    # every worker prints its own KeyboardInterrupt traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="xaudit-parent-watch").start()


def _exit_with_parent(parent: Any) -> None:
    # A parent killed with SIGKILL cannot stop its pool, and an idle worker would wait for work forever
    # (it holds its own end of the task queue, so it never sees EOF). Joining the parent returns when the
    # parent's sentinel pipe closes, i.e. when it dies; nobody is left to read this worker's results.
    parent.join()
    os._exit(1)


class LocalBackend:
    """A ``concurrent.futures.ProcessPoolExecutor`` of ``workers`` spawned processes (default: every usable core)."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        if workers is not None and int(workers) < 1:
            raise XauditError(f"workers must be at least 1, got {workers}: pass e.g. workers=2")
        self.workers = int(workers) if workers is not None else usable_cores()

    def run(self, fn: Callable[[Task, Any], Any], tasks: Sequence[Task], shared: Any, on_result: OnResult) -> None:
        if not tasks:
            return
        context = multiprocessing.get_context("spawn")
        pool = cf.ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=context,
                                      initializer=_init_worker)
        try:
            futures = {pool.submit(fn, task, shared): i for i, task in enumerate(tasks)}
            for future in cf.as_completed(futures):
                on_result(futures[future], future.result())
        except BrokenProcessPool:
            _stop(pool)
            raise XauditError(
                "a sweep worker process died before finishing its trial (killed, out of memory, or it could not "
                "start: called from a script, run_sweep must sit under `if __name__ == \"__main__\":` because "
                "spawned workers re-import the script); finished trials are kept in the run directory: rerun "
                "with resume=True (--resume), or use backend=\"sequential\"") from None
        except BaseException:
            _stop(pool)
            raise
        pool.shutdown(wait=True)


def _stop(pool: cf.ProcessPoolExecutor) -> None:
    """Cancel queued trials and end running ones now (Ctrl-C or a failed trial must not wait for them)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python ≥ 3.14
    if terminate is not None:
        terminate()
        return
    # older Pythons have no public way to end running workers; _processes is the executor's own table,
    # read before shutdown() clears it
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)


class RayBackend:
    """Trials as Ray tasks of one CPU each, on the cluster at ``address`` or on a local one started for the sweep.

    A local cluster gets ``num_cpus`` CPUs (default: every usable core) and no dashboard, and is shut down
    afterwards; joining an existing cluster leaves it running. Ray is an optional extra:
    ``pip install "xaudit[ray]"``.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        if num_cpus is not None and int(num_cpus) < 1:
            raise XauditError(f"num_cpus must be at least 1, got {num_cpus}")
        self.address = address
        self.num_cpus = int(num_cpus) if num_cpus is not None else usable_cores()

    def _ray(self) -> Any:
        try:
            import ray
        except ImportError:
            raise XauditError('the ray backend needs Ray, which is not installed: pip install "xaudit[ray]" '
                              "(or use --backend local)") from None
        return ray

    def run(self, fn: Callable[[Task, Any], Any], tasks: Sequence[Task], shared: Any, on_result: OnResult) -> None:
        ray = self._ray()
        started = not ray.is_initialized()
        if started:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "logging_level": logging.ERROR, "configure_logging": False}
            try:
                if self.address:
                    ray.init(address=self.address, **options)
                else:
                    # "local" always starts a fresh cluster: without it ray.init() joins whatever cluster the
                    # machine last started (/tmp/ray/ray_current_cluster), even a dead one
                    ray.init(address="local", num_cpus=self.num_cpus, **options)
            except ConnectionError as exc:
                raise XauditError(f"cannot join the Ray cluster at {self.address!r} ({_first_line(exc)}): check "
                                  "--address, or leave it out to start a local cluster") from None
        try:
            remote = ray.remote(num_cpus=1, max_retries=0)(_call)
            shared_ref = ray.put(shared)  # shipped once, not once per trial
            pending = {remote.remote(fn, task, shared_ref): i for i, task in enumerate(tasks)}
            try:
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    for ref in done:
                        on_result(pending.pop(ref), ray.get(ref))
            except BaseException:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
        finally:
            if started:
                ray.shutdown()


def _call(fn: Callable[[Task, Any], Any], task: Task, shared: Any) -> Any:
    return fn(task, shared)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def make_backend(name: str | Backend, *, workers: int | None = None, address: str | None = None) -> Backend:
    """A backend from its name (``local``, ``sequential``, ``ray``); a backend object is returned as is."""
    if not isinstance(name, str):
        return name
    if name == "local":
        return LocalBackend(workers)
    if name == "sequential":
        return SequentialBackend()
    if name == "ray":
        return RayBackend(address, workers)
    raise did_you_mean("backend", name, BACKENDS)
