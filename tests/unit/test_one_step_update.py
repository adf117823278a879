"""update() in one backend step on kvs.memory and kvs.sqlite (no lease round trips)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvs
import kvs.testing
from kvs import exception


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[kvs.KeyValueStore]:
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store("one-step")
        arguments: dict[str, Any] = {"lock_timeout": 2, "lock_wait_timeout": 0.3}
        if request.param == "sqlite":
            arguments["filename"] = str(tmp_path / "one-step.sqlite3")
        store.configure(f"kvs.{request.param}", **arguments)
        yield store


def test_takes_the_one_step_path(store: kvs.KeyValueStore) -> None:
    backend: Any = store.region.backend
    calls: list[str] = []
    original = backend.update_value

    def spy(*args: Any) -> Any:
        calls.append("update_value")
        return original(*args)

    backend.update_value = spy
    assert store.update("n", lambda v: v + 1, default=0) == 1
    assert calls == ["update_value"]


def test_every_grant_after_updates_gets_a_larger_fence(store: kvs.KeyValueStore) -> None:
    with store.get_lock("n") as lock:
        first = lock.fence
    for _ in range(3):
        store.update("n", lambda v: v + 1, default=0)
    with store.get_lock("n") as lock:
        # memory takes a lease per update (one fence each); sqlite's transaction grants none.
        assert lock.fence == first + (4 if store.backend_name == "kvs.memory" else 1)  # type: ignore[operator]
    assert store.get("n") == 3


def test_sqlite_update_leaves_the_lease_table_alone(tmp_path: Path) -> None:
    import sqlite3

    filename = str(tmp_path / "t.sqlite3")
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store("one-step-lease-table")
        store.configure("kvs.sqlite", filename=filename)
        assert store.update("n", lambda v: v + 1, default=0) == 1
        db = sqlite3.connect(filename)
        try:
            assert db.execute("SELECT count(*) FROM kvs_lease").fetchone() == (0,)
        finally:
            db.close()
        with store.get_lock("n") as lock:
            assert lock.fence == 1


def test_waits_for_a_lease_held_elsewhere_and_writes_nothing(store: kvs.KeyValueStore) -> None:
    store.set("n", 1)
    with store.get_lock("n"):
        began = time.monotonic()
        with pytest.raises(exception.LockAcquireTimeout):
            store.update("n", lambda v: v + 1)
        assert time.monotonic() - began >= 0.3
    assert store.get("n") == 1


def test_fn_raising_writes_nothing_and_leaves_the_key_free(store: kvs.KeyValueStore) -> None:
    store.set("n", 1)

    def boom(value: int) -> int:
        raise ZeroDivisionError("fn's own error")

    with pytest.raises(ZeroDivisionError, match="fn's own error"):
        store.update("n", boom)
    assert store.get("n") == 1
    assert store.lease_info("n") is None
    assert store.update("n", lambda v: v + 1) == 2


def test_fn_past_lock_timeout_writes_nothing(store: kvs.KeyValueStore,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store.set("n", 1)
    real = time.monotonic
    skew = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: real() + skew[0])

    def slow(value: int) -> int:
        skew[0] += 5.0  # lock_timeout is 2 s
        return value + 1

    with pytest.raises(exception.LockTimeout):
        store.update("n", slow)
    assert store.get("n") == 1


def test_store_calls_inside_fn_work(store: kvs.KeyValueStore) -> None:
    def bump_other_too(value: int) -> int:
        store.set("other", store.get_multi(["n"])[0] * 10)
        store.update("other-counter", lambda v: v + 1, default=0)
        return value + 1

    store.set("n", 4)
    assert store.update("n", bump_other_too) == 5
    assert store.get_multi(["n", "other", "other-counter"]) == [5, 40, 1]


def test_sqlite_writes_inside_fn_roll_back_with_it(tmp_path: Path) -> None:
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store("nested")
        store.configure("kvs.sqlite", filename=str(tmp_path / "nested.sqlite3"))

        def write_then_fail(value: int) -> int:
            store.set("side", "effect")
            raise RuntimeError("after the side write")

        with pytest.raises(RuntimeError):
            store.update("n", write_then_fail, default=0)
        assert not store.exists("side")
        assert not store.exists("n")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_memory_child_forked_during_an_update_is_not_blocked() -> None:
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store("forked")
        store.configure("kvs.memory", lock_timeout=0, lock_wait_timeout=0.5)

        def fork_inside(value: int) -> int:
            pid = os.fork()
            if pid == 0:  # the child: the parent's in-flight update must not hold "n"
                try:
                    code = 0 if store.update("n", lambda v: v + 100) == 101 else 1
                except BaseException:
                    code = 2
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            return value + 1

        store.set("n", 1)
        assert store.update("n", fork_inside) == 2
