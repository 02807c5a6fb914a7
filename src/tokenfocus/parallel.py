"""Independent work units (one fold's training, one fold's scoring) run side by side on a CPU.

A model of the demo's size keeps one core busy, not two: a training step of a tiny base takes
about as long on two threads as on one, so two folds in two single-thread processes finish in
about half the time of one after the other. ``jobs`` sets how many units run at once ('auto':
one per available core, at most one per unit), each process with ``cores // jobs`` threads.
With a GPU, or inside a multi-process ``accelerate launch``, units run one after another in
this process: the device (or the launcher) is what is shared out there. Units that are
independent of each other (scoring) can instead be ``distribute``d over the launcher's
processes: process r of w runs units r, r + w, ... (one GPU each).

A unit is a module-level function and its arguments, which must pickle; each unit writes its
own outputs atomically, so a crash or kill loses at most the units in flight, and a re-run skips
what finished.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence

from tqdm import tqdm

from .config import check_jobs
from .log import setup_logging

log = logging.getLogger("tokenfocus")


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def launcher_rank() -> tuple[int, int]:
    """(rank, world size) of this process under ``accelerate launch`` / torchrun; (0, 1) alone."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def process_state():
    """accelerate's view of this process among the launcher's (rank, count, barriers). Without a
    GPU it must be told so: otherwise several CPU processes each take themselves for the only one."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _shared_device() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def resolve_jobs(jobs, n_units: int) -> int:
    """How many units to run at once: 1 with a GPU or under a multi-process launcher."""
    check_jobs(jobs)
    if n_units <= 1 or _shared_device():
        return 1
    wanted = available_cores() if jobs == "auto" else jobs
    return max(1, min(wanted, n_units))


_IN_WORKER = False


def in_worker() -> bool:
    """True inside a worker process of ``run_units``, whose progress the parent's bar shows."""
    return _IN_WORKER


def _exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    # A parent killed outright (SIGKILL, SIGTERM) cannot stop its pool: the workers would go on
    # with their units, orphaned. They check once a second and leave with it.
    while True:
        time.sleep(every_s)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(threads: int, level: int, parent: int) -> None:
    global _IN_WORKER
    _IN_WORKER = True
    import torch

    torch.set_num_threads(threads)
    setup_logging(level=level)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


@contextlib.contextmanager
def _environ(**values: str):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_units(calls: Sequence[tuple[Callable, tuple]], jobs, desc: str, names: Sequence[str] | None = None,
              distribute: bool = False) -> list:
    """``[fn(*args) for fn, args in calls]``, up to ``jobs`` calls at once in worker processes.

    Results come back in the order of ``calls``; put the longest calls first. The first call
    that raises, or a Ctrl-C, ends the pool at once (the workers are terminated; the units they
    were running resume from their last checkpoint next time) and the exception is re-raised.
    ``distribute`` under a multi-process launcher: this process runs only its share of the
    calls (every process must pass the same list); the others' results are None here.
    """
    rank, world = launcher_rank()
    if distribute and world > 1:
        mine = list(range(rank, len(calls), world))
        log.info("%s: process %d of %d runs %d of %d units", desc, rank, world, len(mine), len(calls))
        results: list = [None] * len(calls)
        for i in mine:
            fn, args = calls[i]
            results[i] = fn(*args)
        return results
    n = resolve_jobs(jobs, len(calls))
    if n == 1:
        return [fn(*args) for fn, args in calls]
    threads = max(1, available_cores() // n)
    names = list(names) if names is not None else [str(i) for i in range(len(calls))]
    log.info("%s: %d units, %d at a time (%d thread%s each)", desc, len(calls), n, threads, "s" * (threads > 1))
    ctx = multiprocessing.get_context("spawn")
    # Inner progress bars (Trainer, scoring) of side-by-side units would interleave on one
    # terminal; the parent shows one bar over the units instead. tqdm reads TQDM_* when it is
    # imported, which in a spawned worker happens before any initializer runs: so the workers
    # inherit the setting from this process's environment as they start.
    with _environ(TQDM_DISABLE="1"):
        pool = ctx.Pool(n, initializer=_init_worker,
                        initargs=(threads, logging.getLogger().getEffectiveLevel(), os.getpid()))
    finished: queue.Queue = queue.Queue()
    results: list = [None] * len(calls)
    try:
        for i, (fn, args) in enumerate(calls):
            pool.apply_async(fn, args, callback=lambda r, i=i: finished.put((i, r, None)),
                             error_callback=lambda e, i=i: finished.put((i, None, e)))
        with tqdm(total=len(calls), desc=desc, unit="unit") as bar:
            for _ in range(len(calls)):
                i, result, error = finished.get()
                if error is not None:
                    log.error("%s: %s failed", desc, names[i])
                    raise error
                results[i] = result
                bar.update(1)
                bar.set_postfix_str(f"done {names[i]}")
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    pool.close()
    pool.join()
    return results
