"""Keystone's ``keystone/tests/unit/test_kvs.py`` (its last revision, January 2017), ported.

Each test states the behaviour a Keystone user relied on and checks that kvs
keeps it, or keeps the documented kvs equivalent (README, "Porting from
keystone.common.kvs").  The memcached ones run against a real memcached; the
rest on kvs.memory and kvs.sqlite.  The tests are written for kvs, not copied.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dogpile.cache.api import NO_VALUE
from dogpile.cache.proxy import ProxyBackend
from oslo_config import cfg

import kvs
import kvs.testing
from kvs import core, exception, loader
from kvs.backends.base import ArgumentSpec
from kvs.backends.memory import MemoryBackend
from kvs.backends.sqlite import SQLiteBackend

pymemcache = pytest.importorskip("pymemcache")

from kvs.backends.memcached import MemcachedBackend  # noqa: E402
from tests.fixtures.memcached_servers import MemcachedServer  # noqa: E402

HERE = __name__  # dotted path of this module, for [kvs] backends and proxy_list


# -- fixtures in the roles of Keystone's ----------------------------------------

class KVSBackendFixture(MemoryBackend):
    """A kvs.memory with a mangler of its own and one extra argument."""

    name = "kvs-port.fixture"
    arguments = {**MemoryBackend.arguments, "test_arg": ArgumentSpec("int")}

    @classmethod
    def key_mangler(cls, key: str) -> str:
        return "KVSBackend_" + key


class KVSBackendForcedKeyMangleFixture(KVSBackendFixture):
    """A backend that forces its own mangler over an explicit one."""

    use_backend_key_mangler = True

    @classmethod
    def key_mangler(cls, key: str) -> str:
        return "KVSBackendForcedKeyMangle_" + key


class LateRegisteredFixture(MemoryBackend):
    """Registered only by the [kvs] backends of a service's parsed conf."""


class RegionProxyFixture(ProxyBackend):
    """A proxy that does nothing."""


class RegionProxy2Fixture(ProxyBackend):
    """Another proxy that does nothing."""


def _sha1(key: str) -> str:
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    with kvs.testing.isolated_stores():
        yield
    kvs.testing.reset_registry()


@pytest.fixture
def keystone_backends() -> None:
    """Keystone's ``[kvs] backends`` = the two fixtures, registered as openstack.kvs.<Class>."""
    conf = cfg.ConfigOpts()
    kvs.register_opts(conf)
    conf([], project="kvs-port", default_config_files=[])
    conf.set_override("backends", [f"{HERE}.KVSBackendFixture",
                                   f"{HERE}.KVSBackendForcedKeyMangleFixture"], group="kvs")
    loader.register_extra_backends(conf)


