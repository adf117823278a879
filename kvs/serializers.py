"""Value codecs.

A store serializes every value before it reaches a backend, with one of:

``msgpack`` (the default)
    None, bool, int (any size: beyond 64 bits as an extension type), float,
    str, bytes, list and dict round-trip with their exact types; tuples come
    back as lists.  Safe: decoding never runs code.
``json``
    Like msgpack but without bytes (a bytes value raises
    :class:`~kvs.exception.SerializationError`) and with unbounded ints; dict
    keys must be str.  Readable with any JSON tool.
``pickle``
    Any picklable object.  **Only by explicit choice**: unpickling runs code,
    so anyone who can write to the backend can run code in your process.

The bytes a backend stores use dogpile.cache's wire format,
``<json metadata>|<payload>``, so a region configured by hand can read them.
The metadata kvs writes is ``{"ct":<µs since the epoch>e-6,"v":2}``: see
:func:`header`.
"""

from __future__ import annotations

import json
import operator
import pickle
import threading
import time
from collections.abc import Callable
from itertools import repeat
from typing import Any

import msgpack

from kvs import exception

#: dogpile.cache's ``region.value_version``: the metadata version we write.
DOGPILE_VALUE_VERSION = 2


class Serializer:
    """One named codec: ``dumps(value) -> bytes`` and ``loads(bytes) -> value``."""

    name = "abstract"

    def dumps(self, value: Any) -> bytes:
        raise NotImplementedError

    def encode(self, value: Any) -> bytes | memoryview:
        """``dumps``, possibly as a view: what ``pack`` appends to the header."""
        return self.dumps(value)

    def loads(self, data: bytes | memoryview) -> Any:
        raise NotImplementedError

    def pack(self, value: Any) -> bytes:
        """Encode ``value`` in dogpile's wire format (``metadata|payload``)."""
        return header() + self.encode(value)

    def unpack(self, data: bytes) -> Any:
        """Decode one stored value (``metadata|payload``); CorruptValue on foreign bytes.

        The metadata header is checked for shape only: kvs does not use its
        creation time, and parsing it as JSON would cost more than the payload.
        """
        try:
            return self.loads(_payload(data))
        except exception.CorruptValue:
            raise
        except Exception as exc:  # every decoder has its own exception zoo
            raise _undecodable(self.name, exc) from None

    def unpack_many(self, items: list[bytes]) -> list[Any]:
        """:meth:`unpack` of every item, in order."""
        unpack = self.unpack
        return [unpack(item) for item in items]


#: Payloads at least this long are decoded from a view instead of a copy.
_VIEW_FROM = 65536


def _payload(data: bytes) -> bytes | memoryview:
    """The payload after dogpile's metadata header ``{...}|``, checked for shape."""
    end = data.find(b"|", 0, 128)
    if end < 2 or data[0] != 0x7B or data[end - 1] != 0x7D:  # b"{...}|"
        raise exception.CorruptValue("stored bytes are not a kvs value (no metadata header)")
    return data[end + 1:] if len(data) < _VIEW_FROM else memoryview(data)[end + 1:]


def _undecodable(codec: str, exc: BaseException) -> exception.CorruptValue:
    return exception.CorruptValue(
        f"stored bytes cannot be decoded with {codec}: {type(exc).__name__}")


#: msgpack extension type for ints beyond 64 bits, stored as decimal ASCII.
_BIG_INT = 1


