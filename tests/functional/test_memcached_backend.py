"""kvs.memcached against real servers: keys, sizes, TTLs, leases, TLS, configuration.

The contract suite (tests/contract) already runs on one server, three servers
and TLS; these tests cover what is particular to memcached.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from pymemcache.client.base import Client

import kvs
from kvs import exception
from kvs.backends.memcached import ITEM_OVERHEAD, MemcachedBackend
from tests.fixtures.memcached_servers import Certificates, MemcachedServer, ServerFactory


def _store(config: dict[str, Any], **overrides: Any) -> kvs.KeyValueStore:
    store = kvs.get_key_value_store(f"mc-{uuid.uuid4().hex[:10]}")
    store.configure(**{**config, **overrides})
    return store


def _backend(store: kvs.KeyValueStore) -> MemcachedBackend:
    backend = store.region.actual_backend
    assert isinstance(backend, MemcachedBackend)
    return backend


def _raw(server: MemcachedServer) -> Client:
    return Client(("127.0.0.1", server.port), default_noreply=False, timeout=5,
                  connect_timeout=5)


def _mangled(store: kvs.KeyValueStore, key: str) -> str:
    mangler = store.region.key_mangler
    assert mangler is not None
    return mangler(key)


# -- keys -------------------------------------------------------------------

UNSAFE_KEYS = ["k" * 400, "has space", "tab\there", "line\r\nbreak", "nul\x00byte",
               "caf\u00e9 \u2603", "~l:imitates-a-lease", ""]


def test_unsafe_keys_round_trip_without_a_mangler(memcached_backend_config: dict[str, Any],
                                                  memcached_server: MemcachedServer) -> None:
    store = _store(memcached_backend_config, enable_key_mangler=False)
    for index, key in enumerate(UNSAFE_KEYS):
        store.set(key, index)
    assert store.get_multi(UNSAFE_KEYS) == list(range(len(UNSAFE_KEYS)))
    for index, key in enumerate(UNSAFE_KEYS):
        assert store.get(key) == index
        with store.get_lock(key) as lock:
            store.set(key, -index, lock=lock)
        assert store.get(key) == -index
        # What reached memcached is the safe item name.
        data_key, _, _ = MemcachedBackend.item_keys(_mangled(store, key))
        assert _raw(memcached_server).get(data_key) is not None
    store.delete_multi(UNSAFE_KEYS)
    assert not any(store.exists(key) for key in UNSAFE_KEYS)


def test_long_keys_that_differ_late_stay_distinct(
        memcached_backend_config: dict[str, Any]) -> None:
    store = _store(memcached_backend_config, enable_key_mangler=False)
    base = "x" * 300
    store.set(base + "1", "one")
    store.set(base + "2", "two")
    assert store.get(base + "1") == "one" and store.get(base + "2") == "two"


# -- values and sizes ---------------------------------------------------------

def test_values_are_stored_as_the_stores_bytes(memcached_backend_config: dict[str, Any],
                                               memcached_server: MemcachedServer) -> None:
    store = _store(memcached_backend_config, serializer="json")
    store.set("k", {"a": [1, 2]})
    data_key, _, _ = MemcachedBackend.item_keys(_mangled(store, "k"))
    raw = _raw(memcached_server).get(data_key)
    assert raw.endswith(b'|{"a":[1,2]}')  # dogpile's metadata|payload, no pickle
    assert raw.startswith(b'{"ct":')


ITEM_SIZE = 2 * 1024 * 1024


def test_value_too_large_is_refused_before_writing(
        memcached_servers_factory: ServerFactory) -> None:
    # A server with a 2 MiB item limit (not the default 1 MiB): the backend
    # asks the server for its limit.
    server = memcached_servers_factory.start(extra=["-I", "2m"])
    store = _store({"backing_store": "kvs.memcached", "servers": [server.address]})
    store.set("k", b"old")
    data_key, _, _ = MemcachedBackend.item_keys(_mangled(store, "k"))
    limit = ITEM_SIZE - ITEM_OVERHEAD - len(data_key)
    # At the backend: exactly the limit fits, one byte more is refused.
    backend = _backend(store)
    other = _mangled(store, "other")
    fits = b"x" * (ITEM_SIZE - ITEM_OVERHEAD - len(MemcachedBackend.item_keys(other)[0]))
    backend.set_serialized(other, fits)
    assert backend.get_serialized(other) == fits
    with pytest.raises(exception.ValueTooLarge):
        backend.set_serialized(other, fits + b"y")
    assert backend.get_serialized(other) == fits
    # Through the store, with the user's key in the message.
    store.set("k", b"old")
    with pytest.raises(exception.ValueTooLarge) as info:
        store.set("k", b"x" * (limit + 1))
    assert server.address in str(info.value) and "'k'" in str(info.value)
    assert store.get("k") == b"old"
    with pytest.raises(exception.ValueTooLarge):
        store.set_multi({"a": b"small", "k": b"x" * (limit + 1)})
    assert store.get("k") == b"old" and not store.exists("a")
    with store.get_lock("k") as lock, pytest.raises(exception.ValueTooLarge):
        store.set("k", b"x" * (limit + 1), lock=lock)
    assert store.get("k") == b"old"


def test_memcached_itself_drops_the_old_value_on_an_oversized_set(
        memcached_server: MemcachedServer) -> None:
    """Why the size check must come first: the server deletes on a failed set."""
    raw = _raw(memcached_server)
    key = f"raw-{uuid.uuid4().hex}"
    raw.set(key, b"old")
    with pytest.raises(Exception, match="too large"):
        raw.set(key, b"x" * (2 * 1024 * 1024))
    assert raw.get(key) is None


# -- time -----------------------------------------------------------------------

def test_sub_second_ttl_is_rounded_up_not_to_zero(
        memcached_backend_config: dict[str, Any]) -> None:
    store = _store(memcached_backend_config)
    store.set("k", "v", ttl=0.2)
    store.set_multi({"a": 1}, ttl=0.2)
    # memcached would keep an item with expiry 0 forever; 0.2 must not become 0,
    # nor expire before 0.2 s (the server clock ticks in whole seconds).
    assert store.get("k") == "v" and store.get("a") == 1
    deadline = time.monotonic() + 5
    while (store.exists("k") or store.exists("a")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not store.exists("k") and not store.exists("a")


def test_memcached_expire_time_is_a_store_wide_server_ttl(
        memcached_backend_config: dict[str, Any]) -> None:
    store = _store(memcached_backend_config, memcached_expire_time=1)
    store.set("k", "v")
    store.set("kept", "v", ttl=60)
    deadline = time.monotonic() + 5
    while store.exists("k") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not store.exists("k") and store.get("kept") == "v"


def test_long_memcached_expire_time_is_computed_per_write(
        memcached_backend_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond 30 days memcached takes an absolute time: it must be 'now' at each write."""
    import kvs.backends.memcached as module

    store = _store(memcached_backend_config, memcached_expire_time=31 * 86400)
    backend = _backend(store)
    first = backend._data_expire(None)
    real_time = module.time.time
    monkeypatch.setattr(module.time, "time", lambda: real_time() + 40 * 86400)
    later = backend._data_expire(None)
    assert later - first >= 40 * 86400 - 5
    monkeypatch.undo()
    store.set("k", "v")  # written with an absolute expiry in the future
    assert store.get("k") == "v"


