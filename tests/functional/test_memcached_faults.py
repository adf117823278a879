"""kvs.memcached when servers fail, restart, stall or evict: each test starts its own."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pymemcache.client.base import Client

import kvs
from kvs import exception
from kvs.backends.memcached import MemcachedBackend
from tests.fixtures.memcached_servers import MemcachedServer, ServerFactory


def _store(servers: list[MemcachedServer], **overrides: Any) -> kvs.KeyValueStore:
    store = kvs.get_key_value_store(f"mcf-{uuid.uuid4().hex[:10]}")
    store.configure(backing_store="kvs.memcached",
                    servers=[server.address for server in servers], **overrides)
    return store


def _home(store: kvs.KeyValueStore, key: str) -> str:
    """host:port of the server that holds ``key``."""
    backend = store.region.actual_backend
    assert isinstance(backend, MemcachedBackend) and store.region.key_mangler is not None
    return backend.server_for(store.region.key_mangler(key)).name


def test_keys_spread_over_all_three_servers(memcached_servers: list[MemcachedServer]) -> None:
    store = _store(memcached_servers)
    # The ring hashes the servers' (random) ports: with 60 keys a server now and then
    # got only 4; with 300 each gets far more than 5 however the ports fall.
    keys = [f"k{index}" for index in range(300)]
    store.set_multi({key: key for key in keys})
    homes = {server.address: [key for key in keys if _home(store, key) == server.address]
             for server in memcached_servers}
    assert all(len(owned) >= 5 for owned in homes.values()), homes
    for server in memcached_servers:
        raw = Client(("127.0.0.1", server.port), default_noreply=False, timeout=5)
        for key in keys:
            mangler = store.region.key_mangler
            assert mangler is not None
            item = MemcachedBackend.item_keys(mangler(key))[0]
            assert (raw.get(item) is not None) == (key in homes[server.address])
    assert store.get_multi(keys) == keys


def test_down_server_is_unavailable_naming_it_within_the_timeout(
        memcached_servers_factory: ServerFactory) -> None:
    server = memcached_servers_factory.start()
    store = _store([server], connect_timeout=1, timeout=1)
    store.set("k", 1)
    server.stop()
    for call in (lambda: store.get("k"), lambda: store.set("k", 2),
                 lambda: store.get_lock("k").acquire(), lambda: store.ping(),
                 lambda: store.get_multi(["k", "j"]), lambda: store.delete("k")):
        started = time.monotonic()
        with pytest.raises(exception.BackendUnavailable) as info:
            call()
        assert time.monotonic() - started < 5  # connect_timeout 1 s, one retry
        assert server.address in str(info.value)
        assert info.value.context.get("host") == server.address


class Blackhole:
    """A loopback listener that accepts connections and never answers."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    hole = Blackhole()
    try:
        yield hole
    finally:
        hole.close()


def test_silent_server_times_out_as_unavailable(blackhole: Blackhole) -> None:
    store = kvs.get_key_value_store(f"mcf-{uuid.uuid4().hex[:10]}")
    store.configure(backing_store="kvs.memcached", servers=[blackhole.address], timeout=0.3)
    started = time.monotonic()
    with pytest.raises(exception.BackendUnavailable) as info:
        store.get("k")
    # A timeout is not retried (the request may still run): about 0.3 s.
    assert time.monotonic() - started < 3
    assert blackhole.address in str(info.value) and "Timeout" in str(info.value)


def test_store_recovers_after_a_restart_without_reconfiguring(
        memcached_servers_factory: ServerFactory) -> None:
    server = memcached_servers_factory.start()
    store = _store([server])
    store.set("k", "before")
    server.stop()
    with pytest.raises(exception.BackendUnavailable):
        store.get("k")
    server.start()  # same port, empty
    with pytest.raises(exception.NotFound):
        store.get("k")
    store.set("k", "after")
    assert store.get("k") == "after"
    with store.get_lock("k") as lock:
        store.set("k", "locked", lock=lock)
    assert store.get("k") == "locked"


def test_stale_connection_after_a_crash_is_retried_once(
        memcached_servers_factory: ServerFactory) -> None:
    server = memcached_servers_factory.start()
    store = _store([server])  # retry_attempts defaults to 1
    store.set("k", "before")  # this thread now has an open connection
    server.kill()
    server.start()
    # The old socket is dead; the retry on a fresh connection succeeds.
    store.set("k", "after")
    assert store.get("k") == "after"

    fragile = _store([server], retry_attempts=0)
    fragile.set("k", "x")
    server.kill()
    server.start()
    with pytest.raises(exception.BackendUnavailable):
        fragile.set("k", "y")
    fragile.set("k", "z")  # the failed call dropped the dead socket
    assert fragile.get("k") == "z"


def test_stale_connection_is_retried_by_every_hot_call(
        memcached_servers_factory: ServerFactory) -> None:
    server = memcached_servers_factory.start()
    store = _store([server])
    store.set("k", "v")  # this thread now has an open connection

    def restart() -> None:
        server.kill()
        server.start()  # same port, empty

    restart()
    with pytest.raises(exception.NotFound):  # answered on a fresh connection
        store.get("k")
    restart()
    with pytest.raises(exception.NotFound):
        store.get_multi(["k", "j"])
    restart()
    store.set("k", "v")
    restart()
    store.set_multi({"k": "w", "j": "x"})
    assert store.get_multi(["k", "j"]) == ["w", "x"]

    fragile = _store([server], retry_attempts=0)
    for call in (lambda: fragile.get_multi(["k"]), lambda: fragile.set_multi({"k": 1})):
        fragile.set("k", 0)
        restart()
        with pytest.raises(exception.BackendUnavailable) as info:
            call()
        assert server.address in str(info.value)
        fragile.set("k", 2)  # the failed call dropped the dead socket
        assert fragile.get("k") == 2