def _msgpack_default(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return msgpack.ExtType(_BIG_INT, str(value).encode("ascii"))
    raise TypeError(f"{type(value).__name__} is not serializable")


def _msgpack_ext(code: int, data: bytes) -> Any:
    if code == _BIG_INT:
        return int(data.decode("ascii"))
    if code == _TUPLE:  # written by a plain dogpile region (exact msgpack): a list here
        return list(msgpack.unpackb(data, raw=False, strict_map_key=False,
                                    ext_hook=_msgpack_ext))
    raise ValueError(f"unknown msgpack extension type {code}")


# -- exact msgpack: every value comes back with the type it had -------------------
#
# Used where a value must not change type on the way: memoized results
# (kvs.memoize) and dogpile regions without a serializer of their own on kvs
# backends (kvs.backends.base).  Store values keep the stored format above.

#: msgpack extension type of a tuple in the exact encoding (1 is a big int).
_TUPLE = 2


def _exact_default(value: Any) -> Any:
    if type(value) is tuple:
        return msgpack.ExtType(_TUPLE, _exact_pack(list(value)))
    if type(value) is int:  # beyond 64 bits
        return msgpack.ExtType(_BIG_INT, str(value).encode("ascii"))
    raise TypeError(f"a {type(value).__name__} would not come back as a "
                    f"{type(value).__name__}")


def _exact_pack(value: Any) -> bytes:
    # strict_types: subclasses (and tuples) reach _exact_default instead of being
    # written as their base type, which would change the value's type.
    return msgpack.packb(value, use_bin_type=True, strict_types=True,  # type: ignore[no-any-return]
                         default=_exact_default)


def _exact_ext(code: int, data: bytes) -> Any:
    if code == _TUPLE:
        return tuple(exact_loads(data))
    return _msgpack_ext(code, data)


#: Types msgpack writes as another one even with strict_types (bin: read as bytes).
_NOT_EXACT = (bytearray, memoryview)


def _refuse_inexact(value: Any) -> None:
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is dict:
            pending.extend(item.keys())
            pending.extend(item.values())
        elif kind is list or kind is tuple:
            pending.extend(item)
        elif isinstance(item, _NOT_EXACT):
            raise TypeError(f"a {kind.__name__} would not come back as a {kind.__name__}")


def exact_dumps(value: Any) -> bytes:
    """msgpack that keeps every type exactly (tuples too), or SerializationError naming it."""
    try:
        _refuse_inexact(value)
        return _exact_pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise exception.SerializationError(
            f"cannot serialize a {type(value).__name__} with msgpack: {exc}") from None


def exact_loads(data: bytes | memoryview) -> Any:
    """The inverse of :func:`exact_dumps`; it also reads what ``msgpack`` stores wrote."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_exact_ext)


#: How deep values may nest (containers inside containers).  The decoders
#: have limits of their own: msgpack's unpacker reads 1,024 levels (one fewer
#: than its packer writes), and json's depends on Python's recursion limit and
#: on the caller's stack.  Without these checks a value could be written that
#: nobody can read back.  (msgpack needs no walk: see MsgpackSerializer.dumps.)
MAX_DEPTH = {"msgpack": 1024, "json": 512}

#: Every level costs the encoding at least two bytes (one for msgpack), so a
#: shorter encoding cannot be too deep and is never walked.
_WALK_FROM = 1024


def _deeper_than(value: Any, limit: int) -> bool:
    """True if containers in ``value`` nest more than ``limit`` levels."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    containers = (dict, list, tuple)
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            pending.extend((child, depth + 1) for child in item.values()
                           if isinstance(child, containers))
            pending.extend((child, depth + 1) for child in item
                           if isinstance(child, tuple))
        else:
            pending.extend((child, depth + 1) for child in item
                           if isinstance(child, containers))
    return False


def _check_depth(value: Any, encoded: bytes, codec: str) -> bytes:
    if len(encoded) >= _WALK_FROM and isinstance(value, (dict, list, tuple)) and \
            _deeper_than(value, MAX_DEPTH[codec]):
        raise exception.SerializationError(
            f"cannot serialize a {type(value).__name__} with {codec}: it nests deeper than "
            f"{MAX_DEPTH[codec]} levels")
    return encoded


def _new_packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, default=_msgpack_default)


def _pack_in_a_list(value: Any) -> bytes:
    """``[value]`` packed by this thread's packer (see MsgpackSerializer.encode)."""
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = _new_packer()
    try:
        return packer.pack([value])  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise _refused(value, exc) from None


def _refused(value: Any, exc: Exception) -> exception.SerializationError:
    del _local.packer  # never reuse a packer that stopped half-way
    reason = str(exc)
    if "recursion" in reason:
        reason = f"it nests deeper than {MAX_DEPTH['msgpack']} levels"
    return exception.SerializationError(
        f"cannot serialize a {type(value).__name__} with msgpack: {reason}")


#: One msgpack Packer per thread: building one per call costs more than the
#: packing of a small value, and a Packer is not thread-safe.
_local = threading.local()


