"""Run N workers at once (forked processes, or threads for per-process backends).

Every worker builds its own subject first (``prepare``), then all start
together on a barrier and run ``body(state, deadline)`` until the deadline.
Workers are forked so they inherit the run's setup without pickling it; each
one opens its own connections after the fork.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import threading
import time
from collections.abc import Callable
from typing import Any

#: Seconds a worker may take to connect, and beyond its deadline to report.
GRACE = 30.0


class WorkerError(RuntimeError):
    """A worker failed; the message says which and why."""


def _child(index: int, prepare: Callable[[], Any], body: Callable[[Any, float], Any],
           duration: float, barrier: Any, results: Any) -> None:
    try:
        state = prepare()
    except Exception as exc:
        barrier.abort()
        results.put((index, False, f"{type(exc).__name__}: {exc}"))
        return
    try:
        barrier.wait(timeout=GRACE)
        payload = body(state, time.monotonic() + duration)
    except Exception as exc:
        results.put((index, False, f"{type(exc).__name__}: {exc}"))
        return
    results.put((index, True, payload))


def run_workers(count: int, threads: bool, prepare: Callable[[], Any],
                body: Callable[[Any, float], Any], duration: float) -> list[Any]:
    """Run ``count`` workers for ``duration`` seconds; their payloads in worker order.

    Raises :class:`WorkerError` if any worker fails.
    """
    if threads:
        barrier: Any = threading.Barrier(count + 1)
        results: Any = queue_module.Queue()
        workers: list[Any] = [
            threading.Thread(target=_child, args=(i, prepare, body, duration, barrier, results),
                             daemon=True) for i in range(count)]
    else:
        context = multiprocessing.get_context("fork")
        barrier = context.Barrier(count + 1)
        results = context.Queue()
        workers = [context.Process(target=_child,
                                   args=(i, prepare, body, duration, barrier, results),
                                   daemon=True) for i in range(count)]
    for worker in workers:
        worker.start()
    try:
        try:
            barrier.wait(timeout=GRACE)
        except threading.BrokenBarrierError:
            pass  # a worker failed to prepare: its error is in the queue
        payloads: dict[int, Any] = {}
        errors: list[str] = []
        for _ in range(count):
            try:
                index, ok, payload = results.get(timeout=duration + GRACE)
            except queue_module.Empty:
                errors.append("a worker did not report in time")
                break
            if ok:
                payloads[index] = payload
            else:
                errors.append(f"worker {index}: {payload}")
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if not threads and worker.is_alive():
                worker.terminate()
                worker.join(timeout=5)
    if errors:
        raise WorkerError("; ".join(errors[:3]))
    return [payloads[index] for index in sorted(payloads)]
