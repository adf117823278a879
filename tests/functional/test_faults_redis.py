"""kvs.redis under faults, against a real redis-server (issue 8's fault table).

Network faults go through :class:`~tests.functional.faultproxy.FaultProxy`;
crashes use the server fixtures of tests/fixtures/redis.py.  For every fault:
no call hangs past its socket timeout, errors are BackendUnavailable naming
the host (or LockTimeout/LeaseLost for a lost lease), the same store object
recovers, a write under a lost lease never lands, and no lease outlives its
TTL without an owner.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import kvs
from kvs import exception
from kvs.backends.redis import hash_tag
from kvs.lock import PROVISIONAL_LEASE
from tests.fixtures.redis_servers import RedisServer
from tests.functional.fault_support import (
    HANG_SLACK,
    hold_lease_forever,
    new_store,
    returns_within,
    spawn_context,
)
from tests.functional.faultproxy import FaultProxy

SOCKET_TIMEOUT = 0.5


@pytest.fixture
def own_server(redis_servers_factory: Any) -> RedisServer:
    """A redis-server of this test's own (it gets killed and restarted)."""
    server: RedisServer = redis_servers_factory.standalone()
    return server


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", redis_server.port) as proxy:
        yield proxy


@pytest.fixture
def prefix() -> str:
    return f"fault-{uuid.uuid4().hex[:8]}"


def config_for(address: str, **extra: Any) -> dict[str, Any]:
    return {"backing_store": "kvs.redis", "url": f"redis://{address}/0",
            "socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": SOCKET_TIMEOUT,
            "lock_timeout": 5, "lock_wait_timeout": 5, **extra}


def warm_up(store: kvs.KeyValueStore) -> None:
    """Run every lease script once, so that the server has them all loaded.

    The first call of a script answers NOSCRIPT and loads it: a dropped reply
    must be the script's own, not that one.
    """
    with store.get_lock("warm-up") as lock:
        store.set("warm-up", 0, lock=lock)
        lock.extend(1)
        store.lease_info("warm-up")
        store.delete("warm-up", lock=lock)
    store.update("warm-up", lambda value: value, default=0)
    store.delete("warm-up")  # the plain delete (a script too when retries are on)


@pytest.fixture
def via_proxy(proxy: FaultProxy, prefix: str) -> kvs.KeyValueStore:
    """The store under test: every byte passes the proxy."""
    store = new_store(config_for(proxy.address), prefix)
    warm_up(store)
    return store


@pytest.fixture
def direct(redis_server: RedisServer, prefix: str) -> kvs.KeyValueStore:
    """Another client of the same keys, connected straight to the server."""
    return new_store(config_for(redis_server.address), prefix)


def raw_lease(server: RedisServer, store: kvs.KeyValueStore, key: str) -> tuple[Any, int]:
    """(token, PTTL ms) of the lease key as the server holds it."""
    tag = hash_tag(store.backend_key(key))
    client = server.client()
    try:
        return client.get(tag + ":lease"), client.pttl(tag + ":lease")
    finally:
        client.close()


def assert_unavailable(error: pytest.ExceptionInfo[Any], address: str) -> None:
    assert isinstance(error.value, exception.BackendUnavailable)
    assert address in str(error.value)


# -- the server dies -----------------------------------------------------------

def test_server_killed_while_lease_held_then_restarted(own_server: RedisServer,
                                                      prefix: str) -> None:
    holder = new_store(config_for(own_server.address), prefix)
    other = new_store(config_for(own_server.address), prefix)
    lock = holder.get_lock("k").acquire()
    holder.set("k", "before", lock=lock)

    own_server.kill()
    with returns_within(SOCKET_TIMEOUT + HANG_SLACK), \
            pytest.raises(exception.BackendUnavailable) as error:
        holder.set("k", "during", lock=lock)
    assert_unavailable(error, own_server.address)
    with returns_within(SOCKET_TIMEOUT + HANG_SLACK), \
            pytest.raises(exception.BackendUnavailable):
        other.get_lock("k").acquire()

    own_server.start()  # same port, empty: no persistence
    # The old holder's lease died with the server: its fenced write is refused.
    with pytest.raises(exception.LeaseLost):
        holder.set("k", "stale", lock=lock)
    with other.get_lock("k") as new_lock:
        other.set("k", "after", lock=new_lock)
        lock.release()  # the old holder's release must not free the new lease
        assert other.lease_info("k") is not None
        assert other.lease_info("k").token == new_lock.token  # type: ignore[union-attr]
    # Both store objects recovered without a restart of this process.
    assert holder.get("k") == "after"
    assert other.lease_info("k") is None