class MsgpackSerializer(Serializer):
    name = "msgpack"

    def dumps(self, value: Any) -> bytes:
        return bytes(self.encode(value))

    def encode(self, value: Any) -> bytes | memoryview:
        """The encoding; for large values a view, without a copy (``pack``
        copies it once, with the header).  For small ones a copy costs less
        than making a view.

        Packed inside a one-item list whose one-byte header is left out: the
        packer accepts exactly one level more than the unpacker reads (1,025
        against 1,024), so a value too deep to be read back fails here, before
        anything is written, without walking the value.
        """
        wrapped = _pack_in_a_list(value)
        return wrapped[1:] if len(wrapped) < _VIEW_FROM else memoryview(wrapped)[1:]

    def pack(self, value: Any) -> bytes:
        # header(), encode() and _pack_in_a_list written out, and the header
        # and payload formatted into one bytes object: every write of a value
        # comes here (9.3k instructions a 100-byte value before, 6.1k now).
        try:
            packer = _local.packer
        except AttributeError:
            packer = _local.packer = _new_packer()
        try:
            wrapped = packer.pack([value])
        except (TypeError, ValueError, OverflowError) as exc:
            raise _refused(value, exc) from None
        return _HEADED % (time.time_ns() // 1000,
                          wrapped[1:] if len(wrapped) < _VIEW_FROM else memoryview(wrapped)[1:])

    def loads(self, data: bytes | memoryview) -> Any:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_msgpack_ext)

    def unpack(self, data: bytes) -> Any:
        # The hot path of every read: _payload and loads written out (a call
        # frame each costs as much as the header check).  partition() takes
        # one argument, so it costs half of find(b"|", 0, 128), and it makes
        # the payload's copy itself; the checks are _payload's.
        if len(data) < _VIEW_FROM:
            head, bar, payload = data.partition(b"|")
            end = len(head)
            if not bar or not 2 <= end < 128 or head[0] != 0x7B or head[end - 1] != 0x7D:
                raise exception.CorruptValue(
                    "stored bytes are not a kvs value (no metadata header)")
            try:
                return msgpack.unpackb(payload, raw=False, strict_map_key=False,
                                       ext_hook=_msgpack_ext)
            except Exception as exc:
                raise _undecodable(self.name, exc) from None
        try:
            return self.loads(_payload(data))
        except exception.CorruptValue:
            raise
        except Exception as exc:
            raise _undecodable(self.name, exc) from None

    def unpack_many(self, items: list[bytes]) -> list[Any]:
        """:meth:`unpack` of every item, with the header checks in bulk.

        Each payload is decoded on its own by ``unpackb``, which refuses a
        truncated one and one with bytes left over, so a damaged value can
        never borrow bytes from another and decode as something else.  (One
        Unpacker fed all payloads, with a ``tell`` per value to hold the same
        boundaries, cost more per item than an ``unpackb`` call.)

        The headers are checked for all items at once when they are all as
        long as the first (kvs writes them so): joined, with "|" only at the
        end of each, "{" at its start and "}" before its "|", which is what
        unpack() checks.  Other items take :meth:`_unpack_each`.
        """
        count = len(items)
        if not count:
            return []
        try:
            size = items[0].find(b"|", 0, 128) + 1  # the first header, with its "|"
            heads = b"".join(map(_getitem, items, repeat(slice(0, size))))  # type: ignore[arg-type]
        except (AttributeError, TypeError):  # not bytes (a memoryview, None)
            return self._unpack_each(items)
        if (size < 3 or len(heads) != size * count or heads.count(b"|") != count
                or heads[size - 1::size] != b"|" * count or heads[0::size] != b"{" * count
                or heads[size - 2::size] != b"}" * count):
            return self._unpack_each(items)
        unpackb, hook = msgpack.unpackb, _msgpack_ext
        try:
            if len(heads) + sum(map(len, items)) < _VIEW_FROM:  # all small: copies
                return [unpackb(data[size:], raw=False, strict_map_key=False, ext_hook=hook)
                        for data in items]
            return [unpackb(data[size:] if len(data) < _VIEW_FROM else memoryview(data)[size:],
                            raw=False, strict_map_key=False, ext_hook=hook) for data in items]
        except Exception as exc:
            raise _undecodable(self.name, exc) from None

    def _unpack_each(self, items: list[bytes]) -> list[Any]:
        """unpack_many item by item: any header ending in "}|", any bytes-like item;
        raises CorruptValue for the first item it refuses."""
        values = []
        for data in items:
            head, bar, payload = data.partition(b"}|")
            if not bar or head[:1] != b"{":
                raise exception.CorruptValue(
                    "stored bytes are not a kvs value (no metadata header)")
            try:
                values.append(msgpack.unpackb(payload, raw=False, strict_map_key=False,
                                              ext_hook=_msgpack_ext))
            except Exception as exc:
                raise _undecodable(self.name, exc) from None
        return values


