"""Functions run in child processes by the contract suite (importable by spawn)."""

from __future__ import annotations

from typing import Any

import kvs


def _store(config: dict[str, Any], name: str) -> kvs.KeyValueStore:
    store = kvs.get_key_value_store(name)
    # A pool worker may run two tasks: the store is then already configured.
    if not store.is_configured:
        store.configure(**config)
    return store


def increment_with_update(config: dict[str, Any], name: str, times: int) -> None:
    store = _store(config, name)
    for _ in range(times):
        store.update("counter", lambda value: value + 1, default=0)


def increment_with_lock(config: dict[str, Any], name: str, times: int) -> list[int]:
    store = _store(config, name)
    fences = []
    for _ in range(times):
        with store.get_lock("counter") as lock:
            try:
                value = store.get("counter")
            except kvs.exception.NotFound:
                value = 0
            store.set("counter", value + 1, lock=lock)
            assert lock.fence is not None
            fences.append(lock.fence)
    return fences


def memoized_call(config: dict[str, Any], name: str, runs_file: str, argument: int) -> Any:
    """Call a slow memoized function once; each run of its body appends a line to runs_file."""
    import os
    import time

    store = _store(config, name)

    @store.memoize(namespace="contract")
    def slow_square(x: int) -> tuple[int, int]:
        with open(runs_file, "a") as runs:
            runs.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return (x, x * x)

    return slow_square(argument)
