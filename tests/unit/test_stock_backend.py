"""Stock dogpile.cache backends: they work, but their locks are not fenced."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from dogpile.cache.proxy import ProxyBackend

import kvs
import kvs.testing
from kvs import exception


@pytest.fixture(params=["dogpile.cache.memory", "dogpile.cache.memory_pickle"])
def stock_store(request: pytest.FixtureRequest, caplog: Any) -> kvs.KeyValueStore:
    with caplog.at_level(logging.WARNING, logger="kvs.core"):
        store = kvs.get_key_value_store(f"stock-{request.param}")
        store.configure(request.param, lock_timeout=1, lock_wait_timeout=0.2)
    assert "NOT fenced" in caplog.text
    return store


def test_data_round_trip_and_not_found(stock_store: kvs.KeyValueStore) -> None:
    stock_store.set("k", {"v": [1, b"x"]})
    assert stock_store.get("k") == {"v": [1, b"x"]}
    assert stock_store.get_multi(["k"]) == [{"v": [1, b"x"]}]
    stock_store.delete("k")
    with pytest.raises(exception.NotFound):
        stock_store.delete("k")
    assert not stock_store.fenced


def test_locks_exclude_within_the_process(stock_store: kvs.KeyValueStore) -> None:
    with stock_store.get_lock("k") as lock:
        with pytest.raises(exception.LockAcquireTimeout):
            stock_store.get_lock("k").acquire()
        stock_store.set("k", 1, lock=lock)
    assert stock_store.update("k", lambda v: v + 1) == 2


def test_expired_lock_refused_by_client_clock(stock_store: kvs.KeyValueStore) -> None:
    stock_store.set("k", "before")
    with stock_store.get_lock("k") as lock:
        time.sleep(0.8)
        with pytest.raises(exception.LockTimeout):
            stock_store.set("k", "after", lock=lock)
    assert stock_store.get("k") == "before"


def test_broken_lease_refused_within_the_process(stock_store: kvs.KeyValueStore) -> None:
    lock = stock_store.get_lock("k").acquire()
    stock_store.break_lock("k")
    with pytest.raises(exception.LeaseLost):
        stock_store.set("k", 1, lock=lock)


def test_ttls_need_a_kvs_backend(stock_store: kvs.KeyValueStore) -> None:
    with pytest.raises(exception.ConfigurationError):
        stock_store.set("k", 1, ttl=5)
    other = kvs.get_key_value_store("stock-ttl")
    with pytest.raises(exception.ConfigurationError):
        other.configure("dogpile.cache.memory", default_ttl=5)
    assert not other.is_configured


class _PlainProxy(ProxyBackend):
    """A plain dogpile proxy that counts the writes passing through it."""

    writes = 0

    def set_serialized(self, key: Any, value: Any) -> None:
        type(self).writes += 1
        self.proxied.set_serialized(key, value)


def test_stock_backend_behind_a_plain_proxy_checks_locked_writes() -> None:
    _PlainProxy.writes = 0
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store("stock-plain-proxy")
        store.configure("dogpile.cache.memory", proxy_list=[_PlainProxy])
        with store.get_lock("k") as lock:
            store.set("k", 1, lock=lock)
            store.delete("k", lock=lock)
            with pytest.raises(exception.NotFound):
                store.delete("k", lock=lock)
        assert store.update("n", lambda n: n + 1, default=0) == 1
        stale = store.get_lock("k").acquire()
        store.break_lock("k")
        with pytest.raises(exception.LeaseLost):
            store.set("k", "stale", lock=stale)
        assert not store.exists("k")
        assert _PlainProxy.writes == 2  # the locked set and update()'s write