_getitem = operator.getitem


def _check_json_keys(value: Any) -> None:
    """json.dumps silently turns 1 or None keys into "1" and "null": refuse them."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"dict keys must be str with json, not {type(key).__name__}")
            _check_json_keys(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_json_keys(item)


class JSONSerializer(Serializer):
    name = "json"

    def dumps(self, value: Any) -> bytes:
        try:
            _check_json_keys(value)
            encoded = json.dumps(value, separators=(",", ":"), allow_nan=True,
                                 default=self._refuse).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise exception.SerializationError(
                f"cannot serialize a {type(value).__name__} with json: {exc}") from None
        return _check_depth(value, encoded, self.name)

    @staticmethod
    def _refuse(value: Any) -> Any:
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    def loads(self, data: bytes | memoryview) -> Any:
        return json.loads(bytes(data))


class PickleSerializer(Serializer):
    name = "pickle"

    def dumps(self, value: Any) -> bytes:
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except (TypeError, AttributeError, pickle.PicklingError, RecursionError) as exc:
            raise exception.SerializationError(
                f"cannot serialize a {type(value).__name__} with pickle: {exc}") from None

    def loads(self, data: bytes | memoryview) -> Any:
        return pickle.loads(data)


SERIALIZERS: dict[str, Callable[[], Serializer]] = {
    "msgpack": MsgpackSerializer,
    "json": JSONSerializer,
    "pickle": PickleSerializer,
}

DEFAULT_SERIALIZER = "msgpack"


def get_serializer(name: str) -> Serializer:
    """Return the codec called ``name`` or raise ConfigurationError."""
    try:
        return SERIALIZERS[name]()
    except KeyError:
        raise exception.ConfigurationError(
            f"unknown serializer {name!r}; known: {exception.names(SERIALIZERS)}",
            option="serializer") from None


def checked_loads(serializer: Serializer) -> Callable[[bytes], Any]:
    """``serializer.loads`` that reports any decoder failure as CorruptValue."""

    def loads(data: bytes) -> Any:
        try:
            return serializer.loads(data)
        except Exception as exc:  # every decoder has its own exception zoo
            raise _undecodable(serializer.name, exc) from None

    return loads


#: dogpile's metadata header, the creation time in whole microseconds with an
#: exponent: ``{"ct":1733275149123456e-6,"v":2}|``.  That is a JSON number
#: every reader (dogpile's ``json.loads`` included) reads as the float
#: 1733275149.123456, and formatting an int costs half of formatting a float.
_HEADER = b'{"ct":%de-6,"v":' + str(DOGPILE_VALUE_VERSION).encode() + b'}|'
#: The header followed by the payload (``%b``): MsgpackSerializer.pack.
_HEADED = _HEADER + b"%b"


def header() -> bytes:
    """dogpile's metadata header plus separator, ``{"ct":<µs since the epoch>e-6,"v":2}|``.

    kvs does not read the creation time itself; a dogpile region reading kvs
    values does, to apply its ``expiration_time`` and ``invalidate()``, so it
    is written to the microsecond, as dogpile writes it, and read back by
    dogpile (``json.loads``) as a float of seconds.
    """
    return _HEADER % (time.time_ns() // 1000)


def pack(serializer: Serializer, value: Any) -> bytes:
    """Encode ``value`` in dogpile's wire format (``metadata|payload``)."""
    return serializer.pack(value)


def unpack(serializer: Serializer, data: bytes) -> Any:
    """Decode dogpile's wire format; raises CorruptValue on foreign bytes."""
    return serializer.unpack(data)