# -- leases -------------------------------------------------------------------


def test_small_extends_do_not_grow_the_lease(memcached_backend_config: dict[str, Any]) -> None:
    """Ten extends of 0.1 s add one second on the server, not ten."""
    store = _store(memcached_backend_config, lock_timeout=3)
    with store.get_lock("k") as lock:
        before = store.lease_info("k")
        assert before is not None and before.remaining is not None
        for _ in range(10):
            lock.extend(0.1)
        after = store.lease_info("k")
        assert after is not None and after.remaining is not None
        assert after.remaining <= before.remaining + 1.5
        store.set("k", "still mine", lock=lock)

def test_contended_add_is_refused(memcached_backend_config: dict[str, Any]) -> None:
    """With noreply, add() would "succeed" for both; here the second must fail."""
    store = _store(memcached_backend_config)
    backend = _backend(store)
    key = _mangled(store, "k")
    assert backend.acquire_lease(key, "first", 30) is not None
    assert backend.acquire_lease(key, "second", 30) is None
    info = backend.lease_info(key)
    assert info is not None and info.token == "first"


def test_lease_items_live_with_their_key(memcached_multi_backend_config: dict[str, Any],
                                         memcached_servers: list[MemcachedServer]) -> None:
    store = _store(memcached_multi_backend_config)
    backend = _backend(store)
    by_address = {server.address: server for server in memcached_servers}
    for index in range(12):
        key = f"k{index}"
        store.set(key, index)
        with store.get_lock(key):
            home = by_address[backend.server_for(_mangled(store, key)).name]
            for item in MemcachedBackend.item_keys(_mangled(store, key)):
                assert _raw(home).get(item) is not None
                for other in memcached_servers:
                    if other is not home:
                        assert _raw(other).get(item) is None


