"""What only a real Redis shows: key layout and TTLs on the server, braces in
prefixes on a cluster, contention with wake-ups, reads from replicas."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import kvs
from kvs import exception
from kvs.backends.redis import hash_tag
from tests.fixtures.redis_servers import Cluster, RedisServer, SentinelGroup, wait_until


@pytest.fixture
def stores() -> Iterator[Any]:
    with kvs.testing.isolated_stores():
        def make(backing_store: str = "kvs.redis", **arguments: Any) -> kvs.KeyValueStore:
            store = kvs.get_key_value_store(f"b-{uuid.uuid4().hex[:10]}")
            store.configure(backing_store, **arguments)
            return store

        yield make


def test_lease_and_value_layout_on_the_server(stores: Any, redis_server: RedisServer) -> None:
    store = stores(url=f"redis://{redis_server.address}/0", lock_timeout=3)
    raw = redis_server.client()
    name = hash_tag(store.backend_key("k"))
    with store.get_lock("k") as lock:
        assert raw.get(name + ":lease") == lock.token.encode()
        assert 3000 <= raw.pttl(name + ":lease") <= 4500  # lock_timeout plus a safety window
        assert int(raw.get(name + ":fence")) == lock.fence
        store.set("k", "v", lock=lock, ttl=1.5)
    assert raw.exists(name + ":lease") == 0
    # The value is named as dogpile.cache.redis names it: the mangled key itself.
    assert 1000 < raw.pttl(store.backend_key("k")) <= 1500
    assert raw.exists(name) == 0


def test_value_names_never_meet_lease_names(stores: Any, redis_server: RedisServer) -> None:
    from kvs.backends.redis import value_name

    names = {value_name(key): key for key in ("", "%", "{a}", "%7Ba%7D", "a", "{a}:lease")}
    assert len(names) == 6 and not any(name.startswith("{") for name in names)
    assert value_name("kvs:abc") == "kvs:abc"
    # With an empty prefix and plain keys a user key may look like a lease name.
    store = stores(url=f"redis://{redis_server.address}/0", key_prefix="",
                   enable_key_mangler=False)
    with store.get_lock("a") as lock:
        store.set("{a}:lease", "not a lease")
        assert store.lease_info("a") is not None and store.lease_info("a").token == lock.token
        store.set("a", 1, lock=lock)
    assert store.get("{a}:lease") == "not a lease" and store.get("a") == 1


def test_hash_tags_keep_the_layout_of_earlier_versions(stores: Any,
                                                       redis_server: RedisServer) -> None:
    url = f"redis://{redis_server.address}/0"
    old = stores(url=url, hash_tags=True, key_prefix="layout")
    old.set("k", "written with hash tags")
    raw = redis_server.client()
    assert raw.exists(hash_tag(old.backend_key("k"))) == 1
    assert raw.exists(old.backend_key("k")) == 0
    # A process of the new layout on the same data refuses rather than fork the value.
    new = stores(url=url, key_prefix="layout")
    for call in (lambda: new.get("k"), lambda: new.get_multi(["k", "other"]),
                 lambda: new.update("k", lambda v: v + "!", default="")):
        with pytest.raises(exception.ConfigurationError, match="hash_tags") as info:
            call()
        assert info.value.context["option"] == "hash_tags"
    assert new.lease_info("k") is None  # update() gave its lease back
    assert old.get("k") == "written with hash tags" and raw.exists(new.backend_key("k")) == 0
    new.set("fresh", 1)
    assert new.get("fresh") == 1
    with pytest.raises(exception.NotFound):
        new.get("never-written")


def test_braces_in_prefix_stay_in_one_slot(stores: Any, redis_cluster_nodes: Cluster) -> None:
    store = stores("kvs.redis_cluster", startup_nodes=redis_cluster_nodes.addresses,
                   key_prefix="{tenant}")
    assert store.update("k{1}", lambda n: n + 1, default=0) == 1
    with store.get_lock("k{1}") as lock:
        store.set("k{1}", 5, lock=lock)
        store.delete("k{1}", lock=lock)
    assert not store.exists("k{1}")


@pytest.mark.parametrize("backend", ["redis", "redis_cluster"])
def test_eight_contenders_never_lose_an_update(request: pytest.FixtureRequest, stores: Any,
                                               backend: str) -> None:
    config = dict(request.getfixturevalue(f"{backend}_backend_config"))
    store = stores(config.pop("backing_store"), lock_timeout=5, lock_wait_timeout=30, **config)
    rounds, errors = 25, []

    def contend() -> None:
        try:
            for _ in range(rounds):
                store.update("counter", lambda n: n + 1, default=0)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert store.get("counter") == 8 * rounds


def test_sentinel_reads_from_replica_when_asked(stores: Any,
                                                redis_sentinel_group: SentinelGroup) -> None:
    arguments = {"sentinels": redis_sentinel_group.addresses,
                 "service_name": redis_sentinel_group.service}
    writer = stores("kvs.redis_sentinel", **arguments)
    reader = stores("kvs.redis_sentinel", **arguments, read_from_replicas="yes",
                    key_prefix=writer.key_prefix)
    writer.set("k", "v")
    name = writer.backend_key("k")  # values are named as dogpile.cache.redis names them
    wait_until(lambda: redis_sentinel_group.replica.client().exists(name) == 1, 10,
               "replication of k")
    assert reader.get("k") == "v"
    backend = reader._region.actual_backend
    assert backend.reader.connection_pool.is_master is False  # plain reads: a replica
    assert backend.client.connection_pool.is_master is True  # leases and writes: the master