# -- lost replies ----------------------------------------------------------------

@pytest.mark.parametrize("close", [False, True], ids=["timeout", "reset"])
def test_lost_acquire_reply_retry_makes_the_lease_ours(
        via_proxy: kvs.KeyValueStore, proxy: FaultProxy, redis_server: RedisServer,
        close: bool) -> None:
    with via_proxy.get_lock("k") as earlier:  # connect first, so the dropped reply is the acquire's
        pass
    proxy.drop_next_reply(close=close)
    with returns_within(2 * SOCKET_TIMEOUT + HANG_SLACK):
        lock = via_proxy.get_lock("k").acquire()
    assert proxy.dropped == 1
    token, pttl = raw_lease(redis_server, via_proxy, "k")
    assert token == lock.token.encode()  # type: ignore[union-attr]
    assert 0 < pttl <= 5_000 + 1_000
    info = via_proxy.lease_info("k")
    # One grant, one fence: the retry did not draw a second number (the
    # counter still holds the fence the first, unanswered, grant drew).
    assert info is not None and info.fence == lock.fence > earlier.fence  # type: ignore[operator]
    counter = redis_server.client().get(hash_tag(via_proxy.backend_key("k")) + ":fence")
    assert int(counter) == lock.fence
    via_proxy.set("k", 2, lock=lock)
    lock.release()
    assert raw_lease(redis_server, via_proxy, "k") == (None, -2)
    assert via_proxy.get("k") == 2


def test_lost_acquire_replies_leave_no_ownerless_lease(
        proxy: FaultProxy, redis_server: RedisServer, direct: kvs.KeyValueStore,
        prefix: str) -> None:
    store = new_store(config_for(proxy.address, lock_timeout=1), prefix)
    warm_up(store)
    store.set("k", 1)
    proxy.drop_next_reply()
    proxy.drop_next_reply()  # the retry's reply is lost too
    lock = store.get_lock("k")
    with returns_within(3 * SOCKET_TIMEOUT + HANG_SLACK), \
            pytest.raises(exception.BackendUnavailable) as error:
        lock.acquire()
    assert_unavailable(error, proxy.address)
    # The server granted the lease that nobody knows; the lock gave it back
    # (had that failed as well, the lease's PX TTL would end it).
    token, pttl = raw_lease(redis_server, store, "k")
    assert token is None and pttl == -2
    with returns_within(HANG_SLACK), direct.get_lock("k") as taken:
        assert direct.lease_info("k").token == taken.token  # type: ignore[union-attr]
    # And the faulty store recovers.
    assert store.get("k") == 1


def test_lost_release_reply_is_safe_to_retry(via_proxy: kvs.KeyValueStore, proxy: FaultProxy,
                                            direct: kvs.KeyValueStore) -> None:
    lock = via_proxy.get_lock("k").acquire()
    via_proxy.set("k", "v", lock=lock)
    proxy.drop_next_reply(close=True)
    with returns_within(SOCKET_TIMEOUT + HANG_SLACK), \
            pytest.raises(exception.BackendUnavailable) as error:
        lock.release()
    assert_unavailable(error, proxy.address)
    assert lock.active  # still active: release() can be retried
    assert direct.lease_info("k") is None  # the release ran; only its reply was lost
    lock.release()  # the retry is a compare-and-delete: a no-op now
    assert not lock.active
    with direct.get_lock("k") as other:
        # A retry at the backend cannot free the lease somebody else took since.
        backend = via_proxy.region.actual_backend
        assert backend.release_lease(lock.lease_key, lock.token) is False  # type: ignore[union-attr]
        assert direct.lease_info("k").token == other.token  # type: ignore[union-attr]


def test_lost_fenced_write_reply_retry_is_idempotent(via_proxy: kvs.KeyValueStore,
                                                     proxy: FaultProxy,
                                                     direct: kvs.KeyValueStore) -> None:
    with via_proxy.get_lock("k") as lock:
        proxy.drop_next_reply(close=True)
        with returns_within(SOCKET_TIMEOUT + HANG_SLACK), \
                pytest.raises(exception.BackendUnavailable) as error:
            via_proxy.set("k", {"n": 1}, lock=lock)
        assert_unavailable(error, proxy.address)
        assert direct.get("k") == {"n": 1}  # it landed
        via_proxy.set("k", {"n": 1}, lock=lock)  # the retry: same value, lease still ours
        assert direct.get("k") == {"n": 1}
        assert direct.lease_info("k").token == lock.token  # type: ignore[union-attr]
    assert direct.lease_info("k") is None


