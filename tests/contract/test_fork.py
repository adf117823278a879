"""Contract: a store configured and used in a parent keeps working across fork().

As gunicorn and multiprocessing do: the parent configures a store, uses it
(so connections are open), then forks while its own threads keep calling
the store, SQLite transactions and all.  Children and parent then use the
store at once.  Every value read must be the one that process wrote (no
crossed replies), no call may raise anything but what the test expects, and
no child may hang.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from typing import Any

import kvs

CHILDREN = 8
FORK_SPACING = 0.03
CHILD_DEADLINE = 60.0


def _work(store: kvs.KeyValueStore, tag: str, rounds: int) -> None:
    for i in range(rounds):
        value = {"tag": tag, "i": i}
        store.set(f"{tag}:{i % 5}", value)
        got = store.get(f"{tag}:{i % 5}")
        assert got == value, f"{tag} read {got!r}, wrote {value!r}"
        store.update(f"{tag}:n", lambda n: n + 1, default=0)
    assert store.get(f"{tag}:n") == rounds


def _child(store: kvs.KeyValueStore, tag: str) -> int:
    try:
        _work(store, tag, 20)
        store.update("shared", lambda n: n + 1, default=0)
        return 0
    except BaseException:
        traceback.print_exc()
        return 1


def test_store_works_in_children_forked_while_the_parent_is_busy(
        make_store: Any, backend_name: str) -> None:
    store = make_store(lock_timeout=10, lock_wait_timeout=30)
    _work(store, "before", 3)  # connections are open before the first fork
    stop = threading.Event()
    errors: list[BaseException] = []

    def parent_thread(tag: str) -> None:
        rounds = 0
        try:
            while not stop.is_set():
                _work(store, f"{tag}-{rounds}", 2)
                rounds += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=parent_thread, args=(f"parent{n}",)) for n in range(2)]
    for thread in threads:
        thread.start()
    children = []
    try:
        for n in range(CHILDREN):
            time.sleep(FORK_SPACING)
            pid = os.fork()
            if pid == 0:  # the child: never return into pytest
                code = 1
                try:
                    code = _child(store, f"child{n}")
                finally:
                    os._exit(code)
            children.append(pid)
            # The parent's own thread uses its (inherited-by-the-child)
            # connections at the same time as the child.
            _work(store, f"parent-main-{n}", 3)
    finally:
        statuses = _wait_all(children)
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    assert statuses == [0] * len(children), f"child exit statuses: {statuses}"
    if backend_name != "memory":  # memory is per process: children have their own
        assert store.get("shared") == CHILDREN


def _wait_all(pids: list[int]) -> list[int]:
    """Exit status of each child; a child still running at the deadline is killed (-9)."""
    deadline = time.monotonic() + CHILD_DEADLINE
    statuses: dict[int, int] = {}
    while len(statuses) < len(pids) and time.monotonic() < deadline:
        for pid in pids:
            if pid not in statuses:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    statuses[pid] = os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    for pid in pids:
        if pid not in statuses:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            statuses[pid] = -9
    return [statuses[pid] for pid in pids]
