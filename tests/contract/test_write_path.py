"""Contract: one explicit write path through every kind of proxy, on every backend.

The scenario of the bug report: an old holder takes ``k``, an operator breaks
the lock, a new holder takes it and writes, then the old holder writes
``STALE`` under its lost lease.  Whatever sits in the proxy list, the stale
write must never land, and the store must never report success for it.
"""

from __future__ import annotations

import concurrent.futures
import threading
import zlib
from typing import Any

import pytest
from dogpile.cache.proxy import ProxyBackend

import kvs
from kvs import exception
from kvs.backends.base import Fenced
from kvs.lock import LockState
from kvs.proxy import LeaseProxy

_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="hop")


# -- plain dogpile proxies: they cannot carry a locked write --------------------

class PlainThreadHop(ProxyBackend):
    """A common timeout wrapper: runs the write on another thread."""

    def set_serialized(self, key: Any, value: Any) -> None:
        _POOL.submit(self.proxied.set_serialized, key, value).result(timeout=10)


class PlainBatching(ProxyBackend):
    """Turns every single write into a one-item batch."""

    def set_serialized(self, key: Any, value: Any) -> None:
        self.proxied.set_serialized_multi({key: value})


# -- lease-aware proxies --------------------------------------------------------

class LeaseThreadHop(LeaseProxy):
    """Every write on another thread: the token travels as an argument."""

    def plain_set(self, key: str, value: bytes, ttl: float | None) -> None:
        _POOL.submit(super().plain_set, key, value, ttl).result(timeout=10)

    def fenced_set(self, key: str, value: bytes, token: str, ttl: float | None) -> Fenced:
        return _POOL.submit(super().fenced_set, key, value, token, ttl).result(timeout=10)

    def fenced_delete(self, key: str, token: str) -> Fenced:
        return _POOL.submit(super().fenced_delete, key, token).result(timeout=10)


class LeaseBatching(LeaseProxy):
    """Plain writes become batches; fenced writes still go to the fenced call."""

    batches = 0

    def plain_set(self, key: str, value: bytes, ttl: float | None) -> None:
        type(self).batches += 1
        self.proxied.plain_set_multi({key: value}, ttl)


class LeaseSwallowing(LeaseProxy):
    """A broken proxy: drops locked writes and returns nothing."""

    def fenced_set(self, key: str, value: bytes, token: str, ttl: float | None) -> Any:
        return None


class Compressing(LeaseProxy):
    """A value transform: only the two hooks are overridden."""

    def encode_value(self, key: str, value: bytes, ttl: float | None) -> bytes:
        return b"Z" + zlib.compress(value)

    def decode_value(self, key: str, stored: bytes) -> bytes:
        assert stored[:1] == b"Z", "every stored value went through encode_value"
        return zlib.decompress(stored[1:])


