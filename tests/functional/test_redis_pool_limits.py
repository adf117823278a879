"""kvs.redis with max_connections: waiters never starve the lease holder."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

import kvs
from kvs import exception
from tests.fixtures.redis_servers import RedisServer

WAITERS = 6


def test_waiters_beyond_the_pool_never_starve_the_holder(redis_server: RedisServer) -> None:
    store = kvs.get_key_value_store(f"pool-{uuid.uuid4().hex[:8]}")
    store.configure("kvs.redis", host="127.0.0.1", port=redis_server.port, max_connections=3,
                    lock_timeout=10, lock_wait_timeout=20)
    holder = store.get_lock("k").acquire()
    errors: list[BaseException] = []
    order: list[str] = []

    def waiter(name: str) -> None:
        try:
            with store.get_lock("k") as lock:
                store.set("k", name, lock=lock)
                order.append(name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=waiter, args=(f"w{n}",)) for n in range(WAITERS)]
    for thread in threads:
        thread.start()
    # Every waiter is now polling for the key while the pool has 3 connections.
    for n in range(5):
        store.set("k", f"holder{n}", lock=holder)
    for _ in range(20):
        holder.extend(1)
        assert store.get("k") == "holder4"
    holder.release()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(order) == [f"w{n}" for n in range(WAITERS)]
    assert store.get("k") == order[-1]


@pytest.mark.parametrize(("backend", "arguments"), [
    ("kvs.redis_sentinel", {"sentinels": ["127.0.0.1:1"], "service_name": "m"}),
    ("kvs.redis_cluster", {"startup_nodes": ["127.0.0.1:1"]}),
])
def test_max_connections_is_refused_where_the_pool_cannot_queue(
        backend: str, arguments: dict[str, Any]) -> None:
    store = kvs.get_key_value_store(f"pool-{uuid.uuid4().hex[:8]}")
    with pytest.raises(exception.ConfigurationError) as info:
        store.configure(backend, max_connections=3, **arguments)
    assert info.value.context["option"] == "max_connections"
