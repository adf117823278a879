"""Contract: configure(), manglers, proxies and the registry, on every backend."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

import kvs
from kvs import exception, manglers
from kvs.backends.base import Fenced
from kvs.proxy import LeaseProxy

CALLS: list[tuple[str, str]] = []


class RecordingProxy(LeaseProxy):
    """Records which writes and reads pass through it, in order."""

    label = "outer"

    def get_serialized(self, key: Any) -> Any:
        CALLS.append((self.label, "get"))
        return super().get_serialized(key)

    def plain_set(self, key: str, value: bytes, ttl: float | None) -> None:
        CALLS.append((self.label, "set"))
        super().plain_set(key, value, ttl)

    def fenced_set(self, key: str, value: bytes, token: str, ttl: float | None) -> Fenced:
        CALLS.append((self.label, "set"))
        return super().fenced_set(key, value, token, ttl)

    def plain_delete(self, key: str) -> bool:
        CALLS.append((self.label, "delete"))
        return super().plain_delete(key)

    def fenced_delete(self, key: str, token: str) -> Fenced:
        CALLS.append((self.label, "delete"))
        return super().fenced_delete(key, token)


class InnerRecordingProxy(RecordingProxy):
    label = "inner"


def _name() -> str:
    return f"cfg-{uuid.uuid4().hex[:10]}"


def test_configure_again_alike_is_a_no_op_and_differently_raises(
        backend_config: dict[str, Any]) -> None:
    store = kvs.get_key_value_store(_name())
    store.configure(**backend_config, lock_timeout=3)
    store.set("k", 1)
    store.configure(**backend_config, lock_timeout=3)  # the same: nothing happens
    assert store.get("k") == 1 and store.lock_timeout == 3
    with pytest.raises(exception.AlreadyConfigured) as info:
        store.configure(**backend_config, lock_timeout=4, secret_key="hunter2-is-secret")
    message = str(info.value)
    assert store.name in message and "lock_timeout" in message and "secret_key" in message
    assert "hunter2" not in message
    assert store.lock_timeout == 3 and store.get("k") == 1


def test_failed_configure_leaves_store_retryable(backend_config: dict[str, Any]) -> None:
    store = kvs.get_key_value_store(_name())
    with pytest.raises(exception.ConfigurationError) as info:
        store.configure(**backend_config, no_such_argument=1)
    message = str(info.value)
    assert "no_such_argument" in message and "lock_timeout" in message
    assert not store.is_configured
    with pytest.raises(exception.ConfigurationError):
        store.configure(**backend_config, proxy_list=["not.a.module.Proxy"])
    with pytest.raises(exception.ConfigurationError):
        store.configure(**backend_config, key_mangler="not callable")  # type: ignore[arg-type]
    with pytest.raises(exception.ConfigurationError):
        store.configure(**backend_config, lock_timeout=-1)
    with pytest.raises(exception.ConfigurationError):
        store.configure(**backend_config, serializer="yaml")
    assert not store.is_configured
    store.configure(**backend_config)
    store.set("k", 1)
    assert store.get("k") == 1


def test_unknown_backend_lists_known_ones() -> None:
    store = kvs.get_key_value_store(_name())
    with pytest.raises(exception.ConfigurationError) as info:
        store.configure("kvs.nosuch")
    assert "kvs.memory" in str(info.value) and "kvs.sqlite" in str(info.value)
    assert not store.is_configured


def test_unconfigured_store_raises_not_configured() -> None:
    store = kvs.get_key_value_store(_name())
    assert not store.is_configured
    for call in (lambda: store.get("k"), lambda: store.set("k", 1), lambda: store.delete("k"),
                 lambda: store.get_multi(["k"]), lambda: store.set_multi({"k": 1}),
                 lambda: store.delete_multi(["k"]), lambda: store.get_lock("k"),
                 lambda: store.update("k", lambda v: v, default=0)):
        with pytest.raises(exception.NotConfigured):
            call()


def test_registry_returns_one_store_per_name_across_threads() -> None:
    name = _name()
    seen: list[kvs.KeyValueStore] = []
    barrier = threading.Barrier(50)

    def ask() -> None:
        barrier.wait()
        seen.append(kvs.get_key_value_store(name))

    threads = [threading.Thread(target=ask) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 50 and len({id(store) for store in seen}) == 1
    assert kvs.get_key_value_store(name) is seen[0]


def test_registry_keeps_stores_alive(backend_config: dict[str, Any]) -> None:
    import gc

    name = _name()
    kvs.get_key_value_store(name).configure(**backend_config)
    gc.collect()
    assert kvs.get_key_value_store(name).is_configured


def test_kvs_region_used_only_on_creation() -> None:
    from dogpile.cache import make_region

    name = _name()
    region = make_region()
    store = kvs.get_key_value_store(name, kvs_region=region)
    assert store.region is region
    assert kvs.get_key_value_store(name, kvs_region=make_region()).region is region


def test_default_mangler_is_prefixed_sha1_unless_the_backend_keeps_plain_keys(
        make_store: Any) -> None:
    store = make_store(key_prefix="pfx")
    if store.region.backend.plain_keys:  # kvs.sqlite: no key-length limit, no hashing
        assert store.region.key_mangler("k") == "pfx:k"
    else:
        assert store.region.key_mangler("k") == "pfx:" + manglers.sha1_mangle_key("k")


def test_explicit_mangler_wins(make_store: Any) -> None:
    store = make_store(key_prefix="pfx", key_mangler=lambda k: "m-" + k)
    assert store.region.key_mangler("k") == "pfx:m-k"
    store.set("k", 1)
    assert store.get("k") == 1
    with store.get_lock("k") as lock:
        assert lock.lease_key == "pfx:m-k"


def test_mangler_disabled(make_store: Any) -> None:
    store = make_store(key_prefix="pfx", enable_key_mangler=False)
    assert store.region.key_mangler("k") == "pfx:k"
    store.set("k", 1)
    assert store.get("k") == 1


def test_default_key_prefix_is_store_name(make_store: Any) -> None:
    store = make_store(name="named-store")
    assert store.key_prefix == "named-store"
    assert store.region.key_mangler("k").startswith("named-store:")


@pytest.mark.parametrize("as_tuple", [False, True])
def test_proxies_applied_in_order_first_outermost(make_store: Any, as_tuple: bool) -> None:
    proxies: Any = [RecordingProxy, f"{__name__}.InnerRecordingProxy"]
    store = make_store(proxy_list=tuple(proxies) if as_tuple else proxies)
    CALLS.clear()
    store.set("k", 1)
    assert CALLS == [("outer", "set"), ("inner", "set")]
    CALLS.clear()
    assert store.get("k") == 1
    assert CALLS == [("outer", "get"), ("inner", "get")]
    CALLS.clear()
    with store.get_lock("k") as lock:  # locked writes pass through the proxies too
        store.set("k", 2, lock=lock)
        store.delete("k", lock=lock)
    assert ("outer", "set") in CALLS and ("inner", "delete") in CALLS
    CALLS.clear()
    assert store.update("n", lambda v: v + 1, default=0) == 1
    assert ("outer", "get") in CALLS and ("outer", "set") in CALLS


def test_non_proxy_in_proxy_list_is_an_error(backend_config: dict[str, Any]) -> None:
    store = kvs.get_key_value_store(_name())
    with pytest.raises(exception.ConfigurationError):
        store.configure(**backend_config, proxy_list=[dict])
    with pytest.raises(exception.ConfigurationError):
        store.configure(**backend_config, proxy_list=RecordingProxy)  # type: ignore[arg-type]
    assert not store.is_configured
