"""TLS fails closed: a server whose certificate the client cannot verify gets no data.

The TLS servers (tests/fixtures) present a certificate signed by a throwaway
test CA and require client certificates.  Here the client offers a valid
client certificate but trusts the wrong CA, or none beyond the system's
(verification is on by default).  Every call must fail with
BackendUnavailable naming the server and saying that the certificate could
not be verified, keep failing (no fallback to plaintext or to no
verification), and nothing may reach the server.  memcached with an explicit
wrong CA is also in tests/functional/test_memcached_backend.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvs
import kvs.testing
from kvs import exception
from tests.fixtures import common, memcached_servers, redis_servers


@pytest.fixture
def stores() -> Iterator[Any]:
    with kvs.testing.isolated_stores():
        def make(**config: Any) -> kvs.KeyValueStore:
            store = kvs.get_key_value_store(f"tls-{uuid.uuid4().hex[:10]}")
            store.configure(**config)
            return store

        yield make


@pytest.fixture(scope="module")
def stranger_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA file of another, unrelated test CA."""
    if common.OPENSSL is None:
        pytest.skip("openssl is not installed (run `make servers`)")
    return redis_servers.Certificates(tmp_path_factory.mktemp("stranger-ca")).ca


def assert_refused(store: kvs.KeyValueStore, address: str) -> None:
    """Every kind of call fails, twice, naming the server and the certificate."""
    for _ in range(2):
        for call in (lambda: store.set("k", 1), lambda: store.get("k"),
                     lambda: store.get_lock("k").acquire()):
            with pytest.raises(exception.BackendUnavailable) as info:
                call()
            message = str(info.value)
            assert address in message
            assert "certificate" in message.lower() or "CERTIFICATE" in message, message


@pytest.mark.parametrize("trust", ["stranger", "system"])
def test_redis_refuses_a_server_it_cannot_verify(
        stores: Any, redis_tls_server: redis_servers.RedisServer,
        redis_certificates: redis_servers.Certificates, stranger_ca: Path,
        trust: str) -> None:
    arguments: dict[str, Any] = {"ssl_certfile": str(redis_certificates.client_cert),
                                 "ssl_keyfile": str(redis_certificates.client_key)}
    if trust == "stranger":
        arguments["ssl_ca_certs"] = str(stranger_ca)
    store = stores(backing_store="kvs.redis", url=f"rediss://{redis_tls_server.address}/0",
                   **arguments)
    assert_refused(store, redis_tls_server.address)
    client = redis_tls_server.client()  # the test's own, trusting the right CA
    try:
        assert list(client.scan_iter(match=f"*{store.key_prefix}*")) == []
    finally:
        client.close()


def test_memcached_verifies_by_default(
        stores: Any, memcached_tls_server: memcached_servers.MemcachedServer,
        memcached_certificates: memcached_servers.Certificates) -> None:
    # A client certificate but no CA: only the system's CAs are trusted.
    store = stores(backing_store="kvs.memcached", servers=[memcached_tls_server.address],
                   tls_enabled=True, tls_certfile=str(memcached_certificates.client_cert),
                   tls_keyfile=str(memcached_certificates.client_key), timeout=2)
    assert_refused(store, memcached_tls_server.address)


def test_memcached_with_a_stranger_ca_says_why(
        stores: Any, memcached_tls_server: memcached_servers.MemcachedServer,
        memcached_certificates: memcached_servers.Certificates, stranger_ca: Path) -> None:
    store = stores(backing_store="kvs.memcached", servers=[memcached_tls_server.address],
                   tls_ca_certs=str(stranger_ca),
                   tls_certfile=str(memcached_certificates.client_cert),
                   tls_keyfile=str(memcached_certificates.client_key), timeout=2)
    assert_refused(store, memcached_tls_server.address)


def test_verified_connection_works(stores: Any, redis_tls_server: redis_servers.RedisServer,
                                   redis_certificates: redis_servers.Certificates) -> None:
    """The control: the same settings with the right CA do connect."""
    store = stores(backing_store="kvs.redis", url=f"rediss://{redis_tls_server.address}/0",
                   **redis_certificates.client_kwargs())
    with store.get_lock("k") as lock:
        store.set("k", 1, lock=lock)
    assert store.get("k") == 1
