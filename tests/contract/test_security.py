"""Contract: security_strategy mac/encrypt refuses forged, altered and moved values."""

from __future__ import annotations

import time
import uuid
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
    assert stored.startswith(b"kvsM2" if strategy == "mac" else b"kvsE2")
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


def test_wrong_secret_cannot_find_or_open_values(make_store: Any, strategy: str,
                                                 backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("every kvs.memory store has a space of its own")
    prefix = f"shared-secure-{uuid.uuid4().hex[:8]}"
    writer = make_store(key_prefix=prefix, security_strategy=strategy, secret_key=SECRET)
    reader = make_store(key_prefix=prefix, security_strategy=strategy,
                        secret_key="another secret")
    writer.set("k", "v")
    with pytest.raises(exception.NotFound):  # key names are keyed by the secret
        reader.get("k")
    backend, written = _raw(writer, "k")
    _, read = _raw(reader, "k")
    backend.plain_set(read, backend.get_serialized(written), None)  # copied across
    with pytest.raises(exception.TamperedValue):
        reader.get("k")


def test_replayed_expired_value_is_refused(secure_store: kvs.KeyValueStore,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # An attacker keeps a sealed {'role': 'admin'} written with a TTL; after it
    # was replaced and expired they write the old bytes back with no TTL.
    import kvs.security

    monkeypatch.setattr(kvs.security, "EXPIRY_GRACE", 0.05)  # keep the test short
    secure_store.set("grant", {"role": "admin"}, ttl=0.2)
    backend, mangled = _raw(secure_store, "grant")
    kept = backend.get_serialized(mangled)
    secure_store.set("grant", {"role": "guest"}, ttl=0.2)
    time.sleep(0.4)  # past the sealed deadline plus the grace allowed
    backend.plain_set(mangled, kept, None)
    with pytest.raises(exception.TamperedValue, match="past its sealed expiry"):
        secure_store.get("grant")
    secure_store.set("grant", {"role": "guest"})  # without a TTL: no deadline to pass
    assert secure_store.get("grant") == {"role": "guest"}


def test_a_value_just_past_its_deadline_reads_as_missing(secure_store: kvs.KeyValueStore) -> None:
    # memcached keeps a 0.3 s value for up to 2 s: an honest late read is
    # NotFound, never TamperedValue.
    secure_store.set("short", "lived", ttl=0.3)
    time.sleep(0.5)
    assert not secure_store.exists("short")
    with pytest.raises(exception.NotFound):
        secure_store.get("short")


def test_key_names_are_keyed_by_the_secret(make_store: Any, strategy: str) -> None:
    from kvs import manglers

    store = make_store(key_prefix="keyed", security_strategy=strategy, secret_key=SECRET)
    name = store.backend_key("session:alice")
    assert name.startswith("keyed:")
    assert name != "keyed:" + manglers.sha1_mangle_key("session:alice")  # not guessable
    assert len(name) == len("keyed:") + 64


def test_secret_rotation(make_store: Any, strategy: str, backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("every kvs.memory store has a space of its own")
    prefix = f"rotating-{uuid.uuid4().hex[:8]}"
    old = make_store(key_prefix=prefix, security_strategy=strategy, secret_key="old")
    old.set("k", "sealed with old")
    # Step 1: the new secret first, the old one still listed.
    new = make_store(key_prefix=prefix, security_strategy=strategy, secret_keys=["new", "old"])
    assert new.backend_key("k") == old.backend_key("k")  # names derive from the oldest
    assert new.get("k") == "sealed with old"
    new.set("k2", "sealed with new")
    assert new.get("k2") == "sealed with new"
    with pytest.raises(exception.TamperedValue):  # not-yet-rotated readers refuse it
        old.get("k2")
    assert "new" not in repr(new) and "old" not in repr(new.region.backend)


def test_bad_security_configuration_names_the_option(make_store: Any) -> None:
    for bad in ([], [""], "", [1], None):
        with pytest.raises(exception.ConfigurationError) as info:
            make_store(security_strategy="mac", secret_keys=bad)
        assert info.value.context["option"] in ("secret_key", "secret_keys")
    with pytest.raises(exception.ConfigurationError):
        make_store(security_strategy="mac", secret_key=SECRET, secret_keys=[SECRET])


def test_bad_security_configuration(make_store: Any) -> None:
    with pytest.raises(exception.ConfigurationError) as info:
        make_store(security_strategy="mac")
    assert "secret_key" in str(info.value)
    with pytest.raises(exception.ConfigurationError):
        make_store(security_strategy="rot13", secret_key=SECRET)
