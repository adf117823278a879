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
