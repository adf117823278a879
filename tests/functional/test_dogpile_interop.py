"""kvs backends and plain dogpile.cache regions: the same values, both ways.

A kvs store and a stock dogpile region configured with the store's key
mangler and serializer, on the same server, read each other's values; a
plain region with no serializer works on every kvs backend; the value header
carries dogpile's float creation time.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from dogpile.cache import make_region
from dogpile.cache.api import NO_VALUE
from dogpile.cache.region import CacheRegion

import kvs
from kvs import exception
from tests.conftest import CONTRACT_BACKENDS


@pytest.fixture
def store(backend_config: dict[str, Any]) -> Iterator[kvs.KeyValueStore]:
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store(f"interop-{uuid.uuid4().hex[:8]}")
        store.configure(**backend_config)
        yield store


def stock_region(backend_name: str, config: dict[str, Any], store: kvs.KeyValueStore,
                 expiration_time: float | None = None) -> CacheRegion:
    """The stock dogpile backend for the same server, with the store's mangler and codec."""
    if backend_name in ("redis", "redis_sentinel"):
        if backend_name == "redis":
            url = urllib.parse.urlsplit(config["url"])
            stock, arguments = "dogpile.cache.redis", {
                "host": url.hostname, "port": url.port, "db": 0}
        else:
            sentinels = [(host, int(port)) for host, port in
                         (item.rsplit(":", 1) for item in config["sentinels"].split(","))]
            stock, arguments = "dogpile.cache.redis_sentinel", {
                "sentinels": sentinels, "service_name": config["service_name"], "db": 0}
    elif backend_name == "memcached":
        stock, arguments = "dogpile.cache.pymemcache", {"url": config["servers"]}
    else:
        pytest.skip(f"no stock dogpile backend shares a server with {backend_name}")
    serializer = store._serializer
    return make_region(key_mangler=store.region.key_mangler, serializer=serializer.dumps,
                       deserializer=serializer.loads).configure(
        stock, arguments=arguments, expiration_time=expiration_time)


@pytest.mark.parametrize("backend_name", ["redis", "redis_sentinel", "memcached"])
def test_a_stock_region_and_a_store_read_each_other(backend_name: str,
                                                    backend_config: dict[str, Any],
                                                    store: kvs.KeyValueStore) -> None:
    region = stock_region(backend_name, backend_config, store)
    store.set("from-kvs", {"a": [1, 2], "b": b"\x00"})
    assert region.get("from-kvs") == {"a": [1, 2], "b": b"\x00"}
    region.set("from-dogpile", ["x", 3.5])
    assert store.get("from-dogpile") == ["x", 3.5]
    with store.get_lock("locked") as lock:
        store.set("locked", 7, lock=lock)
    assert region.get("locked") == 7
    region.delete("from-kvs")
    assert not store.exists("from-kvs")


@pytest.mark.parametrize("backend_name", ["redis", "redis_sentinel", "memcached"])
def test_a_stock_region_sees_kvs_values_as_fresh_as_they_are(backend_name: str,
                                                             backend_config: dict[str, Any],
                                                             store: kvs.KeyValueStore) -> None:
    region = stock_region(backend_name, backend_config, store, expiration_time=0.5)
    store.set("fresh", 1)
    assert region.get("fresh") == 1          # an integer creation time read this as expired
    time.sleep(0.6)
    assert region.get("fresh") is NO_VALUE   # and it does expire, on time
    region.invalidate(hard=True)
    time.sleep(0.01)
    store.set("after", 2)
    assert region.get("after") == 2          # a write after invalidate() is not stale


@pytest.mark.parametrize("backend_name", CONTRACT_BACKENDS)
def test_a_plain_region_without_a_serializer_works(backend_name: str,
                                                   backend_config: dict[str, Any]) -> None:
    config = dict(backend_config)
    backend = config.pop("backing_store")
    region = make_region().configure(backend, arguments=config)
    key = f"plain-{uuid.uuid4().hex[:8]}"
    assert region.get(key) is NO_VALUE
    value = {"t": (1, (2, "x")), "l": [b"\x01"], "big": 2 ** 80}
    region.set(key, value)
    got = region.get(key)
    assert got == value and type(got["t"]) is tuple and type(got["t"][1]) is tuple
    assert region.get_or_create(key + "c", lambda: ("made", 1)) == ("made", 1)
    region.set_multi({key + "a": 1, key + "b": (2,)})
    assert region.get_multi([key + "a", key + "b", key + "z"]) == [1, (2,), NO_VALUE]
    with pytest.raises(exception.SerializationError, match="set"):
        region.set(key + "s", {1, 2})
    assert region.get(key + "s") is NO_VALUE
    region.delete_multi([key + "a", key])
    assert region.get(key) is NO_VALUE and region.get(key + "b") == (2,)


def test_the_value_header_carries_a_float_creation_time() -> None:
    before = time.time()
    header = kvs.serializers.header()
    after = time.time()
    # Whole microseconds with an exponent: a JSON number that reads as a float.
    stamp = json.loads(header[:-1])["ct"]
    assert type(stamp) is float and header.endswith(b'e-6,"v":2}|')
    assert before - 1e-6 <= stamp <= after + 1e-6  # to the microsecond
