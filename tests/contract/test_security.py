"""Contract: security_strategy mac/encrypt refuses forged, altered and moved values."""

from __future__ import annotations

from typing import Any

import pytest

import kvs
from kvs import exception

SECRET = "correct horse battery staple"


@pytest.fixture(params=["mac", "encrypt"])
def strategy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def secure_store(make_store: Any, strategy: str) -> kvs.KeyValueStore:
    return make_store(security_strategy=strategy, secret_key=SECRET)


def _raw(store: kvs.KeyValueStore, key: str) -> tuple[Any, str]:
    backend: Any = store.region.actual_backend
    return backend, store.region.key_mangler(key)  # type: ignore[misc]


def test_values_round_trip(secure_store: kvs.KeyValueStore) -> None:
    secure_store.set("k", {"a": [1, b"x"]})
    assert secure_store.get("k") == {"a": [1, b"x"]}
    secure_store.set_multi({"m1": 1, "m2": "two"})
    assert secure_store.get_multi(["m1", "m2"]) == [1, "two"]
    assert secure_store.update("n", lambda v: v + 1, default=0) == 1
    with secure_store.get_lock("k") as lock:
        secure_store.set("k", "locked", lock=lock)
    assert secure_store.get("k") == "locked"


def test_stored_bytes_are_sealed(secure_store: kvs.KeyValueStore, strategy: str) -> None:
    secure_store.set("k", "visible-marker")
    backend, mangled = _raw(secure_store, "k")
    stored = backend.get_serialized(mangled)
    assert stored.startswith(b"kvsM1" if strategy == "mac" else b"kvsE1")
    assert (b"visible-marker" in stored) is (strategy == "mac")


def test_altered_value_is_refused(secure_store: kvs.KeyValueStore) -> None:
    secure_store.set("k", "genuine")
    backend, mangled = _raw(secure_store, "k")
    stored = bytearray(backend.get_serialized(mangled))
    stored[-1] ^= 0x01
    backend.plain_set(mangled, bytes(stored), None)
    with pytest.raises(exception.TamperedValue) as info:
        secure_store.get("k")
    assert "'k'" in str(info.value) and SECRET not in str(info.value)
    with pytest.raises(exception.TamperedValue):
        secure_store.get_multi(["k"])
    with pytest.raises(exception.TamperedValue):
        secure_store.update("k", lambda v: v)


def test_moved_value_is_refused(secure_store: kvs.KeyValueStore) -> None:
    secure_store.set("admin", True)
    secure_store.set("guest", False)
    backend, admin = _raw(secure_store, "admin")
    _, guest = _raw(secure_store, "guest")
    backend.plain_set(guest, backend.get_serialized(admin), None)
    with pytest.raises(exception.TamperedValue):
        secure_store.get("guest")
    assert secure_store.get("admin") is True


def test_forged_unsealed_value_is_refused(secure_store: kvs.KeyValueStore) -> None:
    backend, mangled = _raw(secure_store, "k")
    backend.plain_set(mangled, b'{"ct": 1.0, "v": 2}|\xa6forged', None)
    with pytest.raises(exception.TamperedValue):
        secure_store.get("k")


def test_wrong_secret_is_refused(make_store: Any, strategy: str, backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("every kvs.memory store has a space of its own")
    writer = make_store(key_prefix="shared-secure", security_strategy=strategy,
                        secret_key=SECRET)
    reader = make_store(key_prefix="shared-secure", security_strategy=strategy,
                        secret_key="another secret")
    writer.set("k", "v")
    with pytest.raises(exception.TamperedValue):
        reader.get("k")


def test_bad_security_configuration(make_store: Any) -> None:
    with pytest.raises(exception.ConfigurationError) as info:
        make_store(security_strategy="mac")
    assert "secret_key" in str(info.value)
    with pytest.raises(exception.ConfigurationError):
        make_store(security_strategy="rot13", secret_key=SECRET)
