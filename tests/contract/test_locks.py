"""Contract: leases, fencing and update(), on every backend."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest

import kvs
from kvs import exception


def test_get_lock_is_not_acquired(store: kvs.KeyValueStore) -> None:
    lock = store.get_lock("k")
    assert isinstance(lock, kvs.KeyValueStoreLock)
    assert lock.key == "k"
    assert not lock.active and not lock.expired
    assert lock.token is None and lock.fence is None
    assert lock.lock_timeout == 5


def test_acquire_release_and_context_manager(store: kvs.KeyValueStore) -> None:
    lock = store.get_lock("k")
    assert lock.acquire() is lock
    assert lock.active and lock.token and isinstance(lock.fence, int)
    info = store.lease_info("k")
    assert info is not None and info.token == lock.token and info.fence == lock.fence
    lock.release()
    assert not lock.active
    assert store.lease_info("k") is None
    with store.get_lock("k") as again:
        assert again.active
    assert not again.active


def test_tokens_unique_and_fences_strictly_increase(store: kvs.KeyValueStore) -> None:
    tokens, fences = set(), []
    for _ in range(5):
        with store.get_lock("k") as lock:
            tokens.add(lock.token)
            fences.append(lock.fence)
    lock = store.get_lock("k")
    for _ in range(3):  # the same object re-acquired
        with lock:
            tokens.add(lock.token)
            fences.append(lock.fence)
    assert len(tokens) == 8
    assert fences == sorted(fences) and len(set(fences)) == 8


def test_locked_set_and_delete(store: kvs.KeyValueStore) -> None:
    with store.get_lock("k") as lock:
        store.set("k", "v", lock=lock)
        assert store.get("k") == "v"
        store.delete("k", lock=lock)
        with pytest.raises(exception.NotFound):
            store.delete("k", lock=lock)
    assert not store.exists("k")


def test_lock_for_another_key_raises_value_error(store: kvs.KeyValueStore) -> None:
    with store.get_lock("a") as lock:
        with pytest.raises(ValueError):
            store.set("b", 1, lock=lock)
        with pytest.raises(ValueError):
            store.delete("b", lock=lock)
    assert not store.exists("b")


def test_inactive_lock_raises_value_error(store: kvs.KeyValueStore) -> None:
    lock = store.get_lock("k")
    with pytest.raises(ValueError):
        store.set("k", 1, lock=lock)
    with lock:
        pass
    with pytest.raises(ValueError):
        store.set("k", 1, lock=lock)
    assert not store.exists("k")


def test_expired_lock_raises_lock_timeout_and_writes_nothing(make_store: Any) -> None:
    store = make_store(lock_timeout=1)
    store.set("k", "before")
    with store.get_lock("k") as lock:
        time.sleep(1.0)  # the holder's view (T - window) has run out
        assert lock.expired
        with pytest.raises(exception.LockTimeout):
            store.set("k", "after", lock=lock)
        with pytest.raises(exception.LockTimeout):
            store.delete("k", lock=lock)
    assert store.get("k") == "before"


def test_acquire_times_out_while_held(make_store: Any) -> None:
    store = make_store(lock_timeout=5, lock_wait_timeout=0.3)
    with store.get_lock("k"):
        contender = store.get_lock("k")
        with pytest.raises(exception.LockAcquireTimeout) as info:
            contender.acquire()
        assert isinstance(info.value, exception.LockTimeout)
        assert "'k'" in str(info.value)
        assert not contender.active


def test_waiter_gets_lease_after_release(make_store: Any) -> None:
    store = make_store(lock_timeout=5, lock_wait_timeout=5)
    holder = store.get_lock("k").acquire()
    got: list[int | None] = []

    def wait_for_it() -> None:
        with store.get_lock("k") as lock:
            got.append(lock.fence)

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    time.sleep(0.2)
    assert got == []
    holder.release()
    waiter.join(timeout=5)
    assert got and got[0] is not None and holder.fence is not None and got[0] > holder.fence


def test_lease_taken_over_after_expiry(make_store: Any, caplog: Any) -> None:
    store = make_store(lock_timeout=1, lock_wait_timeout=5)
    old = store.get_lock("k").acquire()
    new = store.get_lock("k").acquire()  # waits until the backend lease expires
    assert new.fence > old.fence
    store.set("k", "new holder", lock=new)
    with pytest.raises(exception.LockTimeout):
        store.set("k", "old holder", lock=old)
    with caplog.at_level(logging.WARNING, logger="kvs.lock"):
        old.release()  # must not release the new holder's lease
    assert "after its timeout" in caplog.text
    info = store.lease_info("k")
    assert info is not None and info.token == new.token
    store.set("k", "new holder again", lock=new)
    new.release()
    assert store.get("k") == "new holder again"


def test_backend_refuses_write_under_broken_lease(store: kvs.KeyValueStore) -> None:
    """The client still believes it holds the lease; the backend knows better."""
    store.set("k", "before")
    old = store.get_lock("k").acquire()
    assert store.break_lock("k") is True
    new = store.get_lock("k").acquire()
    assert not old.expired
    with pytest.raises(exception.LeaseLost):
        store.set("k", "old holder", lock=old)
    assert store.get("k") == "before"
    with pytest.raises(exception.LeaseLost):
        store.delete("k", lock=old)
    assert store.get("k") == "before"
    store.set("k", "new holder", lock=new)
    new.release()
    assert store.get("k") == "new holder"
    if store.fenced:
        backend: Any = store.region.actual_backend
        lease_key = new.lease_key
        assert backend.fenced_set(lease_key, b"x", old.token, None).name == "LEASE_LOST"


def test_extend(make_store: Any) -> None:
    store = make_store(lock_timeout=1, lock_wait_timeout=0.2)
    with store.get_lock("k") as lock:
        lock.extend(3)
        time.sleep(1.2)  # past the original lease, inside the extended one
        assert not lock.expired
        store.set("k", "still mine", lock=lock)
        with pytest.raises(exception.LockAcquireTimeout):
            store.get_lock("k").acquire()
    assert store.get("k") == "still mine"
    with pytest.raises(ValueError):
        store.get_lock("k").extend(-1)


def test_extend_after_takeover_raises(store: kvs.KeyValueStore) -> None:
    lock = store.get_lock("k").acquire()
    store.break_lock("k")
    other = store.get_lock("k").acquire()
    with pytest.raises(exception.LockTimeout):
        lock.extend(5)
    assert store.lease_info("k").token == other.token  # type: ignore[union-attr]
    other.release()


def test_not_reentrant(store: kvs.KeyValueStore) -> None:
    with store.get_lock("k") as lock, pytest.raises(RuntimeError):
        lock.acquire()


def test_zero_lock_timeout_never_expires(make_store: Any) -> None:
    store = make_store(lock_timeout=0, lock_wait_timeout=0.2)
    with store.get_lock("k") as lock:
        assert not lock.expired and lock.remaining is None
        info = store.lease_info("k")
        assert info is not None and info.remaining is None
        with pytest.raises(exception.LockAcquireTimeout):
            store.get_lock("k").acquire()
        store.set("k", 1, lock=lock)


def test_locking_disabled_makes_leases_no_ops(make_store: Any) -> None:
    store = make_store(locking=False, lock_wait_timeout=0.1)
    first = store.get_lock("k").acquire()
    second = store.get_lock("k").acquire()  # no waiting: leases are off
    store.set("k", 1, lock=first)
    store.set("k", 2, lock=second)
    with pytest.raises(ValueError):
        store.set("other", 1, lock=first)
    first.release()
    second.release()
    assert store.get("k") == 2
    assert store.update("n", lambda v: v + 1, default=0) == 1


def test_update(store: kvs.KeyValueStore) -> None:
    assert store.update("n", lambda v: v + 1, default=0) == 1
    assert store.update("n", lambda v: v + 1) == 2
    assert store.get("n") == 2
    with pytest.raises(exception.NotFound):
        store.update("missing", lambda v: v)
    assert store.lease_info("missing") is None
    assert store.lease_info("n") is None


def test_update_with_ttl(store: kvs.KeyValueStore) -> None:
    store.update("n", lambda v: v + 1, default=0, ttl=1)
    deadline = time.monotonic() + 6
    while store.exists("n") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not store.exists("n")


def test_update_failing_fn_writes_nothing_and_releases(store: kvs.KeyValueStore) -> None:
    store.set("n", 1)

    def boom(_value: int) -> int:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.update("n", boom)
    assert store.get("n") == 1
    assert store.lease_info("n") is None


def test_update_lease_lost_meanwhile_writes_nothing(store: kvs.KeyValueStore) -> None:
    store.set("n", 1)
    intruder: list[kvs.KeyValueStoreLock] = []

    def steal(value: int) -> int:
        store.break_lock("n")
        intruder.append(store.get_lock("n").acquire())
        store.set("n", 100, lock=intruder[0])
        return value + 1

    with pytest.raises(exception.LockTimeout):
        store.update("n", steal)
    assert store.get("n") == 100
    assert store.lease_info("n").token == intruder[0].token  # type: ignore[union-attr]
    intruder[0].release()


def test_update_from_threads_loses_nothing(store: kvs.KeyValueStore) -> None:
    def work() -> None:
        for _ in range(25):
            store.update("counter", lambda v: v + 1, default=0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get("counter") == 200
    assert store.lease_info("counter") is None


def test_backend_lease_outlives_holders_view(make_store: Any) -> None:
    store = make_store(lock_timeout=4)
    with store.get_lock("k") as lock:
        info = store.lease_info("k")
        assert info is not None and info.remaining is not None and lock.remaining is not None
        # T = 4 s, window w = 1 s: the holder trusts 3 s, the backend keeps 5 s.
        assert lock.remaining <= 3.0
        assert info.remaining > lock.remaining + 1.5
