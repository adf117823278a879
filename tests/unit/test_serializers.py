"""Codecs: exact round trips, refusals, and foreign bytes."""

from __future__ import annotations

import msgpack
import pytest

from kvs import exception, serializers


@pytest.mark.parametrize("value", [2**64, -(2**64) - 1, 10**100, [2**70, {"k": -(2**90)}]])
def test_msgpack_keeps_ints_of_any_size(value: object) -> None:
    codec = serializers.get_serializer("msgpack")
    assert codec.loads(codec.dumps(value)) == value


@pytest.mark.parametrize("value", [{1: "a"}, {None: 1}, [{"ok": {2: "nested"}}], b"bytes"])
def test_json_refuses_what_it_would_change(value: object) -> None:
    with pytest.raises(exception.SerializationError):
        serializers.get_serializer("json").dumps(value)


def test_unknown_msgpack_extension_is_corrupt() -> None:
    import msgpack

    codec = serializers.get_serializer("msgpack")
    foreign = msgpack.packb(msgpack.ExtType(42, b"x"))
    loads = serializers.checked_loads(codec)
    with pytest.raises(exception.CorruptValue):
        loads(foreign)


def test_unknown_serializer_lists_known_ones() -> None:
    with pytest.raises(exception.ConfigurationError) as info:
        serializers.get_serializer("yaml")
    assert "msgpack" in str(info.value) and "json" in str(info.value)


def test_json_nesting_limit_is_checked_before_writing() -> None:
    from kvs import exception
    from kvs.serializers import MAX_DEPTH, JSONSerializer

    codec = JSONSerializer()
    value: list = []
    for _ in range(MAX_DEPTH["json"] - 1):
        value = [value]
    assert codec.loads(codec.dumps(value)) is not None  # 512 levels: fine
    with pytest.raises(exception.SerializationError, match="deeper than 512"):
        codec.dumps([value])


def test_exact_msgpack_keeps_types_or_refuses_them() -> None:
    from kvs.serializers import exact_dumps, exact_loads

    value = {"t": (1, (2, [3])), "b": b"x", "n": None, "big": -(2 ** 70)}
    back = exact_loads(exact_dumps(value))
    assert back == value and type(back["t"]) is tuple and type(back["t"][1]) is tuple
    inexact_values = (bytearray(b"x"), memoryview(b"x"), {1}, [bytearray()],
                      {"k": (memoryview(b""),)})
    for inexact in inexact_values:
        with pytest.raises(exception.SerializationError):
            exact_dumps(inexact)


def test_store_reads_tuples_written_by_a_plain_region_as_lists() -> None:
    from kvs.serializers import MsgpackSerializer, exact_dumps

    assert MsgpackSerializer().loads(exact_dumps({"t": (1, (2,))})) == {"t": [1, [2]]}


@pytest.mark.parametrize("name", ["msgpack", "json", "pickle"])
def test_the_header_is_dogpile_metadata_with_a_float_creation_time(name: str) -> None:
    import json
    import time

    codec = serializers.get_serializer(name)
    before = time.time()
    data = codec.pack({"a": [1, 2]})
    after = time.time()
    head, _, payload = data.partition(b"|")  # as dogpile's region reads it
    metadata = json.loads(head)
    assert metadata["v"] == serializers.DOGPILE_VALUE_VERSION
    assert type(metadata["ct"]) is float
    assert before - 1e-6 <= metadata["ct"] <= after + 1e-6
    assert codec.loads(payload) == {"a": [1, 2]} == codec.unpack(data)


@pytest.mark.parametrize("foreign", [b"", b"|", b"{|x", b"x}|\x01", b"{}", b"{}\x01",
                                     b"{" + b" " * 126 + b"}|\x01", b"no separator"])
def test_bytes_without_a_metadata_header_are_corrupt(foreign: bytes) -> None:
    codec = serializers.get_serializer("msgpack")
    with pytest.raises(exception.CorruptValue):
        codec.unpack(foreign)
    with pytest.raises(exception.CorruptValue):
        codec.unpack(foreign + b"\x00" * 70000)  # the view path of large values


def test_a_dogpile_region_applies_expiry_and_invalidate_to_kvs_values() -> None:
    import time

    from dogpile.cache.api import NO_VALUE

    import kvs
    import kvs.testing

    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store("header-region")
        store.configure("kvs.memory")
        region = store.region  # dogpile's own reads: json.loads of the header
        store.set("k", 1)
        assert region.get("k", expiration_time=0.3) == 1
        time.sleep(0.35)
        assert region.get("k", expiration_time=0.3) is NO_VALUE
        assert region.get("k") == 1
        region.invalidate(hard=True)
        assert region.get("k") is NO_VALUE  # written before invalidate()
        time.sleep(0.01)
        store.set("k", 2)
        assert region.get("k") == 2  # written after it


def test_unpack_many_equals_unpack_of_each() -> None:
    codec = serializers.get_serializer("msgpack")
    values = [{"a": 1}, "x" * 70_000, b"\x00" * 70_000, 2**70, [1, [2]], None, ""]
    items = [codec.pack(value) for value in values]
    foreign = b'{"ct": 1.5, "v": 2}|' + msgpack.packb("dogpile")  # a longer header
    assert codec.unpack_many(items) == values
    assert codec.unpack_many([*items, foreign]) == [*values, "dogpile"]
    assert codec.unpack_many([bytearray(item) for item in items]) == values
    assert codec.unpack_many([]) == []


@pytest.mark.parametrize("damage", ["cut", "extra", "borrow", "no header", "bar in header"])
def test_unpack_many_never_lets_values_share_bytes(damage: str) -> None:
    codec = serializers.get_serializer("msgpack")
    first, second = codec.pack([1, 2, 3]), codec.pack("abc")
    items = {
        "cut": [first[:-1], second],
        "extra": [first + b"\x01", second],
        # the byte cut from the first would complete it at the start of the second
        "borrow": [first[:-1], b"\x03" + second],
        "no header": [first, msgpack.packb("abc")],
        "bar in header": [first, b"{" + b"|" * (first.index(b"|") - 2) + b"}|" + b"\xc1"],
    }[damage]
    with pytest.raises(exception.CorruptValue):
        codec.unpack_many(items)
