"""KeyValueStoreLock over stock dogpile backends behaves like a lease (real servers).

Two store objects on the same server stand for two processes: each has its
own process-local lease table, so only the backend's distributed mutex can
keep them apart.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import kvs
import kvs.testing
from kvs import exception
from tests.fixtures.memcached_servers import MemcachedServer
from tests.fixtures.redis_servers import RedisServer


@pytest.fixture(params=["dogpile.cache.redis", "dogpile.cache.pymemcache"])
def stock_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    if request.param == "dogpile.cache.redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return {"backing_store": request.param,
                "url": f"redis://127.0.0.1:{server.port}/0"}
    memcached: MemcachedServer = request.getfixturevalue("memcached_server")
    return {"backing_store": request.param, "url": memcached.address}


@pytest.fixture
def two_processes(stock_config: dict[str, Any]) -> Iterator[Any]:
    prefix = f"stock-{uuid.uuid4().hex[:8]}"

    def make(**extra: Any) -> kvs.KeyValueStore:
        store = kvs.get_key_value_store(f"{prefix}-{uuid.uuid4().hex[:6]}")
        store.configure(**{**stock_config, "key_prefix": prefix, "lock_timeout": 1,
                           "lock_wait_timeout": 0.2, **extra})
        return store

    with kvs.testing.isolated_stores():
        yield make


def test_distributed_lock_is_on_by_default(two_processes: Any) -> None:
    a, b = two_processes(), two_processes()
    with a.get_lock("k"), pytest.raises(exception.LockAcquireTimeout):
        b.get_lock("k").acquire()
    with b.get_lock("k"):  # free again once a released it
        pass


def test_a_holder_that_overruns_or_dies_does_not_lock_the_key_forever(
        two_processes: Any) -> None:
    a, b = two_processes(), two_processes()
    a.get_lock("k").acquire()  # never released: a crashed or stuck holder
    started = time.monotonic()
    lock = b.get_lock("k", lock_wait_timeout=10).acquire()
    waited = time.monotonic() - started
    assert waited < 5, f"the backend mutex outlived the 1 s lease by {waited:.1f} s"
    lock.release()


def test_break_lock_works_across_processes(two_processes: Any) -> None:
    a, b = two_processes(lock_timeout=30), two_processes(lock_timeout=30)
    a.get_lock("k").acquire()
    assert b.break_lock("k")
    with b.get_lock("k"):
        pass


def test_fences_increase_across_processes_without_a_key_mangler(two_processes: Any) -> None:
    # The fence counter's and the mutex's keys must be valid on the backend
    # whatever the lease key holds (they used to hold NUL bytes, which
    # memcached refuses: every lock attempt failed).
    a = two_processes(enable_key_mangler=False)
    b = two_processes(enable_key_mangler=False)
    fences = []
    for store in (a, b, a, b):
        with store.get_lock("k") as lock:
            store.set("k", lock.fence, lock=lock)
            fences.append(lock.fence)
    assert fences == sorted(fences) and len(set(fences)) == 4
    with a.get_lock("key with spaces"):  # the lock works even where the data key would not
        pass


def test_a_lock_longer_than_the_backend_mutex_is_refused(two_processes: Any) -> None:
    store = two_processes()  # lock_timeout 1: the backend mutex lives 3 s
    with pytest.raises(exception.ConfigurationError) as info:
        store.get_lock("k", lock_timeout=60).acquire()
    assert info.value.context["option"] == "lock_timeout"
    with store.get_lock("k", lock_timeout=0.5):  # shorter is fine
        pass


def test_extend_extends_the_backend_mutex_too(two_processes: Any) -> None:
    a, b = two_processes(), two_processes()
    lock = a.get_lock("k").acquire()
    lock.extend(5)
    time.sleep(3.3)  # past the mutex's own 3 s: only the extend keeps b out
    with pytest.raises(exception.LockAcquireTimeout):
        b.get_lock("k").acquire()
    a.set("k", "still a's", lock=lock)
    lock.release()
    with b.get_lock("k"):
        pass
