"""Fast checks of the Redis backends: arguments, key layout, and the Lua lease
scripts run on fakeredis with Lua.  Real servers are in tests/functional."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

import kvs
from kvs import exception
from kvs.backends.base import Fenced
from kvs.backends.redis import RedisBackend, hash_tag
from kvs.backends.redis_cluster import RedisClusterBackend
from kvs.backends.redis_sentinel import RedisSentinelBackend


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client(server: fakeredis.FakeServer) -> fakeredis.FakeRedis:
    client = fakeredis.FakeRedis(server=server)
    # Without the lua extra every lease call would fail: say so up front.
    assert client.eval("return 1", 0) == 1, "fakeredis needs the [lua] extra"
    return client


@pytest.fixture
def backend(client: fakeredis.FakeRedis) -> RedisBackend:
    return RedisBackend({"client": client})


@pytest.fixture
def store(client: fakeredis.FakeRedis) -> Iterator[kvs.KeyValueStore]:
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store("fake")
        store.configure("kvs.redis", client=client, lock_timeout=5, lock_wait_timeout=5)
        yield store


# -- arguments ----------------------------------------------------------------

def test_ini_text_is_parsed_to_types() -> None:
    backend = RedisBackend({"url": "rediss://127.0.0.1:6390/2", "ssl_check_hostname": "no",
                            "retries": "2", "socket_timeout": "1.5", "max_connections": "8",
                            "health_check_interval": "15", "wait_replicas": "1"})
    assert backend.options["ssl_check_hostname"] is False
    assert backend.options["retries"] == 2 and backend.options["max_connections"] == 8
    assert backend.options["socket_timeout"] == 1.5
    assert backend.options["wait_replicas"] == 1


def test_defaults_bound_every_timeout_and_retry() -> None:
    backend = RedisBackend({"host": "127.0.0.1", "port": 6390})
    kwargs = backend.client.connection_pool.connection_kwargs  # built, not connected
    assert kwargs["socket_timeout"] == 1.0 and kwargs["socket_connect_timeout"] == 1.0
    assert kwargs["retry"].get_retries() == 0


def test_tls_arguments_reach_the_connection(tmp_path: Path) -> None:
    backend = RedisBackend({"host": "127.0.0.1", "port": 6390, "ssl_ca_certs": "ca.pem",
                            "ssl_cert_reqs": "required", "password": "pw"})
    kwargs = backend.client.connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == "ca.pem" and kwargs["ssl_cert_reqs"] == "required"
    assert "SSL" in backend.client.connection_pool.connection_class.__name__
    assert kwargs["password"] == "pw"


def test_url_credentials_and_db() -> None:
    backend = RedisBackend({"url": "redis://kvs:s3cret@127.0.0.1:6390/3"})
    kwargs = backend.client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("kvs", "s3cret", 3)
    assert backend.endpoint == "127.0.0.1:6390"  # never the credentials
    assert RedisBackend({"url": "unix:///run/redis.sock"}).endpoint == "unix:/run/redis.sock"


@pytest.mark.parametrize(("arguments", "option"), [
    ({"hots": "x"}, "hots"),
    ({"url": "http://x"}, "url"),
    ({"url": "redis://x", "host": "y"}, "url"),
    ({"url": "redis://x", "ssl_ca_certs": "ca.pem"}, "url"),
    ({"ssl": "false", "ssl_certfile": "c.pem"}, "ssl_certfile"),
    ({"ssl_cert_reqs": "maybe"}, "ssl_cert_reqs"),
    ({"socket_timeout": "0"}, "socket_timeout"),
    ({"retries": "often"}, "retries"),
    ({"client": "redis://x"}, "client"),
    ({"wait_replicas": "1", "wait_timeout": "2"}, "wait_timeout"),
])
def test_bad_arguments_raise_configuration_error(arguments: dict[str, Any], option: str) -> None:
    with pytest.raises(exception.ConfigurationError) as caught:
        RedisBackend(arguments)
    assert caught.value.context["option"] == option


def test_secret_values_are_never_echoed() -> None:
    with pytest.raises(exception.ConfigurationError) as caught:
        RedisSentinelBackend({"sentinels": "127.0.0.1:1", "sentinel_password": ["hunter2"]})
    assert "hunter2" not in str(caught.value)


def test_sentinel_arguments() -> None:
    backend = RedisSentinelBackend({
        "sentinels": "127.0.0.1:26379, [::1]:26380", "service_name": "main",
        "password": "master-pw", "sentinel_password": "sentinel-pw", "db": "2"})
    assert backend.sentinel_nodes == [("127.0.0.1", 26379), ("::1", 26380)]
    assert "127.0.0.1:26379" in backend.endpoint and "main" in backend.endpoint
    pool = backend.client.connection_pool  # built lazily; sentinels are not contacted yet
    assert pool.connection_kwargs["password"] == "master-pw"
    assert pool.connection_kwargs["db"] == 2
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel["password"] == "sentinel-pw" and sentinel["db"] == 0
    assert backend.reader is backend.client  # reads go to the master by default


@pytest.mark.parametrize(("cls", "arguments", "option"), [
    (RedisSentinelBackend, {}, "sentinels"),
    (RedisSentinelBackend, {"sentinels": "127.0.0.1"}, "sentinels"),
    (RedisSentinelBackend, {"sentinels": "h:1", "url": "redis://x"}, "url"),
    (RedisClusterBackend, {}, "startup_nodes"),
    (RedisClusterBackend, {"startup_nodes": "h:99999"}, "startup_nodes"),
    (RedisClusterBackend, {"startup_nodes": "h:1", "wait_replicas": "1"}, "wait_replicas"),
])
def test_family_argument_errors(cls: type[RedisBackend], arguments: dict[str, Any],
                                option: str) -> None:
    with pytest.raises(exception.ConfigurationError) as caught:
        cls(arguments)
    assert caught.value.context["option"] == option


def test_cluster_connects_lazily_and_reports_host() -> None:
    from tests.fixtures.redis_servers import free_port

    port = free_port()
    backend = RedisClusterBackend({"startup_nodes": [f"127.0.0.1:{port}"]})
    with pytest.raises(exception.BackendUnavailable) as caught:
        backend.get_serialized("k")
    assert f"127.0.0.1:{port}" in str(caught.value)


def test_ini_file_configures_a_redis_store(tmp_path: Path) -> None:
    path = tmp_path / "kvs.conf"
    path.write_text(
        "[store:cache]\nbackend = kvs.redis\n"
        "backend_argument = url:redis://127.0.0.1:6390/1\n"
        "backend_argument = ssl_check_hostname:no\n"
        "backend_argument = socket_timeout:0.25\n"
        "backend_argument = password:123456\n")
    with kvs.testing.isolated_stores():
        stores = kvs.configure_stores(kvs.load_config([str(path)]))
        options = stores["cache"]._region.actual_backend.options
    assert options["socket_timeout"] == 0.25 and options["ssl_check_hostname"] is False
    assert options["password"] == "123456"  # a digit-only password stays a string


# -- key layout ----------------------------------------------------------------

@pytest.mark.parametrize("key", ["s:k", "s:{k}", "}{", "{", "", "%7B", "a{b}c{d}", "\u00e9{x}"])
def test_hash_tag_has_one_brace_pair_and_one_slot(key: str) -> None:
    tag = hash_tag(key)
    assert tag[0] == "{" and tag[-1] == "}" and "{" not in tag[1:-1] and "}" not in tag[1:-1]
    names = [tag, tag + ":lease", tag + ":fence", tag + ":signal"]
    assert len({key_slot(name.encode()) for name in names}) == 1


@given(st.text(), st.text())
def test_hash_tag_is_injective(first: str, second: str) -> None:
    if first != second:
        assert hash_tag(first) != hash_tag(second)


def test_value_is_stored_as_is_under_the_mangled_key(store: kvs.KeyValueStore,
                                                     client: fakeredis.FakeRedis) -> None:
    store.set("k", "v")
    name = store.backend_key("k")  # as dogpile.cache.redis names it
    assert name.startswith("fake:") and client.exists(hash_tag(name)) == 0
    raw = client.get(name)
    assert raw is not None and raw.endswith(b"|\xa1v")  # dogpile header | msgpack "v"
    assert client.pttl(name) == -1


# -- lease scripts ---------------------------------------------------------------

def test_acquire_contention_retry_and_fences(backend: RedisBackend) -> None:
    first = backend.acquire_lease("k", "a", 5)
    assert first is not None
    assert backend.acquire_lease("k", "b", 5) is None
    assert backend.acquire_lease("k", "a", 5) == first  # a retry keeps its fence
    assert backend.release_lease("k", "b") is False
    assert backend.release_lease("k", "a") is True
    assert backend.release_lease("k", "a") is False
    second = backend.acquire_lease("k", "b", None)
    assert second is not None and second > first  # fences only ever grow
    info = backend.lease_info("k")
    assert info is not None and info.token == "b" and info.fence == second
    assert info.remaining is None
    assert backend.break_lease("k") is True and backend.lease_info("k") is None
    third = backend.acquire_lease("k", "c", 5)
    assert third is not None and third > second


def test_missing_fence_counter_is_seeded_above_earlier_fences(backend: RedisBackend) -> None:
    """An evicted or lost counter must not restart fences at 1."""
    fence = backend.acquire_lease("k", "a", 5)
    assert fence is not None and fence > 10**15  # seeded from the server clock in µs
    backend.release_lease("k", "a")
    for name in backend.client.keys("*fence*"):
        backend.client.delete(name)  # as an allkeys-lru eviction would
    again = backend.acquire_lease("k", "b", 5)
    assert again is not None and again > fence


def test_lease_ttl_is_in_milliseconds_and_never_zero(backend: RedisBackend,
                                                     client: fakeredis.FakeRedis) -> None:
    backend.acquire_lease("k", "a", 0.0004)  # rounds to 0 ms: must become 1 ms, not "forever"
    assert client.pttl("{k}:lease") in (-2, 0, 1)
    backend.acquire_lease("j", "a", 2.5)
    assert 2000 < client.pttl("{j}:lease") <= 2500


def test_lease_expires_and_fenced_write_is_refused(backend: RedisBackend) -> None:
    backend.plain_set("k", b"old", None)
    first = backend.acquire_lease("k", "a", 0.05)
    assert first is not None
    time.sleep(0.1)
    assert backend.lease_info("k") is None
    assert backend.fenced_set("k", b"late", "a", None) is Fenced.LEASE_LOST
    assert backend.fenced_delete("k", "a") is Fenced.LEASE_LOST
    assert backend.fenced_set_and_release("k", b"late", "a", None) is Fenced.LEASE_LOST
    assert backend.get_serialized("k") == b"old"
    second = backend.acquire_lease("k", "b", 5)
    assert second is not None and second > first


def test_extend_adds_time_only_for_the_holder(backend: RedisBackend,
                                              client: fakeredis.FakeRedis) -> None:
    backend.acquire_lease("k", "a", 1)
    assert backend.extend_lease("k", "b", 10) is False
    assert backend.extend_lease("k", "a", 2) is True
    assert 2500 < client.pttl("{k}:lease") <= 3000


def test_fenced_writes(backend: RedisBackend, client: fakeredis.FakeRedis) -> None:
    backend.acquire_lease("k", "a", 5)
    assert backend.fenced_delete("k", "a") is Fenced.MISSING
    assert backend.fenced_set("k", b"1", "b", None) is Fenced.LEASE_LOST
    assert backend.fenced_set("k", b"1", "a", 1.5) is Fenced.WRITTEN
    assert 1000 < client.pttl("k") <= 1500
    assert backend.fenced_delete("k", "a") is Fenced.WRITTEN
    assert backend.fenced_set_and_release("k", b"2", "a", None) is Fenced.WRITTEN
    assert backend.get_serialized("k") == b"2" and backend.lease_info("k") is None


def test_acquire_and_get(backend: RedisBackend) -> None:
    fence, stored = backend.acquire_lease_and_get("k", "a", 5)
    assert fence is not None and stored is kvs_no_value()
    backend.fenced_set("k", b"v", "a", None)
    assert backend.acquire_lease_and_get("k", "b", 5) == (None, kvs_no_value())
    assert backend.acquire_lease_and_get("k", "a", 5) == (fence, b"v")


def kvs_no_value() -> Any:
    from dogpile.cache.api import NO_VALUE

    return NO_VALUE


def test_scripts_survive_script_flush(backend: RedisBackend, client: fakeredis.FakeRedis) -> None:
    backend.acquire_lease("k", "a", 5)
    client.script_flush()
    assert backend.release_lease("k", "a") is True


def test_update_is_two_round_trips(store: kvs.KeyValueStore, client: fakeredis.FakeRedis,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    store.update("n", lambda n: n + 1, default=0)  # loads the scripts
    commands: list[str] = []
    real = client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        commands.append(str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(client, "execute_command", counting)
    assert store.update("n", lambda n: n + 1, default=0) == 2
    assert commands == ["EVALSHA", "EVALSHA"]


def test_release_signal_stays_small(backend: RedisBackend, client: fakeredis.FakeRedis) -> None:
    for token in "abcde":
        backend.acquire_lease("k", token, 5)
        backend.release_lease("k", token)
    assert client.llen("{k}:signal") == 1
    assert 0 < client.pttl("{k}:signal") <= RedisBackend.SIGNAL_TTL_MS


def test_wait_for_release_wakes_on_release(backend: RedisBackend) -> None:
    backend.acquire_lease("k", "holder", 30)
    timer = threading.Timer(0.2, backend.release_lease, args=("k", "holder"))
    timer.start()
    started = time.monotonic()
    backend.wait_for_release("k", 0.9)  # capped at half the client's socket timeout
    timer.join()
    assert backend.lease_info("k") is None
    assert time.monotonic() - started < 5  # returned on the signal, not hung


def test_wait_for_release_returns_at_once_when_free(backend: RedisBackend) -> None:
    started = time.monotonic()
    backend.wait_for_release("k", 30)
    assert time.monotonic() - started < 5


def test_wait_for_release_never_outlasts_its_timeout(backend: RedisBackend) -> None:
    backend.acquire_lease("k", "holder", 30)
    started = time.monotonic()
    backend.wait_for_release("k", 0.2)
    assert time.monotonic() - started < 2
    assert backend.lease_info("k") is not None


def test_lost_connection_is_backend_unavailable(store: kvs.KeyValueStore,
                                                server: fakeredis.FakeServer) -> None:
    store.set("k", 1)
    server.connected = False
    with pytest.raises(exception.BackendUnavailable):
        store.get("k")
    with pytest.raises(exception.BackendUnavailable):
        store.get_lock("k").acquire()
    server.connected = True
    assert store.get("k") == 1


def test_locked_writes_through_the_store(store: kvs.KeyValueStore) -> None:
    with store.get_lock("k") as lock:
        store.set("k", {"a": [1, 2]}, lock=lock, ttl=10)
    assert store.get("k") == {"a": [1, 2]}
    stale = store.get_lock("k").acquire()
    assert store.break_lock("k") is True
    with store.get_lock("k"), pytest.raises(exception.LeaseLost):
        store.set("k", "stale", lock=stale)
    assert store.get("k") == {"a": [1, 2]}
