"""The Redis lease hand-off: a release grants the lease, with the value, to the
longest-queued live waiter (kvs.backends.redis, HAND_OVER).

Correctness only; the throughput and hand-off latency are measured by
``make bench`` (contention phase), not asserted here.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import kvs
from kvs import exception
from kvs.backends.redis import RedisBackend, hash_tag
from kvs.backends.redis_connections import ConnectionCache
from tests.fixtures.redis_servers import RedisServer
from tests.functional.fault_support import spawn_context
from tests.functional.faultproxy import FaultProxy


@pytest.fixture
def stores(redis_server: RedisServer) -> Iterator[Any]:
    """Stores over one shared key prefix on the tests' redis-server (like processes of
    one service)."""
    prefix = f"handoff-{uuid.uuid4().hex[:8]}"
    with kvs.testing.isolated_stores():
        def make(url: str | None = None, **overrides: Any) -> kvs.KeyValueStore:
            store = kvs.get_key_value_store(f"h-{uuid.uuid4().hex[:10]}")
            store.configure("kvs.redis", url=url or f"redis://{redis_server.address}/0",
                            key_prefix=prefix, lock_timeout=5, lock_wait_timeout=5,
                            **overrides)
            return store

        yield make


def _queue_is_empty(store: kvs.KeyValueStore, key: str, server: RedisServer) -> bool:
    lock = store.get_lock(key)
    tag = hash_tag(lock.lease_key)
    client = server.client()
    return bool(client.hlen(tag + ":waiters") == 0 and client.llen(tag + ":queue") == 0)


def _start(target: Any) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def _wait_queued(server: RedisServer, store: kvs.KeyValueStore, key: str, count: int) -> None:
    tag = hash_tag(store.get_lock(key).lease_key)
    client = server.client()
    deadline = time.monotonic() + 5
    while client.hlen(tag + ":waiters") < count:
        assert time.monotonic() < deadline, "the waiters never queued"
        time.sleep(0.005)


def test_release_hands_the_lease_and_the_new_value_to_the_waiter(
        stores: Any, redis_server: RedisServer) -> None:
    holder_store, waiter_store = stores(), stores()
    holder_store.set("n", 1)
    holder = holder_store.get_lock("n").acquire()
    seen: list[Any] = []
    waiter = _start(lambda: seen.append(waiter_store.update("n", lambda value: value * 10)))
    _wait_queued(redis_server, holder_store, "n", 1)
    holder_store.set("n", 7, lock=holder)
    holder.release()
    waiter.join(5)
    assert seen == [70]                       # it read the value the holder wrote
    assert holder_store.get("n") == 70
    assert holder_store.lease_info("n") is None
    assert _queue_is_empty(holder_store, "n", redis_server)


def test_waiters_are_granted_in_the_order_they_queued(
        stores: Any, redis_server: RedisServer) -> None:
    store = stores()
    holder = store.get_lock("k").acquire()
    order: list[int] = []
    fences: list[int] = []

    def wait(index: int) -> None:
        with store.get_lock("k") as lock:
            order.append(index)
            assert lock.fence is not None
            fences.append(lock.fence)

    threads = []
    for index in range(3):
        threads.append(_start(lambda index=index: wait(index)))
        _wait_queued(redis_server, store, "k", index + 1)
    holder.release()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2]
    assert holder.fence is not None and fences == sorted(fences) and fences[0] > holder.fence
    assert _queue_is_empty(store, "k", redis_server)


def test_a_waiter_that_gave_up_is_skipped(stores: Any, redis_server: RedisServer) -> None:
    store = stores()
    holder = store.get_lock("k").acquire()
    impatient = store.get_lock("k", lock_wait_timeout=0.2)
    with pytest.raises(exception.LockAcquireTimeout):
        impatient.acquire()
    got: list[str | None] = []
    patient = store.get_lock("k")
    thread = _start(lambda: got.append(patient.acquire().token))
    _wait_queued(redis_server, store, "k", 1)
    holder.release()
    thread.join(5)
    assert got and got[0] == patient.token
    info = store.lease_info("k")
    assert info is not None and info.token == patient.token
    patient.release()


def test_a_killed_waiter_is_skipped_once_its_entry_runs_out(
        stores: Any, redis_server: RedisServer) -> None:
    """A waiter process SIGKILLed while queued: a release after its entry ran out
    (about 1 s) hands the lease to the next live waiter, not to the dead one."""
    store = stores()
    holder = store.get_lock("k").acquire()
    config = {"backing_store": "kvs.redis", "url": f"redis://{redis_server.address}/0",
              "key_prefix": store.key_prefix, "lock_timeout": 5, "lock_wait_timeout": 30}
    context = spawn_context()
    doomed = context.Process(target=_wait_for_lock, args=(config,))
    doomed.start()
    try:
        _wait_queued(redis_server, store, "k", 1)
        assert doomed.pid is not None
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.join(10)
        time.sleep(1.5)  # past the dead waiter's entry (blocking cap + 0.5 s)
        got: list[str | None] = []
        live = store.get_lock("k")
        thread = _start(lambda: got.append(live.acquire().token))
        time.sleep(0.1)
        began = time.monotonic()
        holder.release()
        thread.join(5)
        assert got == [live.token]
        assert time.monotonic() - began < 1.0
        live.release()
    finally:
        if doomed.is_alive():
            doomed.kill()


def _wait_for_lock(config: dict[str, Any]) -> None:
    store = kvs.get_key_value_store("doomed")
    store.configure(**config)
    with store.get_lock("k"):
        time.sleep(60)


def test_a_grant_that_arrives_as_the_waiter_gives_up_is_taken_not_left_ownerless(
        stores: Any, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The waiter queues but does not block (its wait is patched to only queue and
    sleep); the holder releases, which grants the lease to it; at its deadline the
    waiter leaves the queue, finds the grant, and holds the lease."""
    store = stores()
    holder = store.get_lock("k").acquire()
    queue_only = RedisBackend.wait_for_grant

    def wait_without_blocking(self: RedisBackend, key: str, token: str, ttl: float | None,
                              timeout: float, read_value: bool = False,
                              first: bool = False) -> Any:
        grant = queue_only(self, key, token, ttl, 0.0, read_value)  # queue or take, no block
        time.sleep(timeout)
        return grant

    monkeypatch.setattr(RedisBackend, "wait_for_grant", wait_without_blocking)
    waiter = store.get_lock("k", lock_wait_timeout=0.5)
    results: list[Any] = []
    thread = _start(lambda: results.append(waiter.acquire()))
    _wait_queued(redis_server, store, "k", 1)
    holder.release()                         # grants to the waiter, which is asleep
    thread.join(5)
    assert results == [waiter] and waiter.active
    info = store.lease_info("k")
    assert info is not None and info.token == waiter.token and info.fence == waiter.fence
    store.set("k", "mine", lock=waiter)
    waiter.release()
    assert store.lease_info("k") is None