# proxies, what the stale write raises, and whether locked writes work at all
CASES: dict[str, tuple[list[Any], type[Exception], bool]] = {
    "no proxy": ([], exception.LeaseLost, True),
    "plain thread hop": ([PlainThreadHop], exception.UnsupportedProxy, False),
    "plain batching": ([PlainBatching], exception.UnsupportedProxy, False),
    "lease thread hop": ([LeaseThreadHop], exception.LeaseLost, True),
    "lease batching": ([LeaseBatching], exception.LeaseLost, True),
    "lease swallowing": ([LeaseSwallowing], exception.UnconfirmedWrite, False),
    "compressing": ([Compressing], exception.LeaseLost, True),
    "two deep": ([Compressing, LeaseThreadHop], exception.LeaseLost, True),
    "lease over plain": ([Compressing, PlainThreadHop], exception.UnsupportedProxy, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_stale_write_never_lands(make_store: Any, case: str) -> None:
    proxies, stale_error, locked_writes_work = CASES[case]
    store = make_store(proxy_list=list(proxies), lock_timeout=5)
    store.set("k", "before")
    old = store.get_lock("k").acquire()
    assert store.break_lock("k")
    with store.get_lock("k") as new:
        if locked_writes_work:
            store.set("k", "NEW", lock=new)
        else:
            with pytest.raises((exception.UnsupportedProxy, exception.UnconfirmedWrite)):
                store.set("k", "NEW", lock=new)
            store.set("k", "NEW")
        with pytest.raises(stale_error) as info:
            store.set("k", "STALE", lock=old)
        with pytest.raises((stale_error, exception.LeaseLost)):
            store.delete("k", lock=old)  # the swallowing proxy passes deletes on
    assert store.get("k") == "NEW"
    if stale_error is not exception.LeaseLost:
        # The error names the layer that cannot carry (or confirm) the write.
        culprit = next(p for p in proxies if p in (PlainThreadHop, PlainBatching, LeaseSwallowing))
        assert info.value.context["layer"].endswith(culprit.__name__)
    old.release()


@pytest.mark.parametrize("case", [name for name, (_, _, works) in CASES.items() if works])
def test_locked_writes_and_update_pass_through_lease_proxies(make_store: Any, case: str) -> None:
    store = make_store(proxy_list=list(CASES[case][0]))
    with store.get_lock("k") as lock:
        store.set("k", {"v": 1}, lock=lock)
        assert store.get("k") == {"v": 1}
        store.delete("k", lock=lock)
        with pytest.raises(exception.NotFound):
            store.delete("k", lock=lock)
    assert not store.exists("k")
    assert store.update("n", lambda n: n + 1, default=0) == 1
    assert store.update("n", lambda n: n + 1) == 2
    store.set("t", "x", ttl=30)
    store.set_multi({"a": 1, "b": 2}, ttl=30)
    assert store.get_multi(["a", "b", "t"]) == [1, 2, "x"]
    store.delete("a")
    with pytest.raises(exception.NotFound):
        store.delete("a")


def test_value_transform_applies_to_locked_writes(make_store: Any) -> None:
    store = make_store(proxy_list=[Compressing])
    raw = store.region.actual_backend
    with store.get_lock("k") as lock:
        store.set("k", "x" * 1000, lock=lock)
    stored = raw.get_serialized(store.backend_key("k"))
    assert stored[:1] == b"Z" and len(stored) < 200
    store.update("k", lambda v: v + "y")
    assert raw.get_serialized(store.backend_key("k"))[:1] == b"Z"
    assert store.get("k") == "x" * 1000 + "y"


def test_batching_proxy_sees_every_plain_write(make_store: Any) -> None:
    LeaseBatching.batches = 0
    store = make_store(proxy_list=[LeaseBatching])
    store.set("a", 1)
    store.region.set("b", 2)  # a plain dogpile region write goes through it too
    assert LeaseBatching.batches == 2
    assert store.get("a") == 1


def test_plain_proxy_refuses_ttl_and_update_writing_nothing(make_store: Any) -> None:
    store = make_store(proxy_list=[PlainThreadHop])
    store.set("k", 1)  # plain writes are fine
    with pytest.raises(exception.UnsupportedProxy, match="PlainThreadHop"):
        store.set("k", 2, ttl=30)
    with pytest.raises(exception.UnsupportedProxy):
        store.set_multi({"k": 3}, ttl=30)
    with pytest.raises(exception.UnsupportedProxy):
        store.update("k", lambda v: v + 1)
    assert store.get("k") == 1
    assert store.lease_info("k") is None  # update() gave its lease back


def test_plain_proxy_with_default_ttl_is_refused_at_configure(
        backend_config: dict[str, Any]) -> None:
    store = kvs.get_key_value_store("plain-ttl")
    with pytest.raises(exception.UnsupportedProxy, match="PlainBatching"):
        store.configure(**backend_config, proxy_list=[PlainBatching], default_ttl=30)
    assert not store.is_configured


def test_one_proxy_instance_cannot_serve_two_stores(
        make_store: Any, backend_config: dict[str, Any]) -> None:
    shared = Compressing()
    a = make_store(proxy_list=[shared])
    b = kvs.get_key_value_store("second-store")
    with pytest.raises(exception.ConfigurationError, match="already part of a proxy chain"):
        b.configure(**backend_config, proxy_list=[shared])
    assert not b.is_configured
    twice = Compressing()
    with pytest.raises(exception.ConfigurationError):
        b.configure(**backend_config, proxy_list=[twice, twice])
    a.set("k", "a's")
    assert a.get("k") == "a's"


def test_proxy_classes_are_instantiated_per_store(make_store: Any) -> None:
    a = make_store(proxy_list=[Compressing], key_prefix="same")
    b = make_store(proxy_list=[Compressing], key_prefix="other")
    assert a.region.backend is not b.region.backend
    assert a.region.backend.proxied is a.region.actual_backend
    a.set("k", "a's")
    assert not b.exists("k")
    assert a.get("k") == "a's"


def test_lease_proxy_overriding_only_dogpile_writes_is_refused(
        backend_config: dict[str, Any]) -> None:
    class OnlyDogpileSet(LeaseProxy):
        def set_serialized(self, key: str, value: bytes) -> None:
            super().set_serialized(key, value)

    store = kvs.get_key_value_store("dogpile-only")
    with pytest.raises(exception.ConfigurationError, match="plain_set"):
        store.configure(**backend_config, proxy_list=[OnlyDogpileSet])


def test_lock_state_follows_the_backend(store: kvs.KeyValueStore) -> None:
    lock = store.get_lock("k")
    assert lock.state is LockState.IDLE
    lock.acquire()
    assert lock.state is LockState.HELD
    store.break_lock("k")
    with pytest.raises(exception.LeaseLost):
        store.set("k", 1, lock=lock)
    assert lock.state is LockState.LOST
    with pytest.raises(exception.LeaseLost):  # every later write, without a backend call
        store.set("k", 1, lock=lock)
    lock.release()
    assert lock.state is LockState.RELEASED
    assert not store.exists("k")


def test_threads_hopping_do_not_share_a_fence(make_store: Any) -> None:
    # Two holders writing from many threads at once through a thread-hopping
    # proxy: only the current holder's writes land.  (Sharing a lock between
    # threads is only safe here because its one state change, to LOST, is
    # the same whichever thread makes it.)
    store = make_store(proxy_list=[LeaseThreadHop])
    old = store.get_lock("k").acquire()
    store.break_lock("k")
    new = store.get_lock("k").acquire()
    errors: list[BaseException] = []

    def write(lock: kvs.KeyValueStoreLock, value: str) -> None:
        try:
            store.set("k", value, lock=lock)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(lock, value))
               for lock, value in [(new, "NEW"), (old, "STALE")] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get("k") == "NEW"
    assert len(errors) == 4 and all(isinstance(e, exception.LeaseLost) for e in errors)
    new.release()
