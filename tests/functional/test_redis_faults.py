"""Bad input and faults on real Redis servers: unreachable, silent, wrong password,
killed and restarted, script cache flushed, Sentinel failover, WAIT shortfall,
and cross-slot multi-key calls on a cluster.

Timing bounds here are generous "does not hang" limits, never measurements.
"""

from __future__ import annotations

import contextlib
import socket
import time
import traceback
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis.crc import key_slot

import kvs
from kvs import exception
from kvs.backends.redis import hash_tag
from tests.fixtures.redis import ACL_PASSWORD, ACL_USER, ServerFactory
from tests.fixtures.redis_servers import Cluster, RedisServer, free_port, wait_until


@pytest.fixture
def stores() -> Iterator[Any]:
    """Build configured stores with unique names in an isolated registry."""
    with kvs.testing.isolated_stores():
        def make(backing_store: str = "kvs.redis", **arguments: Any) -> kvs.KeyValueStore:
            store = kvs.get_key_value_store(f"f-{uuid.uuid4().hex[:10]}")
            store.configure(backing_store, **arguments)
            return store

        yield make


def _everything_said(error: BaseException) -> str:
    """The message, repr and full chained traceback an operator could ever see."""
    return "\n".join([str(error), repr(error),
                      *traceback.format_exception(type(error), error, error.__traceback__)])


