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


def _plain_region(config: dict[str, Any]) -> Any:
    from dogpile.cache import make_region

    arguments = dict(config)
    backend = arguments.pop("backing_store")
    return make_region().configure(backend, arguments=arguments)


def get_or_create_at(config: dict[str, Any], key: str, runs_file: str, start_at: float) -> Any:
    """At ``start_at`` (wall clock), get_or_create ``key`` on a plain region; a slow creator
    appends a line to runs_file per run."""
    import os
    import time

    region = _plain_region(config)

    def creator() -> tuple[str, int]:
        with open(runs_file, "a") as runs:
            runs.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return ("made", os.getpid())

    time.sleep(max(0.0, start_at - time.time()))
    return region.get_or_create(key, creator)


def create_forever(config: dict[str, Any], key: str, started_file: str) -> None:
    """get_or_create ``key`` with a creator that never returns (the test kills us)."""
    import time

    region = _plain_region(config)

    def creator() -> None:
        with open(started_file, "w") as started:
            started.write("creating\n")
        time.sleep(3600)

    region.get_or_create(key, creator)
