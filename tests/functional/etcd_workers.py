"""Child-process bodies of the etcd fault tests (importable by the spawn start method)."""

from __future__ import annotations

import time
from typing import Any

from kvs import exception
from tests.functional.fault_support import new_store


def increment_until(config: dict[str, Any], key_prefix: str, until: float, results: Any,
                    stop: Any = None) -> None:
    """Increment ``n`` until wall-clock ``until`` (or until ``stop``, an Event, is set),
    alternating ``update()`` and a locked write, and report what happened to each attempt.

    ``returned``: the call returned, so its +1 landed.  ``unknown``: it raised
    BackendUnavailable, so its +1 may or may not have landed.  ``refused``: a
    LockTimeout (no lease, or the lease was lost before the write): nothing
    landed.  ``fences``: the fence of every locked write that returned, in order.
    ``slowest``: the longest single attempt, in seconds.
    """
    store = new_store(config, key_prefix, lock_timeout=2, lock_wait_timeout=3)
    report: dict[str, Any] = {"returned": 0, "unknown": 0, "refused": 0, "fences": [],
                              "slowest": 0.0, "foreign": [], "returns_at": []}
    turn = 0
    while time.time() < until and not (stop is not None and stop.is_set()):
        began = time.monotonic()
        try:
            if turn % 2 == 0:
                store.update("n", lambda value: value + 1, default=0)
            else:
                with store.get_lock("n") as lock:
                    try:
                        value = store.get("n")
                    except exception.NotFound:
                        value = 0
                    store.set("n", value + 1, lock=lock)
                    fence = lock.fence
                report["fences"].append(fence)
            report["returned"] += 1
            report["returns_at"].append(time.time())
        except exception.BackendUnavailable:
            report["unknown"] += 1
        except exception.LockTimeout:
            report["refused"] += 1
        except Exception as exc:  # anything else is a bug the test reports
            report["foreign"].append(f"{type(exc).__name__}: {exc}")
        report["slowest"] = max(report["slowest"], time.monotonic() - began)
        turn += 1
    results.put(report)


def hold_then_write(config: dict[str, Any], key_prefix: str, told: Any, tell: Any) -> None:
    """Take the lease on ``k`` and say so on ``tell``; when ``told`` says "write now"
    (the test pauses or cuts off this process meanwhile), try a fenced write straight
    on the backend (no client-side clock check) and one through the store, and report
    both outcomes."""
    store = new_store(config, key_prefix, lock_timeout=1, lock_wait_timeout=5)
    lock = store.get_lock("k").acquire()
    tell.put(("holding", lock.fence))
    assert told.get(timeout=60) == "write now"
    backend = store._require_path().backend  # the backend itself, past the lock's clock
    assert backend is not None and lock.token is not None
    outcome = backend.fenced_set(lock.lease_key, b"stale", lock.token, None)
    try:
        store.set("k", "stale via store", lock=lock)
        via_store = "written"
    except exception.LockTimeout as exc:
        via_store = type(exc).__name__
    tell.put(("done", outcome.value, via_store))