def test_unreachable_server_fails_fast_naming_host_and_port(stores: Any) -> None:
    port = free_port()  # nobody listens there
    store = stores(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(exception.BackendUnavailable) as caught:
        store.get("k")
    assert time.monotonic() - started < 0.5 + 1.0
    assert f"127.0.0.1:{port}" in str(caught.value)


@contextlib.contextmanager
def _silent_listener() -> Iterator[int]:
    """A loopback port whose accept queue is full: a connect hangs there (SYN dropped)."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        filler.connect(("127.0.0.1", port))  # takes the only backlog slot
        yield port


def test_connect_timeout_bounds_a_hanging_connect(stores: Any) -> None:
    with _silent_listener() as port:
        store = stores(url=f"redis://127.0.0.1:{port}/0", socket_connect_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(exception.BackendUnavailable) as caught:
            store.set("k", 1)
        elapsed = time.monotonic() - started
    assert elapsed < 0.3 + 1.0
    assert f"127.0.0.1:{port}" in str(caught.value) and "timed out" in str(caught.value)


def test_wrong_password_never_shows_the_password(stores: Any,
                                                 redis_acl_server: RedisServer) -> None:
    wrong = "not-the-Passw0rd-4242"
    store = stores(host="127.0.0.1", port=redis_acl_server.port, username=ACL_USER,
                   password=wrong)
    with pytest.raises(exception.BackendUnavailable) as caught:
        store.set("k", 1)
    said = _everything_said(caught.value)
    assert wrong not in said and ACL_PASSWORD not in said
    assert redis_acl_server.address in str(caught.value)
    assert "authentication" in str(caught.value) and ACL_USER in str(caught.value)


def test_wrong_password_in_url_is_not_shown(stores: Any, redis_acl_server: RedisServer) -> None:
    wrong = "url-Secret-9876"
    store = stores(url=f"redis://{ACL_USER}:{wrong}@{redis_acl_server.address}/0")
    with pytest.raises(exception.BackendUnavailable) as caught:
        store.get("k")
    assert wrong not in _everything_said(caught.value)


def test_missing_password_on_acl_server(stores: Any, redis_acl_server: RedisServer) -> None:
    store = stores(host="127.0.0.1", port=redis_acl_server.port)
    with pytest.raises(exception.BackendUnavailable) as caught:
        store.get("k")
    assert redis_acl_server.address in str(caught.value)


def test_acl_without_permission_is_a_clear_error(stores: Any,
                                                 redis_acl_server: RedisServer) -> None:
    # A user that may read and write but not run scripts: leases must say so.
    admin = redis_acl_server.client()
    admin.acl_setuser("no-scripts", enabled=True, passwords=["+scripts-pw"], keys=["*"],
                      commands=["+@all", "-@scripting"], reset=True)
    store = stores(host="127.0.0.1", port=redis_acl_server.port, username="no-scripts",
                   password="scripts-pw")
    store.set("k", 1)
    with pytest.raises(exception.BackendUnavailable) as caught:
        store.get_lock("k").acquire()
    assert "scripts-pw" not in _everything_said(caught.value)
    assert "NoPermission" in str(caught.value)


def test_tls_without_client_certificate_is_refused(stores: Any, redis_tls_server: RedisServer,
                                                   redis_certificates: Any) -> None:
    store = stores(host="127.0.0.1", port=redis_tls_server.port, ssl=True,
                   ssl_ca_certs=str(redis_certificates.ca))
    with pytest.raises(exception.BackendUnavailable) as caught:
        store.get("k")
    assert redis_tls_server.address in str(caught.value)


def test_tls_with_host_and_port_arguments(stores: Any, redis_tls_server: RedisServer,
                                          redis_certificates: Any) -> None:
    store = stores(host="127.0.0.1", port=redis_tls_server.port, ssl="yes",
                   ssl_cert_reqs="required", **redis_certificates.client_kwargs())
    assert store.update("n", lambda n: n + 1, default=0) == 1


def test_plain_client_on_tls_port_is_a_clear_error(stores: Any,
                                                   redis_tls_server: RedisServer) -> None:
    store = stores(url=f"redis://{redis_tls_server.address}/0")
    with pytest.raises(exception.BackendUnavailable) as caught:
        store.get("k")
    assert redis_tls_server.address in str(caught.value)


def test_killed_server_then_recovery_without_restarting(
        stores: Any, redis_servers_factory: ServerFactory) -> None:
    server = redis_servers_factory.standalone()
    store = stores(url=f"redis://{server.address}/0")
    store.set("k", "before")
    with store.get_lock("held"):
        pass
    server.kill()
    for call in (lambda: store.get("k"), lambda: store.set("k", 1),
                 lambda: store.get_lock("k").acquire()):
        with pytest.raises(exception.BackendUnavailable) as caught:
            call()
        assert server.address in str(caught.value)
    server.start()  # same port, empty data (no persistence)
    wait_until(lambda: server.client().ping(), 10, "restarted server")
    store.set("k", "after")  # the same store object: stale connections are replaced
    assert store.get("k") == "after"
    assert store.update("n", lambda n: n + 1, default=0) == 1  # scripts reloaded


def test_scripts_survive_script_flush(stores: Any, redis_server: RedisServer) -> None:
    store = stores(url=f"redis://{redis_server.address}/0")
    lock = store.get_lock("k").acquire()
    redis_server.client().script_flush()
    store.set("k", "v", lock=lock)
    lock.release()
    redis_server.client().script_flush()
    assert store.update("k", lambda v: v + "w") == "vw"


def test_sentinel_failover_keeps_serving(stores: Any,
                                         redis_servers_factory: ServerFactory) -> None:
    group = redis_servers_factory.sentinel_group()
    arguments = {"sentinels": group.addresses, "service_name": group.service}
    store = stores("kvs.redis_sentinel", **arguments)
    durable = stores("kvs.redis_sentinel", **arguments, wait_replicas=1, wait_timeout=3,
                     socket_timeout=5, key_prefix=store.key_prefix)
    durable.set("k", "replicated")  # WAIT: the replica has it before set() returns
    assert store.update("n", lambda n: n + 1, default=0) == 1
    old = group.master_address()
    group.master.kill()

    def serving() -> bool:
        try:
            store.set("after", "failover")
        except exception.BackendUnavailable:
            return False
        return True

    wait_until(serving, 60, "the store to serve through the promoted replica")
    assert group.master_address() == group.replica.address != old
    assert store.get("k") == "replicated"
    assert store.update("n", lambda n: n + 1, default=0) == 2
    with store.get_lock("k") as lock:
        store.set("k", "locked", lock=lock)
    assert store.get("k") == "locked"
    # No replica is left: a WAIT-ing write lands on the new master but says so.
    with pytest.raises(exception.BackendUnavailable) as caught:
        durable.set("k", "alone")
    assert "only 0 of 1 replicas" in str(caught.value)
    assert store.get("k") == "alone"


def test_wait_replicas_shortfall_is_reported(stores: Any, redis_sentinel_group: Any) -> None:
    store = stores("kvs.redis_sentinel", sentinels=redis_sentinel_group.addresses,
                   service_name=redis_sentinel_group.service, wait_replicas=2, wait_timeout=0.2)
    with pytest.raises(exception.BackendUnavailable) as caught:
        store.set("k", 1)
    assert "only 1 of 2 replicas" in str(caught.value)
    assert redis_sentinel_group.master.client().get(store.backend_key("k")) is not None


def test_cluster_multi_key_calls_span_slots(stores: Any, redis_cluster_nodes: Cluster) -> None:
    store = stores("kvs.redis_cluster", startup_nodes=",".join(redis_cluster_nodes.addresses))
    keys = [f"key-{index}" for index in range(40)]
    slots = {key_slot(hash_tag(store.backend_key(key)).encode()) for key in keys}
    assert len(slots) > 30  # spread over the cluster, not one slot
    store.set_multi({key: index for index, key in enumerate(keys)})
    assert store.get_multi(keys) == list(range(40))
    store.set_multi({key: -index for index, key in enumerate(keys[:10])}, ttl=30)
    assert store.get_multi(list(reversed(keys[:10]))) == [-index for index in range(9, -1, -1)]
    nodes = {node.address: node.client().dbsize() for node in redis_cluster_nodes.nodes}
    assert sum(1 for size in nodes.values() if size) == 3  # every master holds some
    store.delete_multi(keys)
    with pytest.raises(exception.NotFound) as caught:
        store.get_multi(keys[:3])
    assert sorted(caught.value.keys) == sorted(keys[:3])