def test_losing_one_of_three_affects_only_its_keys(
        memcached_servers_factory: ServerFactory) -> None:
    servers = [memcached_servers_factory.start() for _ in range(3)]
    store = _store(servers, connect_timeout=0.5, timeout=0.5)
    keys = [f"k{index}" for index in range(60)]
    store.set_multi({key: key for key in keys})
    lost = servers[1]
    lost.stop()
    on_lost = [key for key in keys if _home(store, key) == lost.address]
    elsewhere = [key for key in keys if key not in on_lost]
    assert on_lost and elsewhere
    for key in elsewhere:
        assert store.get(key) == key
        store.set(key, key + "!")
        with store.get_lock(key) as lock:
            store.set(key, key + "?", lock=lock)
    assert store.get_multi(elsewhere) == [key + "?" for key in elsewhere]
    for key in on_lost:
        with pytest.raises(exception.BackendUnavailable) as info:
            store.get(key)
        assert lost.address in str(info.value)
        with pytest.raises(exception.BackendUnavailable):
            store.get_lock(key).acquire()
    # A multi-key read that touches the lost server fails, naming it.
    with pytest.raises(exception.BackendUnavailable) as info:
        store.get_multi(keys)
    assert lost.address in str(info.value)
    # Its keys are never moved to a live server.
    assert {_home(store, key) for key in on_lost} == {lost.address}
    lost.start()
    store.set(on_lost[0], "back")
    assert store.get(on_lost[0]) == "back"


def test_dead_timeout_fails_fast_then_tries_again(
        memcached_servers_factory: ServerFactory) -> None:
    server = memcached_servers_factory.start()
    store = _store([server], dead_timeout=1.0)
    server.stop()
    with pytest.raises(exception.BackendUnavailable):
        store.get("k")
    server.start()
    with pytest.raises(exception.BackendUnavailable) as info:
        store.get("k")  # still marked down: no connection attempt
    assert "marked down" in str(info.value) and server.address in str(info.value)
    time.sleep(1.1)
    store.set("k", 1)
    assert store.get("k") == 1


def _fill_until_evicted(server: MemcachedServer, item_key: str, value_size: int) -> int:
    """Write items of ``item_key``'s size class until memcached has cycled its LRU.

    The lease is never read meanwhile (a second read would mark it active and
    protect it), exactly as a holder busy with its work would leave it.
    """
    raw = Client(("127.0.0.1", server.port), default_noreply=False, timeout=5)
    stats = raw.stats()
    written = 0
    width = len(item_key)
    while written < 2_000_000:
        batch = {f"fill:{written + index}".ljust(width, "."): b"f" * value_size
                 for index in range(1000)}
        raw.set_many(batch, expire=600)
        written += len(batch)
        stats = raw.stats()
        if int(stats[b"evictions"]) > 3 * int(stats[b"curr_items"]):
            return written
    raise AssertionError(f"no eviction after {written} items: {stats}")


def test_evicted_lease_is_detected_not_silently_overwritten(
        memcached_servers_factory: ServerFactory) -> None:
    """memcached leases are efficiency-grade: memory pressure can evict them.

    What kvs guarantees is that the holder finds out at its next fenced write
    or release, instead of overwriting a value another holder now owns.
    """
    server = memcached_servers_factory.start(memory_mb=2)
    store = _store([server], lock_timeout=120)
    store.set("k", "before")
    holder = store.get_lock("k").acquire()
    assert store.region.key_mangler is not None
    _, lease_key, _ = MemcachedBackend.item_keys(store.region.key_mangler("k"))
    assert holder.token is not None
    _fill_until_evicted(server, lease_key, len(holder.token))

    assert store.lease_info("k") is None  # the lease is gone long before its 120 s
    assert not holder.expired  # ...while its holder still believes in it
    intruder = store.get_lock("k").acquire()  # so a second client gets it too
    store.set("k", "intruder", lock=intruder)
    with pytest.raises(exception.LeaseLost):
        store.set("k", "holder", lock=holder)
    assert store.get("k") == "intruder"
    holder.release()  # must not free the intruder's lease
    info = store.lease_info("k")
    assert info is not None and info.token == intruder.token
    assert intruder.fence is not None and holder.fence is not None
    assert intruder.fence > holder.fence
    intruder.release()


def test_evicted_lease_detected_at_release(memcached_servers_factory: ServerFactory,
                                           caplog: pytest.LogCaptureFixture) -> None:
    server = memcached_servers_factory.start(memory_mb=2)
    store = _store([server], lock_timeout=120)
    holder = store.get_lock("k").acquire()
    assert store.region.key_mangler is not None and holder.token is not None
    _, lease_key, _ = MemcachedBackend.item_keys(store.region.key_mangler("k"))
    _fill_until_evicted(server, lease_key, len(holder.token))
    backend = store.region.actual_backend
    assert isinstance(backend, MemcachedBackend)
    assert backend.release_lease(holder.lease_key, holder.token) is False
    with caplog.at_level(logging.WARNING, logger="kvs.lock"):
        holder.release()
    assert "lost before release" in caplog.text