@pytest.fixture(params=["kvs.memory", "kvs.sqlite"])
def local_config(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Configure arguments of the server-less backends Keystone's tests ran on."""
    if request.param == "kvs.sqlite":
        return {"backing_store": "kvs.sqlite", "filename": str(tmp_path / "port.sqlite3")}
    return {"backing_store": "kvs.memory"}


def _store(name: str | None = None, **config: Any) -> kvs.KeyValueStore:
    store = kvs.get_key_value_store(name or uuid.uuid4().hex)
    store.configure(**config)
    return store


# -- 1. configuration and backend names ---------------------------------------

def test_openstack_kvs_memory_is_kvs_memory_with_a_deprecation_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    name = uuid.uuid4().hex
    with caplog.at_level(logging.WARNING, logger="kvs"):
        store = _store(name, backing_store="openstack.kvs.Memory")
    assert type(store.region.actual_backend) is MemoryBackend
    assert store.region.name == name
    assert store.backend_name == "kvs.memory"
    warnings = [r.getMessage() for r in caplog.records if "openstack.kvs.Memory" in
                r.getMessage()]
    assert len(warnings) == 1 and "deprecated" in warnings[0] and "kvs.memory" in warnings[0]
    store.set("k", "v")
    assert store.get("k") == "v"


def test_openstack_kvs_memcached_is_kvs_memcached(
        memcached_server: MemcachedServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="kvs"):
        store = _store(backing_store="openstack.kvs.Memcached",
                       url=memcached_server.address)  # Keystone's name for the servers
    assert type(store.region.actual_backend) is MemcachedBackend
    assert [s.name for s in store.region.actual_backend.servers] == [memcached_server.address]
    warnings = [r.getMessage() for r in caplog.records
                if "openstack.kvs.Memcached" in r.getMessage()]
    assert len(warnings) == 1 and "kvs.memcached" in warnings[0]
    store.set("k", {"v": 1})
    assert store.get("k") == {"v": 1}


def test_url_and_servers_together_are_refused(memcached_server: MemcachedServer) -> None:
    with pytest.raises(exception.ConfigurationError, match="url") as info:
        _store(backing_store="kvs.memcached", url=memcached_server.address,
               servers=[memcached_server.address])
    assert "servers" in str(info.value)


def test_extra_arguments_reach_a_registered_backend(keystone_backends: None) -> None:
    name = uuid.uuid4().hex
    store = _store(name, backing_store="openstack.kvs.KVSBackendFixture", test_arg=100)
    backend = store.region.actual_backend
    assert isinstance(backend, KVSBackendFixture)
    assert backend.options["test_arg"] == 100
    assert store.region.name == name


def test_kvs_backends_entries_are_registered_under_keystones_names() -> None:
    conf = cfg.ConfigOpts()
    kvs.register_opts(conf)
    conf([], project="kvs-port", default_config_files=[])
    conf.set_override("backends", [f"{HERE}.KVSBackendFixture",            # Keystone's form
                                   f"{HERE}:RegionProxyFixture",          # module:Class
                                   f"port.named={HERE}:KVSBackendFixture"], group="kvs")
    loader.register_extra_backends(conf)
    loader.register_extra_backends(conf)  # again: harmless, as in Keystone
    for name in ("openstack.kvs.KVSBackendFixture", f"{HERE}.KVSBackendFixture",
                 "port.named"):
        store = _store(backing_store=name)
        assert isinstance(store.region.actual_backend, KVSBackendFixture), name


def test_two_backends_of_one_class_name_keep_their_dotted_paths(
        caplog: pytest.LogCaptureFixture) -> None:
    """Keystone's short name cannot tell them apart: neither gets it, and a 0.1 config
    listing both still loads (each under its dotted path)."""
    conf = cfg.ConfigOpts()
    kvs.register_opts(conf)
    conf([], project="kvs-port", default_config_files=[])
    first, second = f"{HERE}.KVSBackendFixture", "kvs.backends.memory.KVSBackendFixture"
    conf.set_override("backends", [first, second], group="kvs")
    entries = core.backend_entries(conf.kvs.backends)
    assert set(entries) == {first, second}
    assert "openstack.kvs.KVSBackendFixture" not in entries
    assert "openstack.kvs.KVSBackendFixture" in caplog.text


def test_a_backend_may_not_take_the_name_of_keystones_own() -> None:
    conf = cfg.ConfigOpts()
    kvs.register_opts(conf)
    conf([], project="kvs-port", default_config_files=[])
    conf.set_override("backends", [f"{HERE}.Memory"], group="kvs")
    assert list(core.backend_entries(conf.kvs.backends)) == [f"{HERE}.Memory"]
    conf.set_override("backends", [f"openstack.kvs.Memory={HERE}:Memory"], group="kvs")
    with pytest.raises(exception.ConfigurationError, match=re.escape("openstack.kvs.Memory")):
        loader.register_extra_backends(conf)


def test_a_named_entry_may_not_shadow_an_installed_backend() -> None:
    with pytest.raises(exception.ConfigurationError, match=r"kvs\.redis"):
        core.backend_entries([f"kvs.redis={HERE}:Memory"])
    assert core.backend_entries(["kvs.redis=kvs.backends.redis:RedisBackend"])


def test_kvs_backends_of_a_registered_conf_serve_configure(tmp_path: Path) -> None:
    """Keystone registered [kvs] backends on first use; kvs does at configure()."""
    ini = tmp_path / "service.conf"
    ini.write_text(f"[kvs]\nbackends = {HERE}.LateRegisteredFixture\n")
    conf = cfg.ConfigOpts()
    kvs.register_opts(conf)
    conf(["--config-file", str(ini)], project="kvs-port", default_config_files=[])
    store = _store(backing_store="openstack.kvs.LateRegisteredFixture")
    assert type(store.region.actual_backend) is LateRegisteredFixture


def test_proxies_are_applied_first_outermost() -> None:
    store = _store(backing_store="openstack.kvs.Memory",
                   proxy_list=[f"{HERE}.RegionProxyFixture", f"{HERE}.RegionProxy2Fixture"])
    assert isinstance(store.region.backend, RegionProxyFixture)
    assert isinstance(store.region.backend.proxied, RegionProxy2Fixture)
    assert isinstance(store.region.backend.proxied.proxied, MemoryBackend)
    store.set("k", "through both")
    assert store.get("k") == "through both"


# -- 2. key manglers ------------------------------------------------------------

def test_default_mangler_is_set_on_region_and_backend(local_config: dict[str, Any]) -> None:
    store = _store("mangled", **local_config)
    backend = store.region.actual_backend
    assert backend.key_mangler is store.region.key_mangler
    if isinstance(backend, SQLiteBackend):  # keys need no hashing there (README)
        assert backend.key_mangler("k") == "mangled:k"
    else:
        assert backend.key_mangler("k") == "mangled:" + _sha1("k")
    store.set("k", "v")
    assert backend.get_serialized(backend.key_mangler("k")) is not NO_VALUE
    assert store.get("k") == "v"


def test_the_backends_own_mangler_is_used_when_none_is_given(keystone_backends: None) -> None:
    store = _store("own", backing_store="openstack.kvs.KVSBackendFixture")
    assert store.region.key_mangler("foo") == "own:KVSBackend_foo"
    assert store.region.actual_backend.key_mangler is store.region.key_mangler


def test_an_explicit_mangler_beats_the_backends_own(keystone_backends: None) -> None:
    store = _store("explicit", backing_store="openstack.kvs.KVSBackendFixture",
                   key_mangler=str.upper)
    assert store.region.key_mangler("foo") == "explicit:FOO"


def test_use_backend_key_mangler_beats_an_explicit_mangler(keystone_backends: None) -> None:
    store = _store("forced", backing_store="openstack.kvs.KVSBackendForcedKeyMangleFixture",
                   key_mangler=_sha1)
    assert store.region.key_mangler("foo") == "forced:KVSBackendForcedKeyMangle_foo"
    store.set("foo", 1)
    backend = store.region.actual_backend
    assert backend.get_serialized("forced:KVSBackendForcedKeyMangle_foo") is not NO_VALUE


def test_disabled_mangler_keeps_keys_as_given(local_config: dict[str, Any]) -> None:
    store = _store("plain", enable_key_mangler=False, **local_config)
    backend = store.region.actual_backend
    # Keystone left no mangler at all; kvs keeps its key prefix and key check.
    assert store.region.key_mangler("foo bar") == "plain:foo bar"
    assert backend.key_mangler is store.region.key_mangler
    store.set("foo bar", 1)
    assert store.get("foo bar") == 1


def test_a_non_callable_mangler_is_refused(local_config: dict[str, Any]) -> None:
    name = uuid.uuid4().hex
    with pytest.raises(exception.ConfigurationError, match="key_mangler"):
        _store(name, key_mangler="Non-Callable", **local_config)
    store = kvs.get_key_value_store(name)
    assert not store.is_configured  # refused before anything: it can be retried
    store.configure(**local_config)
    store.set("k", 1)
    assert store.get("k") == 1


# -- 3. data ------------------------------------------------------------------

def test_get_set_delete(local_config: dict[str, Any]) -> None:
    store = _store(**local_config)
    value = {"complex_data_structure": uuid.uuid4().hex}
    with pytest.raises(exception.NotFound):
        store.get("bar")
    store.set("bar", value)
    returned = store.get("bar")
    assert returned == value and returned is not value
    returned["complex_data_structure"] = "changed by the caller"
    assert store.get("bar") == value  # the stored value is not the caller's object
    store.delete("bar")
    with pytest.raises(exception.NotFound):
        store.delete("bar")


def test_multi_get_set_delete(local_config: dict[str, Any]) -> None:
    store = _store(**local_config)
    store.set_multi({"foo": "value-foo", "bar": {"x": 1}})
    assert store.get_multi(["foo", "bar"]) == ["value-foo", {"x": 1}]
    store.delete_multi(["foo", "bar"])
    with pytest.raises(exception.NotFound) as info:
        store.get_multi(["foo", "bar"])
    assert sorted(info.value.keys) == ["bar", "foo"]
    for key in ("foo", "bar"):
        with pytest.raises(exception.NotFound):
            store.get(key)
    store.set("foo", "back")
    with pytest.raises(exception.NotFound) as info:  # one missing key is enough
        store.get_multi(["foo", "bar"])
    assert info.value.keys == ["bar"]


# -- 4. locks -----------------------------------------------------------------

def test_a_lock_holds_a_lease_in_the_backend_while_active(
        local_config: dict[str, Any]) -> None:
    store = _store(enable_key_mangler=False, **local_config)
    other = _store(**{**local_config, "key_prefix": store.key_prefix,
                      "enable_key_mangler": False, "lock_wait_timeout": 0.1})
    assert store.lease_info("foo") is None
    with store.get_lock("foo") as lock:
        info = store.lease_info("foo")
        assert info is not None and info.token == lock.token
        if local_config["backing_store"] == "kvs.sqlite":  # another store object, one file
            with pytest.raises(exception.LockAcquireTimeout):
                other.get_lock("foo").acquire()
    assert store.lease_info("foo") is None


def test_locking_disabled_writes_no_lease(local_config: dict[str, Any]) -> None:
    store = _store(locking=False, **local_config)
    with store.get_lock("foo") as lock:
        assert lock.active
        assert store.lease_info("foo") is None
        store.set("foo", 1, lock=lock)
    assert store.lease_info("foo") is None and store.get("foo") == 1


def test_a_write_under_an_expired_lock_raises_lock_timeout(
        local_config: dict[str, Any]) -> None:
    store = _store(lock_timeout=0.4, **local_config)
    with store.get_lock("fresh") as lock:  # well inside its timeout: written
        store.set("fresh", 1, lock=lock)
    assert store.get("fresh") == 1
    with store.get_lock("late") as lock:
        time.sleep(0.45)  # past lock_timeout (and its safety window)
        assert lock.expired
        with pytest.raises(exception.LockTimeout):
            store.set("late", 1, lock=lock)
    with pytest.raises(exception.NotFound):  # nothing was written
        store.get("late")


def test_a_lock_for_another_key_raises_value_error(local_config: dict[str, Any]) -> None:
    store = _store(**local_config)
    with store.get_lock("foo") as lock, pytest.raises(ValueError):
        store.set("bar", 1, lock=lock)
    with pytest.raises(exception.NotFound):
        store.get("bar")


def test_a_locked_write_happens_inside_the_lease(local_config: dict[str, Any]) -> None:
    store = _store(**local_config)
    with store.get_lock("foo") as lock:
        assert lock.active and store.lease_info("foo") is not None
        store.set("foo", "locked", lock=lock)
        store.delete("foo", lock=lock)
        store.set("foo", "again", lock=lock)
    assert store.lease_info("foo") is None and store.get("foo") == "again"


def test_no_lock_means_no_lease(local_config: dict[str, Any]) -> None:
    store = _store(**local_config)
    store.set("foo", 1, lock=None)
    assert store.lease_info("foo") is None and store.get("foo") == 1


# -- 5. the registry ----------------------------------------------------------

def test_one_store_per_name_configured_once(local_config: dict[str, Any]) -> None:
    name = uuid.uuid4().hex
    first, second = kvs.get_key_value_store(name), kvs.get_key_value_store(name)
    assert first is second and not first.is_configured
    first.configure(**local_config)
    assert second.is_configured
    second.configure(**local_config)  # the same configuration: nothing to do
    with pytest.raises(RuntimeError) as info:  # AlreadyConfigured is a RuntimeError
        second.configure(**local_config, lock_timeout=17)
    assert isinstance(info.value, exception.AlreadyConfigured)
    assert "lock_timeout" in str(info.value)


# -- 6. memcached (real server) -----------------------------------------------

def _memcached(server: MemcachedServer, name: str | None = None,
               **config: Any) -> kvs.KeyValueStore:
    return _store(name, backing_store="openstack.kvs.Memcached",
                  servers=[server.address], **config)


def _server_ttl(store: kvs.KeyValueStore, key: str) -> int:
    """The seconds memcached will keep ``key``'s item (-1: never expires)."""
    backend = store.region.actual_backend
    safe, server = backend._route(store.backend_key(key))
    (reply,) = backend._meta(server.client(), b"mg %s t" % safe.encode())
    assert reply.code == b"HD", f"{key!r} is not on the server"
    return reply.int_flag(b"t")


@pytest.mark.parametrize(("choice", "pooled"), [
    ("pymemcache", False), ("memcached", False), ("pooled_memcached", True)])
def test_memcached_backend_selects_a_supported_client(
        memcached_server: MemcachedServer, choice: str, pooled: bool) -> None:
    store = _memcached(memcached_server, memcached_backend=choice)
    backend = store.region.actual_backend
    assert backend.memcached_backend == choice
    assert backend.options["use_pooling"] is pooled
    store.set("k", choice)
    assert store.get("k") == choice


@pytest.mark.parametrize("choice", ["pylibmc", "bmemcached", "FakeBackend"])
def test_other_memcached_backends_are_refused_listing_the_choices(
        memcached_server: MemcachedServer, choice: str) -> None:
    name = uuid.uuid4().hex
    with pytest.raises(ValueError) as info:  # ConfigurationError is a ValueError
        _memcached(memcached_server, name, memcached_backend=choice)
    assert isinstance(info.value, exception.ConfigurationError)
    message = str(info.value)
    assert choice in message
    for valid in ("pymemcache", "memcached", "pooled_memcached"):
        assert valid in message
    assert not kvs.get_key_value_store(name).is_configured  # can be retried
    # Built directly, as Keystone's TestMemcachedBackend did:
    with pytest.raises(ValueError, match=choice):
        MemcachedBackend({"servers": [memcached_server.address], "memcached_backend": choice})


def test_pooled_memcached_contradicting_use_pooling_is_refused(
        memcached_server: MemcachedServer) -> None:
    with pytest.raises(exception.ConfigurationError, match="use_pooling"):
        _memcached(memcached_server, memcached_backend="pooled_memcached", use_pooling=False)


def test_no_expiry_keys_are_hashed_with_the_stores_mangler(
        memcached_server: MemcachedServer) -> None:
    store = _memcached(memcached_server, no_expiry_keys=["test_key"])
    backend = store.region.actual_backend
    assert backend.key_mangler is store.region.key_mangler
    assert backend.raw_no_expiry_keys == {"test_key"}
    assert backend.no_expiry_hashed_keys == {store.region.key_mangler("test_key")}

    def new_mangler(key: str) -> str:
        return "_mangled_key_" + key

    backend.key_mangler = new_mangler
    assert backend.no_expiry_hashed_keys == {"_mangled_key_test_key"}
    assert backend.raw_no_expiry_keys == {"test_key"}
    backend.key_mangler = None
    assert backend.key_mangler is None
    assert backend.no_expiry_hashed_keys == backend.raw_no_expiry_keys


def test_a_non_callable_mangler_set_on_the_memcached_backend_is_refused(
        memcached_server: MemcachedServer) -> None:
    store = _memcached(memcached_server, no_expiry_keys=["test_key"])
    backend = store.region.actual_backend
    hashed = backend.no_expiry_hashed_keys
    with pytest.raises(exception.ConfigurationError, match="key_mangler") as info:
        backend.key_mangler = "Non-Callable"
    assert isinstance(info.value, ValueError) and "str" in str(info.value)
    assert backend.key_mangler is store.region.key_mangler  # unchanged
    assert backend.no_expiry_hashed_keys == hashed


@pytest.mark.parametrize("expiry", [{"memcached_expire_time": 86400},
                                    {"default_ttl": 86400},
                                    {"memcached_expire_time": 3600, "default_ttl": 86400}])
def test_no_expiry_keys_never_expire_whatever_the_default_ttl(
        memcached_server: MemcachedServer, expiry: dict[str, int]) -> None:
    store = _memcached(memcached_server, no_expiry_keys=["revocation-list"], **expiry)
    expected = expiry.get("default_ttl", expiry.get("memcached_expire_time"))
    store.set("token", "t")
    store.set("revocation-list", ["r"])
    assert expected - 5 <= _server_ttl(store, "token") <= expected + 5
    assert _server_ttl(store, "revocation-list") == -1
    store.set_multi({"token": "t2", "revocation-list": ["r2"]})
    assert _server_ttl(store, "token") > 0 and _server_ttl(store, "revocation-list") == -1
    with store.get_lock("revocation-list") as lock:  # a locked write, as the token driver did
        store.set("revocation-list", ["r3"], lock=lock)
    assert _server_ttl(store, "revocation-list") == -1
    store.update("revocation-list", lambda value: [*value, "r4"])
    assert _server_ttl(store, "revocation-list") == -1
    assert store.get("revocation-list") == ["r3", "r4"]
    store.set("revocation-list", ["r5"], ttl=1)  # listed keys ignore even a per-call ttl
    assert _server_ttl(store, "revocation-list") == -1


def test_memcached_expire_time_is_the_default_server_ttl(
        memcached_server: MemcachedServer) -> None:
    store = _memcached(memcached_server, memcached_expire_time=86400)
    store.set("foo", "value")
    assert 86390 <= _server_ttl(store, "foo") <= 86402
    store.set_multi({"foo": 1, "bar": 2})
    assert _server_ttl(store, "bar") > 86000
    store.set("short", 1, ttl=60)  # a per-call ttl beats it
    assert _server_ttl(store, "short") <= 62


def test_max_lock_attempts_bounds_acquire(memcached_server: MemcachedServer) -> None:
    store = _memcached(memcached_server, max_lock_attempts=1, lock_wait_timeout=30)
    assert store.region.actual_backend.max_lock_attempts == 1
    with store.get_lock("k") as lock:  # one attempt is enough for a free key
        store.set("k", "testing", lock=lock)
    with store.get_lock("k") as first:
        store.set("k", "lock", lock=first)
        started = time.monotonic()
        with pytest.raises(exception.LockAcquireTimeout) as info:
            store.get_lock("k").acquire()  # a second lock of a held key: one try, then up
        assert time.monotonic() - started < 5  # not the 30 s lock_wait_timeout
        assert "1 attempt" in str(info.value)
    assert store.get("k") == "lock"


def test_lock_wait_timeout_ends_acquire_before_max_lock_attempts(
        memcached_server: MemcachedServer) -> None:
    store = _memcached(memcached_server, max_lock_attempts=100000, lock_wait_timeout=0.3)
    with store.get_lock("k"):
        started = time.monotonic()
        with pytest.raises(exception.LockAcquireTimeout):
            store.get_lock("k").acquire()
        assert time.monotonic() - started < 3


def test_max_lock_attempts_waits_for_the_holder_in_between(
        memcached_server: MemcachedServer) -> None:
    store = _memcached(memcached_server, max_lock_attempts=50, lock_wait_timeout=10,
                       lock_timeout=0.5)
    store.get_lock("k").acquire()  # never released: ends with its lease
    started = time.monotonic()
    with store.get_lock("k") as lock:
        store.set("k", "after the lease ended", lock=lock)
    assert time.monotonic() - started < 8
    assert store.get("k") == "after the lease ended"


def test_max_lock_attempts_is_validated(memcached_server: MemcachedServer) -> None:
    with pytest.raises(exception.ConfigurationError, match="max_lock_attempts"):
        _memcached(memcached_server, max_lock_attempts=0)


def test_keystones_memcached_configuration_from_an_ini_file(
        tmp_path: Path, memcached_server: MemcachedServer) -> None:
    ini = tmp_path / "kvs.conf"
    ini.write_text(textwrap.dedent(f"""\
        [store:token-driver]
        backend = openstack.kvs.Memcached
        backend_argument = url:{memcached_server.address}
        backend_argument = memcached_backend:pooled_memcached
        backend_argument = memcached_expire_time:3600
        backend_argument = no_expiry_keys:revocation-list
        backend_argument = max_lock_attempts:15
        """))
    store = kvs.configure_stores(kvs.load_config([str(ini)]))["token-driver"]
    backend = store.region.actual_backend
    assert isinstance(backend, MemcachedBackend) and backend.options["use_pooling"]
    assert backend.max_lock_attempts == 15
    store.set("token-1", "t")
    store.set("revocation-list", [])
    assert 0 < _server_ttl(store, "token-1") <= 3602
    assert _server_ttl(store, "revocation-list") == -1


# -- 7. stock backends: distributed locks by default, as Keystone passed them ----

def test_stock_memcached_gets_a_distributed_lock_with_the_leases_timeout(
        memcached_server: MemcachedServer) -> None:
    store = _store(backing_store="dogpile.cache.pymemcache", url=memcached_server.address,
                   lock_timeout=5)
    backend = store.region.actual_backend
    assert backend.distributed_lock is True
    assert backend.lock_timeout >= 6  # the lease's timeout, padded as Keystone padded it
    explicit = _store(backing_store="dogpile.cache.pymemcache", url=memcached_server.address,
                      distributed_lock=False)
    assert explicit.region.actual_backend.distributed_lock is False


_HOLDER = """
import sys, time, kvs
store = kvs.get_key_value_store(sys.argv[1])
store.configure("dogpile.cache.pymemcache", url=sys.argv[2], key_prefix=sys.argv[1],
                lock_timeout=10)
with store.get_lock("shared") as lock:
    store.set("shared", "held by the other process", lock=lock)
    open(sys.argv[3], "w").close()
    time.sleep(float(sys.argv[4]))
"""


def test_stock_memcached_locks_exclude_another_process(
        memcached_server: MemcachedServer, tmp_path: Path) -> None:
    prefix = f"stock-{uuid.uuid4().hex[:8]}"
    holding = tmp_path / "holding"
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, prefix, memcached_server.address, str(holding), "2"],
        cwd=Path(__file__).resolve().parents[2], env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.monotonic() + 30
        while not holding.exists():
            assert child.poll() is None, "the holder process died"
            assert time.monotonic() < deadline, "the holder never took the lock"
            time.sleep(0.02)
        store = _store(prefix, backing_store="dogpile.cache.pymemcache",
                       url=memcached_server.address, key_prefix=prefix, lock_timeout=10,
                       lock_wait_timeout=0.5)
        with pytest.raises(exception.LockAcquireTimeout):
            store.get_lock("shared").acquire()
        assert store.get("shared") == "held by the other process"
        with store.get_lock("shared", lock_wait_timeout=20) as lock:  # once it released
            store.set("shared", "mine now", lock=lock)
        assert child.wait(20) == 0
        assert store.get("shared") == "mine now"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


# -- 8. names -------------------------------------------------------------------

def test_keystones_exported_names_are_where_an_import_change_finds_them() -> None:
    import kvs.core

    # keystone.common.kvs exported these four; kvs.core keeps the module's names.
    for module in (kvs, kvs.core):
        assert module.KeyValueStore is kvs.core.KeyValueStore
        assert module.KeyValueStoreLock is kvs.KeyValueStoreLock
        assert module.get_key_value_store is kvs.core.get_key_value_store
        assert module.LockTimeout is exception.LockTimeout
    assert "LockTimeout" in kvs.__all__
