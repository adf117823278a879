"""Helpers shared by the fault, contention and security tests (and child processes).

Functions here run in child processes started with the ``spawn`` method, so
they must be importable and take only picklable arguments.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import kvs

#: How far past its socket timeout a failing call may return ("does not hang").
#: Generous on purpose: the machine is shared, this only catches real hangs.
HANG_SLACK = 3.0


def new_store(config: dict[str, Any], key_prefix: str, **overrides: Any) -> kvs.KeyValueStore:
    """A configured store with a fresh name over the shared ``key_prefix``.

    Two stores made with the same prefix see the same keys and leases, like two
    processes of one service.
    """
    store = kvs.get_key_value_store(f"f-{uuid.uuid4().hex[:10]}")
    store.configure(**{**config, "key_prefix": key_prefix, **overrides})
    return store


def grant_fences(config: dict[str, Any], count: int, key: str = "k") -> list[int]:
    """The fences of ``count`` grants of ``key``, through a fresh store on ``config``.

    A fresh store each time, so the test can call it again after a server
    restart: the old store's connections died with the server.
    """
    store = new_store(config, "fences", lock_timeout=5)
    fences = []
    for _ in range(count):
        with store.get_lock(key) as lock:
            assert lock.fence is not None
            fences.append(lock.fence)
    return fences


@contextlib.contextmanager
def returns_within(seconds: float) -> Iterator[None]:
    """Assert that the block finishes (raising or not) within ``seconds``."""
    started = time.monotonic()
    try:
        yield
    finally:
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"call took {elapsed:.2f} s, bound {seconds} s (a hang?)"


def spawn_context() -> Any:
    """``spawn``: children start clean, with no inherited sockets or threads."""
    return multiprocessing.get_context("spawn")


# -- child process bodies -------------------------------------------------------

def hold_lease_forever(config: dict[str, Any], key_prefix: str, key: str, ready: Any) -> None:
    """Take the lease on ``key``, report (pid, token, fence) and sleep until killed."""
    store = new_store(config, key_prefix)
    lock = store.get_lock(key).acquire()
    ready.put((os.getpid(), lock.token, lock.fence))
    while True:
        time.sleep(60)


def count_with_update(config: dict[str, Any], key_prefix: str, times: int) -> int:
    """``update()`` the key ``counter`` ``times`` times; return how many landed."""
    store = new_store(config, key_prefix)
    for _ in range(times):
        store.update("counter", lambda value: value + 1, default=0)
    return times


def record_intervals(config: dict[str, Any], key_prefix: str, rounds: int, start: Any,
                     results: Any) -> None:
    """Wait at ``start`` (a barrier), then ``rounds`` times take the lease and log the time.

    Each entry is (enter_ns, exit_ns, fence, still_valid) on CLOCK_MONOTONIC,
    which on Linux is one clock for every process of the machine.  The body
    does a read-modify-write of ``counter`` under the lease, so a second
    holder inside the interval would also show up as a lost increment.
    """
    store = new_store(config, key_prefix)
    entries = []
    try:
        start.wait(120)
        for _ in range(rounds):
            with store.get_lock("counter") as lock:
                entered = time.monotonic_ns()
                try:
                    value = store.get("counter")
                except kvs.exception.NotFound:
                    value = 0
                time.sleep(0.002)
                store.set("counter", value + 1, lock=lock)
                left = time.monotonic_ns()
                entries.append((entered, left, lock.fence, not lock.expired))
        results.put((os.getpid(), entries, None))
    except BaseException as error:
        results.put((os.getpid(), entries, repr(error)))
        raise