def test_fenced_write_refused_inside_the_safety_margin(
        memcached_backend_config: dict[str, Any], memcached_server: MemcachedServer) -> None:
    store = _store(memcached_backend_config)
    backend = _backend(store)
    key = _mangled(store, "k")
    store.set("k", "before")
    assert backend.acquire_lease(key, "tok", 0.1) is not None
    _, lease_key, _ = MemcachedBackend.item_keys(key)
    raw = _raw(memcached_server)
    # Wait (without bumping LRU concerns: this server is roomy) until the
    # server says one tick is left: less than the 0.5 s margin is guaranteed.
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        reply = raw.raw_command(f"mg {lease_key} t\r\nmn", "MN\r\n")
        if reply.startswith(b"HD t1"):
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"lease never reached its last second: {reply!r}")
    assert backend.fenced_set(key, b"late", "tok", None).name == "LEASE_LOST"
    assert backend.fenced_delete(key, "tok").name == "LEASE_LOST"
    assert store.get("k") == "before"
    assert backend.release_lease(key, "tok") is True  # releasing needs no margin


def test_release_and_extend_check_the_owner(memcached_backend_config: dict[str, Any]) -> None:
    store = _store(memcached_backend_config)
    backend = _backend(store)
    key = _mangled(store, "k")
    assert backend.acquire_lease(key, "mine", 5) is not None
    assert backend.release_lease(key, "not-mine") is False
    assert backend.extend_lease(key, "not-mine", 60) is False
    info = backend.lease_info(key)
    assert info is not None and info.token == "mine" and info.remaining == 5
    assert backend.extend_lease(key, "mine", 10) is True
    info = backend.lease_info(key)
    assert info is not None and 14 <= (info.remaining or 0) <= 15
    assert backend.release_lease(key, "mine") is True
    assert backend.release_lease(key, "mine") is False
    assert backend.extend_lease(key, "mine", 1) is False


def test_fences_survive_a_lost_counter(memcached_backend_config: dict[str, Any],
                                       memcached_server: MemcachedServer) -> None:
    store = _store(memcached_backend_config)
    with store.get_lock("k") as first:
        pass
    _, _, fence_key = MemcachedBackend.item_keys(_mangled(store, "k"))
    _raw(memcached_server).delete(fence_key)  # as an eviction would
    with store.get_lock("k") as second:
        pass
    assert first.fence is not None and second.fence is not None
    assert second.fence > first.fence


def test_pooled_clients_from_many_threads(memcached_backend_config: dict[str, Any]) -> None:
    store = _store(memcached_backend_config, use_pooling=True, max_pool_size=4,
                   lock_wait_timeout=30)

    def work() -> None:
        for _ in range(20):
            store.update("counter", lambda value: value + 1, default=0)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert store.get("counter") == 120


# -- the hot calls, written on pymemcache's socket ------------------------------

#: Values from empty to many reads long (RECV_SIZE is 64 KiB), with protocol-like bytes.
SIZES = [0, 1, 100, 65_530, 65_536, 200_000, 900_000]


