"""Lost replies and misuse around leases, with a backend that fails on purpose."""

from __future__ import annotations

from typing import Any

import pytest

import kvs
import kvs.testing
from kvs import exception
from kvs.backends.memory import MemoryBackend


class LossyBackend(MemoryBackend):
    """Applies the call, then loses the reply, for the next N calls of a kind."""

    name = "test.lossy"
    lose: dict[str, int] = {}
    # Replies get lost only across a network: update() takes the lease path
    # (acquire + read, fenced write + release) as it does on Redis.
    updates_in_one_step = False

    def _maybe_lose(self, call: str) -> None:
        if self.lose.get(call, 0) > 0:
            self.lose[call] -= 1
            raise exception.BackendUnavailable(f"reply to {call} lost", host="lossy")

    def acquire_lease(self, key: str, token: str, ttl: float | None) -> int | None:
        fence = super().acquire_lease(key, token, ttl)
        self._maybe_lose("acquire")
        return fence

    def acquire_lease_and_get(self, key: str, token: str, ttl: float | None) -> Any:
        result = super().acquire_lease_and_get(key, token, ttl)
        self._maybe_lose("acquire")
        return result

    def release_lease(self, key: str, token: str) -> bool:
        released = super().release_lease(key, token)
        self._maybe_lose("release")
        return released


@pytest.fixture
def lossy() -> Any:
    import dogpile.cache

    dogpile.cache.register_backend("test.lossy", __name__, "LossyBackend")
    LossyBackend.lose = {}
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store("lossy")
        store.configure("test.lossy", lock_timeout=0, lock_wait_timeout=0.2)
        yield store


@pytest.mark.parametrize("path", ["lock", "update"])
def test_one_lost_acquire_reply_is_retried_with_the_same_token(lossy: Any, path: str) -> None:
    LossyBackend.lose = {"acquire": 1}
    if path == "lock":
        with lossy.get_lock("k") as lock:
            assert lossy.lease_info("k").token == lock.token
            assert lock.fence == 1  # the retry confirmed the first grant
    else:
        assert lossy.update("k", lambda v: v + 1, default=0) == 1
    assert lossy.lease_info("k") is None


@pytest.mark.parametrize("path", ["lock", "update"])
def test_two_lost_acquire_replies_leave_no_ownerless_lease(lossy: Any, path: str) -> None:
    LossyBackend.lose = {"acquire": 2}
    with pytest.raises(exception.BackendUnavailable):
        if path == "lock":
            lossy.get_lock("k").acquire()
        else:
            lossy.update("k", lambda v: v + 1, default=0)
    # lock_timeout = 0 would make an ownerless lease block the key forever.
    assert lossy.lease_info("k") is None
    assert lossy.update("k", lambda v: v + 1, default=0) == 1


def test_failed_release_can_be_retried(lossy: Any) -> None:
    lock = lossy.get_lock("k").acquire()
    LossyBackend.lose = {"release": 1}
    with pytest.raises(exception.BackendUnavailable):
        lock.release()
    assert lock.active
    lock.release()
    assert not lock.active and lossy.lease_info("k") is None


def test_lock_of_another_store_is_refused_and_stays_valid() -> None:
    with kvs.testing.isolated_stores():
        first = kvs.get_key_value_store("first")
        first.configure("kvs.memory")
        second = kvs.get_key_value_store("second")
        second.configure("kvs.memory")
        with first.get_lock("k") as lock:
            with pytest.raises(ValueError):
                second.set("k", 1, lock=lock)
            first.set("k", 2, lock=lock)  # still valid in its own store
        assert first.get("k") == 2 and not second.exists("k")


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1])
def test_infinite_or_negative_timeouts_are_refused(bad: float) -> None:
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store("x")
        for argument in ("lock_timeout", "lock_wait_timeout", "default_ttl"):
            with pytest.raises(exception.ConfigurationError):
                store.configure("kvs.memory", **{argument: bad})
        store.configure("kvs.memory")
        with pytest.raises(exception.ConfigurationError):
            store.set("k", 1, ttl=bad)


def test_zero_lock_timeout_still_waits_for_a_lease() -> None:
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store("x")
        store.configure("kvs.memory", lock_timeout=0)
        assert store.lock_timeout == 0 and store.lock_wait_timeout == 5