def test_lost_update_reply_leaves_no_lease(via_proxy: kvs.KeyValueStore, proxy: FaultProxy,
                                          direct: kvs.KeyValueStore) -> None:
    """update()'s write+release ran but its reply was lost: the value landed once.

    update() is not idempotent: after BackendUnavailable the caller cannot know
    whether it landed (doc/guarantees.md says so).  What must hold: no lease
    is left behind and the value is either old or new, never something else.
    """
    via_proxy.set("n", 10)
    # Let the acquire+read through, lose the reply of the write+release.
    results: list[int] = []

    def bump(value: int) -> int:
        proxy.drop_next_reply(close=True)
        results.append(value + 1)
        return value + 1

    with pytest.raises(exception.BackendUnavailable):
        via_proxy.update("n", bump)
    assert results == [11]
    assert direct.get("n") == 11
    assert direct.lease_info("n") is None
    assert via_proxy.update("n", lambda value: value + 1) == 12  # recovered


# -- stalls and partitions ---------------------------------------------------------

def test_stalled_write_arriving_after_the_lease_is_refused(
        proxy: FaultProxy, direct: kvs.KeyValueStore, prefix: str) -> None:
    # The holder's view of a 2 s lease is 1.5 s (time enough to send its write
    # on a loaded machine); the server keeps it 2.5 s.
    holder = new_store(config_for(proxy.address, lock_timeout=2, socket_timeout=10), prefix)
    lock = holder.get_lock("k").acquire()
    proxy.delay_requests(3.5)  # the write reaches the server 3.5 s after it was sent
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def stale_write() -> None:
        try:
            holder.set("k", "stale", lock=lock)  # passes the client-side check now
            outcome.put(None)
        except BaseException as error:
            outcome.put(error)  # handed to the test thread

    writer = threading.Thread(target=stale_write)
    writer.start()
    with direct.get_lock("k") as other:  # waits out the 2.5 s server-side lease
        direct.set("k", "fresh", lock=other)
        writer.join(10)
        assert not writer.is_alive()
        error = outcome.get_nowait()
        assert isinstance(error, exception.LeaseLost), error
        assert direct.get("k") == "fresh"
    proxy.forward()
    assert holder.get("k") == "fresh"


def test_blackhole_longer_than_the_lease(proxy: FaultProxy, direct: kvs.KeyValueStore,
                                         prefix: str) -> None:
    holder = new_store(config_for(proxy.address, lock_timeout=2), prefix)
    lock = holder.get_lock("k").acquire()
    holder.set("k", "mine", lock=lock)
    proxy.blackhole()
    with returns_within(SOCKET_TIMEOUT + HANG_SLACK), \
            pytest.raises(exception.BackendUnavailable) as error:
        holder.set("k", "partitioned", lock=lock)
    assert_unavailable(error, proxy.address)
    assert "timed out" in str(error.value)
    with returns_within(2.5 + HANG_SLACK), direct.get_lock("k") as other:
        direct.set("k", "other", lock=other)
    proxy.forward()
    with pytest.raises(exception.LockTimeout):
        holder.set("k", "late", lock=lock)
    lock.release()
    assert holder.get("k") == "other"  # recovered, and nothing late landed


# -- the holder dies ----------------------------------------------------------------

def test_holder_process_sigkilled(redis_server: RedisServer, direct: kvs.KeyValueStore,
                                  prefix: str) -> None:
    config = config_for(redis_server.address, lock_timeout=1)
    context = spawn_context()
    ready = context.Queue()
    child = context.Process(target=hold_lease_forever, args=(config, prefix, "k", ready))
    child.start()
    try:
        pid, token, _fence = ready.get(timeout=60)
        info = direct.lease_info("k")
        assert info is not None and info.token == token
        child.kill()
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        waiter = new_store(config_for(redis_server.address, lock_wait_timeout=10), prefix)
        started = time.monotonic()
        with waiter.get_lock("k") as lock:
            waited = time.monotonic() - started
            assert waiter.lease_info("k").token == lock.token  # type: ignore[union-attr]
        # Backend TTL of a 1 s lease is 1.25 s; one wake-up is at most 0.25 s here.
        assert waited < 1.25 + HANG_SLACK
        assert pid != 0
    finally:
        if child.is_alive():
            child.kill()
            child.join(10)