def _hot_calls_round_trip(store: kvs.KeyValueStore) -> None:
    values = {f"v{size}": "x\r\nEND\r\n" * (size // 7) for size in SIZES}
    for key, value in values.items():
        store.set(key, value)
        assert store.get(key) == value
    assert store.get_multi(list(values)) == list(values.values())
    store.set_multi({key: value[::-1] for key, value in values.items()})
    assert store.get_multi([*values, *values]) == [value[::-1] for value in values.values()] * 2
    with pytest.raises(exception.NotFound) as info:
        store.get_multi(["v0", "missing", "v1"])
    assert info.value.keys == ["missing"]


@pytest.mark.parametrize("pooling", [False, True])
def test_hot_calls_round_trip_values_of_every_size(memcached_backend_config: dict[str, Any],
                                                  pooling: bool) -> None:
    _hot_calls_round_trip(_store(memcached_backend_config, use_pooling=pooling))


def test_hot_calls_round_trip_over_tls(memcached_tls_backend_config: dict[str, Any]) -> None:
    _hot_calls_round_trip(_store(memcached_tls_backend_config))


def test_hot_calls_round_trip_on_three_servers(
        memcached_multi_backend_config: dict[str, Any]) -> None:
    store = _store(memcached_multi_backend_config)
    keys = [f"k{index}" for index in range(100)]
    store.set_multi({key: key * 3 for key in keys})
    assert store.get_multi(keys) == [key * 3 for key in keys]
    assert len({_backend(store).server_for(_mangled(store, key)).name for key in keys}) == 3


def test_hot_calls_on_threads_keep_their_own_connections(
        memcached_backend_config: dict[str, Any]) -> None:
    store = _store(memcached_backend_config)
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for index in range(200):
                key = f"t{worker}:{index % 7}"
                store.set(key, [worker, index])
                assert store.get(key) == [worker, index]
                assert store.get_multi([key, key]) == [[worker, index]] * 2
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures


# -- TLS ----------------------------------------------------------------------

def test_tls_with_an_untrusted_ca_is_unavailable_naming_the_server(
        memcached_tls_server: MemcachedServer, memcached_certificates: Certificates,
        tmp_path: Path) -> None:
    other = Certificates(tmp_path / "other-ca")
    args = memcached_certificates.backend_args()
    args["tls_ca_certs"] = str(other.ca)
    store = _store({"backing_store": "kvs.memcached",
                    "servers": [memcached_tls_server.address], **args})
    with pytest.raises(exception.BackendUnavailable) as info:
        store.set("k", 1)
    assert memcached_tls_server.address in str(info.value)


def test_tls_server_refuses_a_client_without_certificate(
        memcached_tls_server: MemcachedServer, memcached_certificates: Certificates) -> None:
    store = _store({"backing_store": "kvs.memcached", "servers": [memcached_tls_server.address],
                    "tls_ca_certs": str(memcached_certificates.ca), "timeout": 2})
    with pytest.raises(exception.BackendUnavailable) as info:
        store.set("k", 1)
        store.get("k")
    assert memcached_tls_server.address in str(info.value)


def test_plain_client_cannot_talk_to_the_tls_server(
        memcached_tls_server: MemcachedServer) -> None:
    store = _store({"backing_store": "kvs.memcached", "servers": [memcached_tls_server.address],
                    "timeout": 2})
    with pytest.raises(exception.BackendUnavailable):
        store.set("k", 1)


# -- configuration from an ini file ------------------------------------------

def test_configured_from_an_ini_file(tmp_path: Path, memcached_servers: list[MemcachedServer],
                                     memcached_certificates: Certificates) -> None:
    addresses = ", ".join(server.address for server in memcached_servers)
    ini = tmp_path / "kvs.conf"
    ini.write_text(f"""
[store:cache]
backend = kvs.memcached
backend_argument = servers:{addresses}
backend_argument = connect_timeout:0.5
backend_argument = timeout:0.5
backend_argument = use_pooling:yes
backend_argument = max_pool_size:8
backend_argument = retry_attempts:2
backend_argument = retry_delay:0.01
backend_argument = dead_timeout:0
backend_argument = memcached_expire_time:3600
backend_argument = lease_safety_margin:0.25
lock_timeout = 2
""")
    conf = kvs.load_config([str(ini)])
    stores = kvs.configure_stores(conf)
    store = stores["cache"]
    backend = _backend(store)
    assert [server.name for server in backend.servers] == [s.address for s in memcached_servers]
    assert backend.options["use_pooling"] is True and backend.options["retry_attempts"] == 2
    store.set("k", "v")
    with store.get_lock("k") as lock:
        store.set("k", "w", lock=lock)
    assert store.get("k") == "w"


def test_unknown_ini_argument_is_a_configuration_error(
        tmp_path: Path, memcached_server: MemcachedServer) -> None:
    ini = tmp_path / "kvs.conf"
    ini.write_text(f"""
[store:bad]
backend = kvs.memcached
backend_argument = servers:{memcached_server.address}
backend_argument = hashclient_dead_timeout:5
""")
    conf = kvs.load_config([str(ini)])
    with pytest.raises(exception.ConfigurationError) as info:
        kvs.configure_stores(conf)
    assert "hashclient_dead_timeout" in str(info.value)


def test_extend_bookkeeping_of_lost_leases_does_not_pile_up(
        memcached_backend_config: dict[str, Any]) -> None:
    # A lease marked lost skips the backend at release: its sub-second extend
    # credit must still be dropped (here: by the refused write), and an
    # operator's break drops it too.
    prefix = f"credit-{uuid.uuid4().hex[:8]}"
    holder = kvs.get_key_value_store(f"{prefix}-a")
    holder.configure(**memcached_backend_config, key_prefix=prefix, lock_timeout=5)
    other = kvs.get_key_value_store(f"{prefix}-b")  # another process, as far as leases go
    other.configure(**memcached_backend_config, key_prefix=prefix, lock_timeout=5)
    backend: Any = holder.region.actual_backend
    for n in range(300):
        lock = holder.get_lock(f"k{n}").acquire()
        lock.extend(0.5)  # owed: half a second, not yet sent to the server
        other.break_lock(f"k{n}")
        with pytest.raises(exception.LeaseLost):
            holder.set(f"k{n}", 1, lock=lock)
        lock.release()  # lost: no backend call
    assert len(backend._extend_credit) == 0
    lock = holder.get_lock("mine").acquire()
    lock.extend(0.5)
    assert len(backend._extend_credit) == 1
    holder.break_lock("mine")  # this process's own break
    assert len(backend._extend_credit) == 0
