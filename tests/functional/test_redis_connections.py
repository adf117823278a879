"""kvs.redis's own connection cache (kvs.backends.redis_connections) on a real server:
shared by threads, replaced when the server closed it, never shared with a fork."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import kvs
from kvs import exception
from kvs.backends.redis import RedisBackend
from kvs.backends.redis_connections import IDLE_CHECK_S
from tests.fixtures.redis_servers import RedisServer


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[kvs.KeyValueStore]:
    with kvs.testing.isolated_stores():
        made = kvs.get_key_value_store(f"conn-{uuid.uuid4().hex[:10]}")
        made.configure("kvs.redis", url=f"redis://{redis_server.address}/0",
                       key_prefix=f"conn-{uuid.uuid4().hex[:8]}")
        yield made


def _backend(store: kvs.KeyValueStore) -> RedisBackend:
    backend = store.region.actual_backend
    assert isinstance(backend, RedisBackend)
    return backend


def test_the_hot_path_uses_the_cache(store: kvs.KeyValueStore) -> None:
    backend = _backend(store)
    store.set("k", 1)
    assert backend._pinned and backend._on_writer is not None
    assert store.update("k", lambda value: value + 1) == 2
    with store.get_lock("k") as lock:
        store.set("k", 3, lock=lock)
    assert store.get("k") == 3


def test_short_lived_threads_share_connections(store: kvs.KeyValueStore,
                                                redis_server: RedisServer) -> None:
    store.set("k", 0)
    cache = _backend(store)._on_writer
    for _ in range(40):
        thread = threading.Thread(target=lambda: store.update("k", lambda value: value + 1))
        thread.start()
        thread.join(5)
    assert store.get("k") == 40
    # One at a time: one connection was enough (the pool would have reused one too),
    # and it is back in the cache's list.  (Counted in the cache: other tests' stores
    # on the same server come and go meanwhile.)
    assert len(cache._free) == 1


def test_a_connection_the_server_closed_while_idle_is_replaced(
        store: kvs.KeyValueStore, redis_server: RedisServer) -> None:
    store.set("k", 1)
    killed = redis_server.client().client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1
    time.sleep(IDLE_CHECK_S * 3)  # as the server's ``timeout`` would, after idling
    assert store.get("k") == 1    # not BackendUnavailable: the idle check saw it closed
    store.set("k", 2)
    assert store.update("k", lambda value: value + 1) == 3


def test_a_connection_that_failed_in_use_is_reconnected_next_time(
        store: kvs.KeyValueStore, redis_server: RedisServer) -> None:
    store.set("k", 1)
    redis_server.client().client_kill_filter(_type="normal", skipme=True)
    # At once (no idle check): the command fails, and says where.
    with pytest.raises(exception.BackendUnavailable) as caught:
        store.get("k")
    assert redis_server.address in str(caught.value)
    assert store.get("k") == 1


def test_a_forked_child_never_uses_its_parents_connections(
        store: kvs.KeyValueStore, redis_server: RedisServer) -> None:
    store.set("k", "parent")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own connection, and the parent's left alone
        try:
            os.close(read)
            store.set("child", os.getpid())
            ok = store.get("k") == "parent" and store.update("k", lambda v: v + "+child")
            os.write(write, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as reply:
        assert reply.read() == b"ok"
    os.waitpid(pid, 0)
    # The parent's connection is still in step after the child's exit.
    assert store.get("k") == "parent+child"
    assert store.get("child") == pid
    store.set("k", "after")
    assert store.get("k") == "after"


def test_commands_are_packed_as_redis_py_packs_them(store: kvs.KeyValueStore,
                                                    redis_server: RedisServer) -> None:
    """hiredis packs str, bytes, int and float; anything else goes to redis-py's packer,
    which sends it (a memoryview) or refuses it (a bool: DataError)."""
    import redis.exceptions

    store.set("k", 1)  # connects
    cache = _backend(store)._on_writer
    assert cache is not None
    name = f"conn-pack-{uuid.uuid4().hex[:8]}"
    client = redis_server.client()
    for sent, stored in (("é", "é".encode()), (b"\x00\xff", b"\x00\xff"), (12, b"12"),
                         (0.1, b"0.1"), (memoryview(b"mv"), b"mv")):
        assert cache.run("SET", name, sent) == b"OK"
        assert client.get(name) == stored
    with pytest.raises(redis.exceptions.DataError):
        cache.run("SET", name, True)
    assert cache.run("GET", name) == b"mv"  # the connection is still in step
    # A strided view is refused as redis-py refuses it, never sent as its
    # underlying bytes (hiredis alone would send b"abc").
    with pytest.raises(BufferError):
        cache.run("SET", name, memoryview(b"abcdef")[::2])
    assert client.get(name) == b"mv"


def test_a_client_with_another_encoding_packs_with_redis_py(redis_server: RedisServer) -> None:
    """hiredis encodes text as UTF-8 only: a client set to another encoding keeps
    redis-py's packer, so text is sent as that client would send it."""
    import redis

    from kvs.backends.redis_connections import ConnectionCache

    host, port = redis_server.address.rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port), encoding="latin-1")
    cache = ConnectionCache(client)
    name = f"conn-latin-{uuid.uuid4().hex[:8]}"
    try:
        assert cache.run("SET", name, "é") == b"OK"
        assert redis_server.client().get(name) == b"\xe9"
    finally:
        client.close()


def test_commands_sent_together_go_in_one_write(store: kvs.KeyValueStore,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """run_many hands redis-py one buffer: send_packed_command makes a sendall per item."""
    store.set("k", 1)  # connects
    cache = _backend(store)._on_writer
    assert cache is not None
    connection = cache._take()
    cache._put(connection)
    sent: list[int] = []
    send = type(connection).send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(len(command))
        send(self, command, check_health)

    monkeypatch.setattr(type(connection), "send_packed_command", counting)
    name = f"conn-many-{uuid.uuid4().hex[:8]}"
    assert cache.run_many(("SET", name, "1"), ("GET", name)) == [b"OK", b"1"]
    assert sent == [1]
