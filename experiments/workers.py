"""Worker processes for long batch jobs (feature packing): a pool that dies with its parent.

:func:`process_pool` gives a ``concurrent.futures`` executor whose workers run one thread
each and exit when the process that started them ends (pool workers hold both ends of their
task queue, so a parent killed with SIGKILL would otherwise leave them waiting forever);
``workers=1`` runs the same code in this process. :func:`bounded` keeps a limited number of
tasks in flight, so results that wait in memory stay few.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import select
import sys
import threading
import time
from typing import Callable, Iterator, Sequence


def usable_cores() -> int:
    """The CPU cores this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class InProcessExecutor(concurrent.futures.Executor):
    """An executor that runs each task at submission, in this process (debuggers, small jobs)."""

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to the caller by future.result(), as a pool would
            future.set_exception(exc)
        return future


def process_pool(workers: int, preload: Sequence[str] = ()) -> concurrent.futures.Executor:
    """An executor of ``workers`` single-threaded processes that exit with this one.

    On Linux the workers fork from a forkserver that imported ``preload`` once (fast start,
    and no fork of a process that holds torch or BLAS threads).
    """
    if workers == 1:
        return InProcessExecutor()
    if sys.platform.startswith("linux"):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(preload))
    else:
        context = multiprocessing.get_context("spawn")
    return concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                  initializer=_init_worker, initargs=(os.getpid(),))


def _init_worker(parent_pid: int) -> None:
    """One thread per worker (the pool already uses every core); exit with the parent."""
    import torch

    torch.set_num_threads(1)
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    threading.Thread(target=_exit_when_gone, args=(parent_pid,), daemon=True).start()


def _exit_when_gone(pid: int) -> None:
    """End this worker once process ``pid`` has ended (a pidfd where the kernel has them)."""
    if hasattr(os, "pidfd_open"):
        with contextlib.suppress(OSError):
            descriptor = os.pidfd_open(pid)
            select.select([descriptor], [], [])  # readable once the process has exited
            os._exit(1)
    while True:  # no pidfd (not Linux, or an old kernel): poll
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # exists (another user's process would mean a reused pid: rare)
            pass


def bounded(pool: concurrent.futures.Executor, submit: Callable, items: Sequence, window: int) -> Iterator:
    """Results of ``submit(pool, item)`` as they complete, with at most ``window`` in flight."""
    queue = list(items)
    running: set = set()
    try:
        while queue or running:
            while queue and len(running) < window:
                running.add(submit(pool, queue.pop(0)))
            finished, running = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                yield future.result()
    finally:
        for future in running:
            future.cancel()


__all__ = ["usable_cores", "InProcessExecutor", "process_pool", "bounded"]