@pytest.mark.parametrize("queued_before", [False, True], ids=["alone", "in-one-write"])
def test_a_lost_wake_up_is_recognised_by_the_next_queue_call(
        stores: Any, redis_server: RedisServer, queued_before: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reply of the waiter's BLPOP (its grant) is lost and its connection cut: the
    lock queues again with the same token, finds the lease already its own, and holds
    it with the granted fence.  ``in-one-write``: the waiter's store queued for the
    key before, so its ENQUEUE and BLPOP go in one write (see _contend_once)."""
    holder_store = stores()
    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        waiter_store = stores(url=f"redis://{proxy.address}/0")
        if queued_before:
            _contend_once(holder_store, waiter_store, redis_server, "k")
        sent = _count_pipelined(monkeypatch)
        holder = holder_store.get_lock("k").acquire()
        waiter = waiter_store.get_lock("k")
        results: list[Any] = []
        thread = _start(lambda: results.append(waiter.acquire()))
        _wait_queued(redis_server, holder_store, "k", 1)
        time.sleep(0.05)  # the waiter is in BLPOP now
        proxy.drop_next_reply(close=True)
        holder.release()
        thread.join(5)
        assert proxy.dropped == 1
        assert sent == ([2] if queued_before else [])
        assert results == [waiter]
        info = holder_store.lease_info("k")
        assert info is not None and info.token == waiter.token and info.fence == waiter.fence
        waiter.release()
    assert holder_store.lease_info("k") is None


def _contend_once(holder_store: kvs.KeyValueStore, waiter_store: kvs.KeyValueStore,
                  server: RedisServer, key: str) -> None:
    """One update() of waiter_store that had to queue: the key counts as contended there."""
    holder = holder_store.get_lock(key).acquire()
    waiter = _start(lambda: waiter_store.update(key, lambda value: value + 1, default=0))
    _wait_queued(server, holder_store, key, 1)
    holder.release()
    waiter.join(5)
    assert not waiter.is_alive()


def _count_pipelined(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sent: list[int] = []
    run_many = ConnectionCache.run_many

    def counting(self: ConnectionCache, *commands: Any) -> list[Any]:
        sent.append(len(commands))
        return run_many(self, *commands)

    monkeypatch.setattr(ConnectionCache, "run_many", counting)
    return sent


def test_a_waiter_that_queued_before_queues_and_blocks_in_one_write(
        stores: Any, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    holder_store, waiter_store = stores(), stores()
    _contend_once(holder_store, waiter_store, redis_server, "n")
    sent = _count_pipelined(monkeypatch)
    holder = holder_store.get_lock("n").acquire()
    seen: list[Any] = []
    waiter = _start(lambda: seen.append(waiter_store.update("n", lambda value: value * 10)))
    _wait_queued(redis_server, holder_store, "n", 1)
    holder_store.set("n", 4, lock=holder)
    holder.release()
    waiter.join(5)
    assert sent == [2]                        # ENQUEUE and BLPOP, one write
    assert seen == [40] and holder_store.get("n") == 40
    assert holder_store.lease_info("n") is None
    assert _queue_is_empty(holder_store, "n", redis_server)


def test_a_pipelined_wait_on_a_free_lease_returns_at_once(
        stores: Any, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENQUEUE takes the free lease and leaves an element, so the BLPOP sent with it
    returns at once (its limit here would be 5 s: half the socket timeout)."""
    holder_store, waiter_store = stores(), stores(socket_timeout=10)
    _contend_once(holder_store, waiter_store, redis_server, "n")
    sent = _count_pipelined(monkeypatch)
    started = time.monotonic()
    assert waiter_store.update("n", lambda value: value + 1) == 2
    assert time.monotonic() - started < 2
    assert sent == [2]
    lock = waiter_store.get_lock("n")
    tag = hash_tag(lock.lease_key)
    assert not redis_server.client().keys(tag + ":queue:*")  # the element was popped
    # Free again: the key no longer counts as contended, so the next one goes alone.
    assert waiter_store.update("n", lambda value: value + 1) == 3
    assert sent == [2]


def test_a_pipelined_wait_after_script_flush_loads_the_script(
        stores: Any, redis_server: RedisServer) -> None:
    """NOSCRIPT on the pipelined ENQUEUE: the connection (and its BLPOP) is dropped and
    ENQUEUE is sent alone, which loads it; nothing waits out the BLPOP's limit."""
    holder_store, waiter_store = stores(), stores(socket_timeout=10)
    _contend_once(holder_store, waiter_store, redis_server, "n")
    redis_server.client().script_flush()
    started = time.monotonic()
    assert waiter_store.update("n", lambda value: value + 1) == 2
    assert time.monotonic() - started < 2
    assert waiter_store.lease_info("n") is None


def _record_scripts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the lease scripts the Redis backends send, in order."""
    names: list[str] = []
    send = RedisBackend._eval

    def recording(self: RedisBackend, name: str, keys: list[str], args: list[Any]) -> Any:
        names.append(name)
        return send(self, name, keys, args)

    monkeypatch.setattr(RedisBackend, "_eval", recording)
    return names


def test_an_uncontended_update_takes_the_lease_without_queueing(
        stores: Any, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key that was free when last locked here is tried with the plain ACQUIRE_AND_GET
    (no queue keys); only a key found leased queues, and from then on it queues first."""
    holder_store, waiter_store = stores(), stores()
    waiter_store.set("n", 1)
    sent = _record_scripts(monkeypatch)
    assert waiter_store.update("n", lambda value: value + 1) == 2
    assert sent == ["ACQUIRE_AND_GET", "FENCED_SET_AND_RELEASE"]
    with waiter_store.get_lock("n"):
        pass
    assert sent[2:] == ["ACQUIRE", "RELEASE"]

    del sent[:]
    holder = holder_store.get_lock("n").acquire()
    seen: list[Any] = []
    waiter = _start(lambda: seen.append(waiter_store.update("n", lambda value: value * 10)))
    _wait_queued(redis_server, holder_store, "n", 1)
    holder.release()
    waiter.join(5)
    assert seen == [20]
    # found leased: one plain try, then it queued and was handed the lease
    assert sent[:3] == ["ACQUIRE", "ACQUIRE_AND_GET", "ENQUEUE"]
    assert sent[3:] == ["RELEASE", "FENCED_SET_AND_RELEASE"]
    assert _queue_is_empty(holder_store, "n", redis_server)
