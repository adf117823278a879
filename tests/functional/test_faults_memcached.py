"""kvs.memcached under faults, against a real memcached (issue 8's fault table).

Same fault table as tests/functional/test_faults_redis.py.  memcached's leases
are efficiency-grade (doc/guarantees.md): a fenced write is check-then-write,
so :func:`test_reply_stall_can_land_a_write_after_the_lease` shows the one
window memcached cannot close.  Eviction of a lease is the memcached
engineer's test, in tests/functional/test_memcached_backend.py.

memcached counts TTLs in whole seconds: a lease of ``lock_timeout=1`` lives
``ceil(1.25) + 1 + ceil(lease_safety_margin)`` = 4 s on the server, one of
``lock_timeout=2`` lives ``ceil(2.5) + 1 + 1`` = 5 s.  Tests whose holder must
still trust its lease when it sends a write use 2 s (the holder's view is
1.5 s), so a loaded machine does not turn the server's refusal into the
client's own LockTimeout.
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
from pymemcache.client.base import Client

import kvs
from kvs import exception
from kvs.backends.memcached import MemcachedBackend
from tests.fixtures.memcached_servers import MemcachedServer
from tests.functional.fault_support import (
    HANG_SLACK,
    hold_lease_forever,
    new_store,
    returns_within,
    spawn_context,
)
from tests.functional.faultproxy import FaultProxy

TIMEOUT = 0.5
#: Server-side life of leases taken with lock_timeout=1 and 2 (see the module docstring).
ONE_SECOND_LEASE_LIFE = 4.0
TWO_SECOND_LEASE_LIFE = 5.0


@pytest.fixture
def own_server(memcached_servers_factory: Any) -> MemcachedServer:
    server: MemcachedServer = memcached_servers_factory.start()
    return server


@pytest.fixture
def proxy(memcached_server: MemcachedServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", memcached_server.port) as proxy:
        yield proxy


@pytest.fixture
def prefix() -> str:
    return f"fault-{uuid.uuid4().hex[:8]}"


def config_for(address: str, **extra: Any) -> dict[str, Any]:
    return {"backing_store": "kvs.memcached", "servers": [address], "timeout": TIMEOUT,
            "connect_timeout": TIMEOUT, "lock_timeout": 5, "lock_wait_timeout": 5, **extra}


@pytest.fixture
def via_proxy(proxy: FaultProxy, prefix: str) -> kvs.KeyValueStore:
    store = new_store(config_for(proxy.address), prefix)
    store.set("warm-up", 0)  # connect, so the first dropped reply is the call's own
    return store


@pytest.fixture
def direct(memcached_server: MemcachedServer, prefix: str) -> kvs.KeyValueStore:
    return new_store(config_for(memcached_server.address), prefix)


def backend_of(store: kvs.KeyValueStore) -> MemcachedBackend:
    backend = store.region.actual_backend
    assert isinstance(backend, MemcachedBackend)
    return backend


def raw_lease(server: MemcachedServer, store: kvs.KeyValueStore, key: str) -> bytes | None:
    """The lease item's value (the holder's token) as the server holds it."""
    _, lease_key, _ = MemcachedBackend.item_keys(store.backend_key(key))
    client = Client(("127.0.0.1", server.port), default_noreply=False, timeout=5)
    try:
        value: bytes | None = client.get(lease_key)
        return value
    finally:
        client.close()


def assert_unavailable(error: pytest.ExceptionInfo[Any], address: str) -> None:
    assert isinstance(error.value, exception.BackendUnavailable)
    assert address in str(error.value)


# -- the server dies -----------------------------------------------------------

def test_server_killed_while_lease_held_then_restarted(own_server: MemcachedServer,
                                                      prefix: str) -> None:
    holder = new_store(config_for(own_server.address), prefix)
    other = new_store(config_for(own_server.address), prefix)
    lock = holder.get_lock("k").acquire()
    holder.set("k", "before", lock=lock)

    own_server.kill()
    with returns_within(2 * TIMEOUT + HANG_SLACK), \
            pytest.raises(exception.BackendUnavailable) as error:
        holder.set("k", "during", lock=lock)
    assert_unavailable(error, own_server.address)

    own_server.start()  # same port, empty
    with pytest.raises(exception.LeaseLost):
        holder.set("k", "stale", lock=lock)
    with other.get_lock("k") as new_lock:
        # The fence counter is re-seeded from the clock: it still went up.
        assert new_lock.fence is not None and lock.fence is not None
        assert new_lock.fence > lock.fence
        other.set("k", "after", lock=new_lock)
        lock.release()
        assert other.lease_info("k").token == new_lock.token  # type: ignore[union-attr]
    assert holder.get("k") == "after"
    assert other.lease_info("k") is None


# -- lost replies ----------------------------------------------------------------

@pytest.mark.parametrize("close", [False, True], ids=["timeout", "reset"])
def test_lost_acquire_reply_retry_makes_the_lease_ours(
        via_proxy: kvs.KeyValueStore, proxy: FaultProxy, memcached_server: MemcachedServer,
        close: bool) -> None:
    with via_proxy.get_lock("k") as earlier:
        pass
    proxy.drop_next_reply(close=close)  # the reply to the lease's `add`
    with returns_within(3 * TIMEOUT + HANG_SLACK):
        lock = via_proxy.get_lock("k").acquire()
    assert proxy.dropped == 1
    assert raw_lease(memcached_server, via_proxy, "k") == lock.token.encode()  # type: ignore[union-attr]
    # Fences are strictly increasing per key: the retried grant is a new grant.
    assert lock.fence is not None and earlier.fence is not None
    assert lock.fence > earlier.fence
    via_proxy.set("k", 2, lock=lock)
    lock.release()
    assert raw_lease(memcached_server, via_proxy, "k") is None
    assert via_proxy.get("k") == 2


def test_lost_acquire_replies_leave_a_lease_that_expires(
        proxy: FaultProxy, memcached_server: MemcachedServer, direct: kvs.KeyValueStore,
        prefix: str) -> None:
    lost = 2
    store = new_store(config_for(proxy.address, lock_timeout=1), prefix)
    store.set("k", 1)
    for _ in range(lost):  # the acquire and its retry
        proxy.drop_next_reply()
    lock = store.get_lock("k")
    with returns_within((lost + 1) * TIMEOUT + HANG_SLACK), \
            pytest.raises(exception.BackendUnavailable) as error:
        lock.acquire()
    assert_unavailable(error, proxy.address)
    leased = raw_lease(memcached_server, store, "k")
    if leased is not None:
        # The lock's give-back did not land (its replies may be lost too):
        # the lease must then carry a TTL.
        assert leased == lock.token.encode()  # type: ignore[union-attr]
        info = direct.lease_info("k")
        assert info is not None and info.remaining is not None
    waiter = new_store(config_for(memcached_server.address, lock_wait_timeout=10),
                       store.key_prefix)
    with returns_within(ONE_SECOND_LEASE_LIFE + HANG_SLACK), waiter.get_lock("k") as taken:
        assert waiter.lease_info("k").token == taken.token  # type: ignore[union-attr]
    assert store.get("k") == 1


@pytest.mark.parametrize("close", [False, True], ids=["timeout", "reset"])
def test_lost_release_reply_is_safe_to_retry(via_proxy: kvs.KeyValueStore, proxy: FaultProxy,
                                            direct: kvs.KeyValueStore, close: bool) -> None:
    lock = via_proxy.get_lock("k").acquire()
    via_proxy.set("k", "v", lock=lock)
    proxy.drop_next_reply(close=close, skip=1)  # release = read the lease, then delete it
    with returns_within(3 * TIMEOUT + HANG_SLACK):
        try:
            lock.release()
        except exception.BackendUnavailable as error:  # a timeout is not retried
            assert proxy.address in str(error)
    assert proxy.dropped == 1
    lock.release()  # retrying is safe: a compare-and-delete of our own token
    assert not lock.active
    assert direct.lease_info("k") is None  # the delete ran; only its reply was lost
    with direct.get_lock("k") as other:
        assert lock.token is not None
        # A retried release finds another holder's lease and leaves it alone.
        assert backend_of(via_proxy).release_lease(lock.lease_key, lock.token) is False
        assert direct.lease_info("k").token == other.token  # type: ignore[union-attr]


@pytest.mark.parametrize("close", [False, True], ids=["timeout", "reset"])
def test_lost_fenced_write_reply_retry_is_idempotent(via_proxy: kvs.KeyValueStore,
                                                     proxy: FaultProxy,
                                                     direct: kvs.KeyValueStore,
                                                     close: bool) -> None:
    with via_proxy.get_lock("k") as lock:
        proxy.drop_next_reply(close=close, skip=1)  # fenced write = check, then `set`
        with returns_within(3 * TIMEOUT + HANG_SLACK):
            try:
                via_proxy.set("k", {"n": 1}, lock=lock)
            except exception.BackendUnavailable as error:
                assert proxy.address in str(error)
        assert proxy.dropped == 1
        assert direct.get("k") == {"n": 1}
        via_proxy.set("k", {"n": 1}, lock=lock)  # the retry
        assert direct.get("k") == {"n": 1}
        assert direct.lease_info("k").token == lock.token  # type: ignore[union-attr]
    assert direct.lease_info("k") is None


# -- stalls and partitions ---------------------------------------------------------

def _write_in_thread(store: kvs.KeyValueStore, lock: kvs.KeyValueStoreLock,
                     value: Any) -> tuple[threading.Thread, queue.Queue[BaseException | None]]:
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def write() -> None:
        try:
            store.set("k", value, lock=lock)
            outcome.put(None)
        except BaseException as error:
            outcome.put(error)  # handed to the test thread

    thread = threading.Thread(target=write)
    thread.start()
    return thread, outcome


def test_stalled_write_arriving_after_the_lease_is_refused(
        proxy: FaultProxy, direct: kvs.KeyValueStore, prefix: str) -> None:
    holder = new_store(config_for(proxy.address, lock_timeout=2, timeout=15), prefix)
    lock = holder.get_lock("k").acquire()
    proxy.delay_requests(TWO_SECOND_LEASE_LIFE + 0.7)
    writer, outcome = _write_in_thread(holder, lock, "stale")
    waiter = new_store(config_for(direct.region.actual_backend.servers[0].name,  # type: ignore[attr-defined]
                                  lock_wait_timeout=10), prefix)
    with waiter.get_lock("k") as other:
        waiter.set("k", "fresh", lock=other)
        writer.join(15)
        assert not writer.is_alive()
        error = outcome.get_nowait()
        assert isinstance(error, exception.LeaseLost), error
        assert waiter.get("k") == "fresh"
    proxy.forward()
    assert holder.get("k") == "fresh"


@pytest.mark.slow
def test_reply_stall_can_land_a_write_after_the_lease(
        proxy: FaultProxy, memcached_server: MemcachedServer, prefix: str) -> None:
    """The documented limit: memcached's fenced write is check-then-write.

    The lease check passes on the server, its reply is held past the lease's
    end, another holder takes the lease and writes, then the old holder's
    ``set`` lands on top.  Redis closes this window with one Lua script
    (test_faults_redis.py::test_stalled_write_arriving_after_the_lease_is_refused);
    memcached cannot, so its leases are efficiency-grade.
    """
    holder = new_store(config_for(proxy.address, lock_timeout=2, timeout=20), prefix)
    lock = holder.get_lock("k").acquire()
    proxy.delay_replies(TWO_SECOND_LEASE_LIFE + 2.0)
    writer, outcome = _write_in_thread(holder, lock, "late")
    waiter = new_store(config_for(memcached_server.address, lock_wait_timeout=10), prefix)
    with waiter.get_lock("k") as other:
        waiter.set("k", "fresh", lock=other)
    writer.join(40)
    assert not writer.is_alive()
    assert outcome.get_nowait() is None  # the holder was told its write landed...
    assert waiter.get("k") == "late"  # ...and it overwrote the newer holder's value


def test_blackhole_longer_than_the_lease(proxy: FaultProxy, memcached_server: MemcachedServer,
                                         prefix: str) -> None:
    holder = new_store(config_for(proxy.address, lock_timeout=2), prefix)
    lock = holder.get_lock("k").acquire()
    holder.set("k", "mine", lock=lock)
    proxy.blackhole()
    with returns_within(2 * TIMEOUT + HANG_SLACK), \
            pytest.raises(exception.BackendUnavailable) as error:
        holder.set("k", "partitioned", lock=lock)
    assert_unavailable(error, proxy.address)
    other_store = new_store(config_for(memcached_server.address, lock_wait_timeout=10), prefix)
    with returns_within(TWO_SECOND_LEASE_LIFE + HANG_SLACK), \
            other_store.get_lock("k") as other:
        other_store.set("k", "other", lock=other)
    proxy.forward()
    with pytest.raises(exception.LockTimeout):
        holder.set("k", "late", lock=lock)
    lock.release()
    assert holder.get("k") == "other"


# -- the holder dies ----------------------------------------------------------------

def test_holder_process_sigkilled(memcached_server: MemcachedServer, direct: kvs.KeyValueStore,
                                  prefix: str) -> None:
    config = config_for(memcached_server.address, lock_timeout=1)
    context = spawn_context()
    ready = context.Queue()
    child = context.Process(target=hold_lease_forever, args=(config, prefix, "k", ready))
    child.start()
    try:
        _pid, token, _fence = ready.get(timeout=60)
        assert direct.lease_info("k").token == token  # type: ignore[union-attr]
        child.kill()
        child.join(10)
        assert child.exitcode == -signal.SIGKILL
        waiter = new_store(config_for(memcached_server.address, lock_wait_timeout=10), prefix)
        started = time.monotonic()
        with waiter.get_lock("k") as lock:
            waited = time.monotonic() - started
            assert waiter.lease_info("k").token == lock.token  # type: ignore[union-attr]
        # Lease life plus one poll (memcached cannot wake waiters; polls back off to 0.1 s).
        assert waited < ONE_SECOND_LEASE_LIFE + HANG_SLACK
    finally:
        if child.is_alive():
            child.kill()
            child.join(10)


def test_lost_delete_reply_is_unknown_not_not_found(via_proxy: kvs.KeyValueStore,
                                                    proxy: FaultProxy,
                                                    direct: kvs.KeyValueStore) -> None:
    # With the default retry_attempts, pymemcache used to resend the delete,
    # whose second copy answered NOT_FOUND: a delete that happened, reported
    # as NotFound.  It is now sent once, and a lost reply is "unknown".
    via_proxy.set("k", 1)
    proxy.drop_next_reply(close=True)
    with pytest.raises(exception.BackendUnavailable):
        via_proxy.delete("k")
    assert proxy.dropped == 1
    assert not direct.exists("k")  # it did happen


def test_lost_extend_reply_keeps_the_lease_held_and_releasable(
        via_proxy: kvs.KeyValueStore, proxy: FaultProxy, direct: kvs.KeyValueStore) -> None:
    lock = via_proxy.get_lock("k", lock_timeout=5).acquire()
    # The extend's cas is applied, its reply lost: once reported as LeaseLost,
    # which marked the lock lost, so release() never reached the server.
    proxy.drop_next_reply(close=True, skip=1)  # let the lease read through, drop the cas
    with pytest.raises(exception.BackendUnavailable):
        lock.extend(5)
    assert proxy.dropped == 1
    assert lock.active and lock.state.value == "held"
    via_proxy.set("k", "still mine", lock=lock)
    lock.release()
    assert direct.lease_info("k") is None
    with direct.get_lock("k", lock_wait_timeout=0.5):  # free at once, not after expiry
        pass


def test_lost_cas_reply_on_a_re_acquire_is_retried_not_waited_out(
        via_proxy: kvs.KeyValueStore, proxy: FaultProxy) -> None:
    # A re-acquire (the retry of an acquire whose reply was lost) confirms the
    # lease with a cas.  If pymemcache resent that cas after it was applied,
    # memcached answered "exists" and the acquire reported the lease taken, so
    # the lock waited out its whole lock_wait_timeout.  Now the lost reply is
    # BackendUnavailable, which the lock retries at once.
    backend = backend_of(via_proxy)
    key = via_proxy.backend_key("k")
    assert backend.acquire_lease(key, "token", 5) is not None
    proxy.drop_next_reply(close=True, skip=2)  # add (refused), lease read, then the cas
    with pytest.raises(exception.BackendUnavailable):
        backend.acquire_lease(key, "token", 5)
    assert proxy.dropped == 1
    assert backend.acquire_lease(key, "token", 5) is not None  # still ours
