"""Contract: reads, writes, TTLs and bad input, on every backend."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

import kvs
from kvs import exception

ROUND_TRIP_VALUES: list[Any] = [
    None, True, False, 0, 1, -7, 2**62, 2**64, -(2**100), 10**40, 0.0, 3.25, -1e300,
    "", "text", "ünïcødé ✓",
    b"", b"\x00\xffbytes", [], [1, "two", None, [3.5, b"x"]], {},
    {"nested": {"deep": [{"x": 1}, {"y": [True, False]}]}, "b": b"\x01"},
]


@pytest.mark.parametrize("value", ROUND_TRIP_VALUES, ids=repr)
def test_values_round_trip_with_exact_types(store: kvs.KeyValueStore, value: Any) -> None:
    store.set("k", value)
    got = store.get("k")
    assert got == value
    assert type(got) is type(value)


def test_tuples_come_back_as_lists(store: kvs.KeyValueStore) -> None:
    store.set("k", (1, (2, 3)))
    assert store.get("k") == [1, [2, 3]]


@pytest.mark.parametrize("falsy", [None, 0, 0.0, "", b"", [], {}, False], ids=repr)
def test_falsy_values_are_never_missing(store: kvs.KeyValueStore, falsy: Any) -> None:
    store.set("k", falsy)
    assert store.get("k") == falsy
    assert store.exists("k")
    assert store.get_multi(["k"]) == [falsy]


def test_missing_key_raises_not_found_naming_key(store: kvs.KeyValueStore) -> None:
    with pytest.raises(exception.NotFound) as info:
        store.get("absent")
    assert isinstance(info.value, KeyError)
    assert "absent" in str(info.value)
    assert info.value.keys == ["absent"]


def test_returned_value_is_a_copy(store: kvs.KeyValueStore) -> None:
    original = {"list": [1, 2], "map": {"a": 1}}
    store.set("k", original)
    original["list"].append(99)
    got = store.get("k")
    assert got == {"list": [1, 2], "map": {"a": 1}}
    got["list"].append(3)
    got["map"]["b"] = 2
    assert store.get("k") == {"list": [1, 2], "map": {"a": 1}}


def test_overwrite(store: kvs.KeyValueStore) -> None:
    store.set("k", 1)
    store.set("k", "two")
    assert store.get("k") == "two"


def test_get_multi_in_key_order(store: kvs.KeyValueStore) -> None:
    store.set_multi({f"k{i}": i for i in range(20)})
    keys = [f"k{i}" for i in (5, 1, 19, 0, 5)]
    assert store.get_multi(keys) == [5, 1, 19, 0, 5]
    assert store.get_multi([]) == []


def test_get_multi_lists_every_missing_key(store: kvs.KeyValueStore) -> None:
    store.set("present", 1)
    with pytest.raises(exception.NotFound) as info:
        store.get_multi(["gone1", "present", "gone2"])
    assert info.value.keys == ["gone1", "gone2"]


def test_delete(store: kvs.KeyValueStore) -> None:
    store.set("k", 1)
    store.delete("k")
    with pytest.raises(exception.NotFound):
        store.get("k")
    with pytest.raises(exception.NotFound):
        store.delete("k")


def test_delete_multi_is_idempotent(store: kvs.KeyValueStore) -> None:
    store.set_multi({"a": 1, "b": 2, "c": 3})
    store.delete_multi(["a", "b", "never-existed"])
    store.delete_multi(["a", "b"])
    store.delete_multi([])
    assert not store.exists("a") and not store.exists("b")
    assert store.get("c") == 3


def _wait_until_missing(store: kvs.KeyValueStore, key: str, limit: float = 6.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not store.exists(key):
            return True
        time.sleep(0.05)
    return False


def test_ttl_expires_key(store: kvs.KeyValueStore) -> None:
    store.set("short", "v", ttl=1)
    store.set("long", "v")
    assert store.get("short") == "v"
    assert _wait_until_missing(store, "short")
    assert store.get("long") == "v"
    with pytest.raises(exception.NotFound):
        store.get_multi(["short"])


def test_set_multi_ttl(store: kvs.KeyValueStore) -> None:
    store.set_multi({"a": 1, "b": 2}, ttl=1)
    assert store.get_multi(["a", "b"]) == [1, 2]
    assert _wait_until_missing(store, "a") and _wait_until_missing(store, "b")


def test_default_ttl(make_store: Any) -> None:
    store = make_store(default_ttl=1)
    store.set("k", 1)
    store.set("kept-longer", 1, ttl=60)
    assert store.get("k") == 1
    assert _wait_until_missing(store, "k")
    assert store.get("kept-longer") == 1


@pytest.mark.parametrize("ttl", [0, -1, "soon"])
def test_bad_ttl_is_refused(store: kvs.KeyValueStore, ttl: Any) -> None:
    with pytest.raises(exception.ConfigurationError):
        store.set("k", 1, ttl=ttl)
    assert not store.exists("k")


@pytest.mark.parametrize("bad_key", [b"bytes", 1, None, ("t",), object(), 1.5])
def test_non_str_keys_raise_type_error(store: kvs.KeyValueStore, bad_key: Any) -> None:
    for call in (lambda: store.get(bad_key), lambda: store.set(bad_key, 1),
                 lambda: store.delete(bad_key), lambda: store.get_multi([bad_key]),
                 lambda: store.set_multi({bad_key: 1}), lambda: store.get_lock(bad_key),
                 lambda: store.update(bad_key, lambda v: v, default=0)):
        with pytest.raises(exception.InvalidKey) as info:
            call()
        assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("key", [
    "with space", "new\nline", "tab\tand\x00nul\x7f", "ünïcødé ключ 鍵 🔑", "",
    "x" * 10_000, "{braces}", "a:b:c", "%s %d",
], ids=lambda k: repr(k)[:30])
def test_awkward_keys_round_trip(store: kvs.KeyValueStore, key: str) -> None:
    store.set(key, key)
    assert store.get(key) == key
    assert store.get_multi([key]) == [key]
    store.update(key, lambda v: v + "!")
    assert store.get(key) == key + "!"
    store.delete(key)
    assert not store.exists(key)


@pytest.mark.parametrize("make_value", [
    lambda: (lambda: 1),
    lambda: threading.Lock(),
    lambda: socket.socket(),
    lambda: {"nested": object()},
    lambda: {"a set": {1, 2}},
], ids=["lambda", "lock", "socket", "object", "set"])
def test_unserializable_value_is_refused_and_old_value_kept(
        store: kvs.KeyValueStore, make_value: Any) -> None:
    store.set("k", "old")
    value = make_value()
    try:
        with pytest.raises(exception.SerializationError) as info:
            store.set("k", value)
        assert isinstance(info.value, TypeError)
        assert "'k'" in str(info.value)
        with pytest.raises(exception.SerializationError):
            store.set_multi({"k": value, "other": 1})
        with pytest.raises(exception.SerializationError):
            store.update("k", lambda _old: value)
    finally:
        if isinstance(value, socket.socket):
            value.close()
    assert store.get("k") == "old"
    assert not store.exists("other")


def test_oversized_value_is_refused_and_old_value_kept(make_store: Any) -> None:
    store = make_store(max_value_size=2000)
    store.set("k", "old")
    with pytest.raises(exception.ValueTooLarge) as info:
        store.set("k", "x" * 5000)
    assert "'k'" in str(info.value)
    with pytest.raises(exception.ValueTooLarge):
        store.set_multi({"k": "x" * 5000, "small": 1})
    with pytest.raises(exception.ValueTooLarge):
        store.update("k", lambda _old: "x" * 5000)
    with store.get_lock("k") as lock, pytest.raises(exception.ValueTooLarge):
        store.set("k", "x" * 5000, lock=lock)
    assert store.get("k") == "old"
    assert not store.exists("small")


def test_corrupt_bytes_raise_corrupt_value(store: kvs.KeyValueStore) -> None:
    store.set("k", "fine")
    backend: Any = store.region.actual_backend
    mangled = store.region.key_mangler("k")  # type: ignore[misc]
    for garbage in (b"\xff\xfe\x00garbage", b'{"ct": 1, "v": 2}|\xc1', b"no separator"):
        backend.plain_set(mangled, garbage, None)
        with pytest.raises(exception.CorruptValue) as info:
            store.get("k")
        assert "'k'" in str(info.value)
        with pytest.raises(exception.CorruptValue):
            store.update("k", lambda v: v)


def test_get_multi_names_the_damaged_key(store: kvs.KeyValueStore) -> None:
    store.set_multi({"good": 1, "bad": 2, "also": 3})
    backend: Any = store.region.actual_backend
    backend.plain_set(store.region.key_mangler("bad"), b"no separator", None)  # type: ignore[misc]
    with pytest.raises(exception.CorruptValue) as info:
        store.get_multi(["good", "bad", "also"])
    assert info.value.context["key"] == "bad" and "'bad'" in str(info.value)
    assert store.get_multi(["good", "also"]) == [1, 3]


def test_awkward_keys_in_one_get_multi(store: kvs.KeyValueStore) -> None:
    keys = ["with space", "new\nline", "tab\tand\x00nul\x7f", "ünïcødé ключ 鍵 🔑", "",
            "{braces}", "a:b:c", "%s %d", 'q"uote', "back\\slash", "plain"]
    store.set_multi({key: index for index, key in enumerate(keys)})
    assert store.get_multi(keys) == list(range(len(keys)))
    assert store.get_multi([*reversed(keys), "plain"]) == [*reversed(range(len(keys))), 10]
    with pytest.raises(exception.NotFound) as info:
        store.get_multi(["plain", "nope{", "%gone"])
    assert info.value.keys == ["nope{", "%gone"]


def test_key_prefix_isolates_stores(make_store: Any) -> None:
    one, two = make_store(), make_store()
    one.set("shared", "one")
    two.set("shared", "two")
    assert one.get("shared") == "one"
    assert two.get("shared") == "two"
    one.delete("shared")
    assert two.get("shared") == "two"


def test_same_key_prefix_shares_keys(make_store: Any, backend_name: str) -> None:
    if backend_name == "memory":
        pytest.skip("every kvs.memory store has a space of its own")
    one = make_store(key_prefix="common")
    two = make_store(key_prefix="common")
    one.set("k", 1)
    assert two.get("k") == 1


def test_ping(store: kvs.KeyValueStore) -> None:
    store.ping()


def test_many_threads_share_one_store(store: kvs.KeyValueStore) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                store.set(f"t{n}-{i}", [n, i])
                assert store.get(f"t{n}-{i}") == [n, i]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.get_multi([f"t{n}-19" for n in range(8)]) == [[n, 19] for n in range(8)]


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_nesting_up_to_the_limit_round_trips_and_deeper_is_refused(
        store: kvs.KeyValueStore) -> None:
    from kvs.serializers import MAX_DEPTH

    def depth(value: Any) -> int:  # iterative: == on 1,023 levels would recurse too deep
        levels = 0
        while isinstance(value, list):
            levels += 1
            value = value[0] if value else None
        return levels

    limit = MAX_DEPTH["msgpack"]
    store.set("deep", _nested(limit))
    assert depth(store.get("deep")) == limit
    # One level more: the packer would write it, but nobody could read it back.
    with pytest.raises(exception.SerializationError, match="deeper than"):
        store.set("deep", _nested(limit + 1))
    assert depth(store.get("deep")) == limit