# -- the server forgets its scripts ----------------------------------------------------

def test_script_flush_leases_keep_working(redis_server: RedisServer,
                                          direct: kvs.KeyValueStore) -> None:
    admin = redis_server.client()

    def flush() -> None:
        assert admin.script_flush() is True

    try:
        flush()
        lock = direct.get_lock("k").acquire()
        flush()
        direct.set("k", 1, lock=lock)
        flush()
        lock.extend(1)
        flush()
        assert direct.lease_info("k").token == lock.token  # type: ignore[union-attr]
        flush()
        lock.release()
        flush()
        assert direct.update("k", lambda value: value + 1) == 2
        flush()
        with direct.get_lock("k") as lock:
            flush()
            direct.delete("k", lock=lock)
        assert direct.lease_info("k") is None
        assert not direct.exists("k")
    finally:
        admin.close()


def test_never_expiring_lease_whose_grant_replies_are_lost_still_ends(
        proxy: FaultProxy, redis_server: RedisServer, direct: kvs.KeyValueStore,
        prefix: str) -> None:
    # lock_timeout = 0: the grant carries a provisional TTL until it is
    # confirmed, so losing the grant's replies *and* the give-back cannot
    # leave a lease that nobody owns and that never ends.
    store = new_store(config_for(proxy.address, lock_timeout=0), prefix)
    warm_up(store)
    # The acquire (a queue call that takes the free lease), its retry, the
    # give-back and the leaving of the queue.
    for _ in range(4):
        proxy.drop_next_reply()
    with pytest.raises(exception.BackendUnavailable):
        store.get_lock("k").acquire()
    token, pttl = raw_lease(redis_server, store, "k")
    assert token is not None  # granted, and owned by nobody ...
    assert 0 < pttl <= PROVISIONAL_LEASE * 1000  # ... but only for a bounded time
    proxy.forward()
    # A confirmed lock_timeout = 0 lease never expires.
    direct.break_lock("k")
    with store.get_lock("k") as lock:
        token, pttl = raw_lease(redis_server, store, "k")
        assert token == lock.token.encode() and pttl == -1  # type: ignore[union-attr]


@pytest.fixture
def retrying(proxy: FaultProxy, prefix: str) -> kvs.KeyValueStore:
    """Through the proxy, with redis-py resending a request whose reply was lost."""
    store = new_store(config_for(proxy.address, retries=1), prefix)
    warm_up(store)
    return store


def test_retried_update_reports_its_own_success(retrying: kvs.KeyValueStore,
                                                proxy: FaultProxy,
                                                direct: kvs.KeyValueStore) -> None:
    retrying.set("n", 10)
    proxy.drop_next_reply(close=True, skip=1)  # the write+release, not the acquire+read
    assert retrying.update("n", lambda n: n + 1) == 11
    assert proxy.dropped == 1
    assert direct.get("n") == 11  # applied once, and reported as written
    assert direct.lease_info("n") is None


def test_retried_deletes_report_their_own_success(retrying: kvs.KeyValueStore,
                                                  proxy: FaultProxy,
                                                  direct: kvs.KeyValueStore) -> None:
    retrying.set("plain", 1)
    proxy.drop_next_reply(close=True)
    retrying.delete("plain")  # the resent DEL finds nothing: still not NotFound
    assert proxy.dropped == 1 and not direct.exists("plain")
    retrying.set("locked", 1)
    with retrying.get_lock("locked") as lock:
        proxy.drop_next_reply(close=True)
        retrying.delete("locked", lock=lock)
        assert proxy.dropped == 2
    assert not direct.exists("locked") and direct.lease_info("locked") is None


def test_retried_extend_and_release_tell_the_truth(retrying: kvs.KeyValueStore,
                                                   proxy: FaultProxy,
                                                   redis_server: RedisServer,
                                                   direct: kvs.KeyValueStore,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    lock = retrying.get_lock("k", lock_timeout=2).acquire()
    proxy.drop_next_reply(close=True)
    lock.extend(30)  # applied once: about 2.5 + 30 s, not 2.5 + 60 s
    _token, pttl = raw_lease(redis_server, retrying, "k")
    assert 30_000 < pttl <= 33_000
    proxy.drop_next_reply(close=True)
    with caplog.at_level("WARNING", logger="kvs.lock"):
        lock.release()
    assert proxy.dropped == 2
    assert not [r for r in caplog.records if "lost before release" in r.getMessage()]
    assert direct.lease_info("k") is None
