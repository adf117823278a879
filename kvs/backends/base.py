"""The lease contract every ``kvs.*`` backend keeps.

A kvs backend is a dogpile.cache :class:`~dogpile.cache.api.BytesBackend`
(the region hands it bytes produced by the store's serializer) that also
answers five lease calls on an already-mangled key.  Each call is atomic in the
backend: one transaction, one Lua script, one critical section:

=====================  =======================================================
``persist_lease``      make the lease never expire, only if it holds this token
``acquire_lease``      take the lease if free, or if it already holds this
                       token (a retry after a lost reply); return the new
                       fence number, or ``None`` if another holder has it
``release_lease``      delete the lease only if it still holds this token
``extend_lease``       add time to the lease only if it still holds this token
``fenced_set``         write only if the key's lease holds this token
``fenced_delete``      delete only if the key's lease holds this token
=====================  =======================================================

A locked write is one explicit call chain: the store calls ``fenced_set`` or
``fenced_delete`` on the top of its proxy chain (or on the backend itself)
with the lease token as an argument, each :class:`kvs.proxy.LeaseProxy` on the
way hands it down, and the :class:`Fenced` outcome comes back as the return
value.  Nothing ambient (no context variable, no thread-local, no field set as
a side effect) decides whether a write is fenced.  Unlocked writes use
``plain_set``/``plain_set_multi``/``plain_delete``, which take the TTL as an
argument.  dogpile's own write calls (``set_serialized``, ``delete``...), made
by a plain dogpile region, are plain writes without a TTL.

Every write call checks the size of the bytes it is given
(:meth:`LeaseBackend.check_size`) before anything is sent.

Lease keys are derived by the backend from the mangled data key, so a key and
its lease always live together (in one SQLite row space, one Redis hash slot,
one memcached server).
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import json
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from dogpile.cache.api import NO_VALUE, BytesBackend, CachedValue, CacheMutex, NoValue

from kvs import durations, exception, serializers


class Fenced(enum.Enum):
    """Outcome of a fenced write or delete."""

    WRITTEN = "written"
    #: ``fenced_delete`` only: the lease is ours but the key does not exist.
    MISSING = "missing"
    #: The lease is held by another token, or has expired: nothing was written.
    LEASE_LOST = "lease_lost"


@dataclasses.dataclass(frozen=True)
class LeaseInfo:
    """What an operator sees about a lease (``kvs lock``/``kvs unlock``)."""

    token: str | None
    fence: int
    #: Seconds left before the lease expires; ``None`` when it never expires.
    remaining: float | None


class ArgumentSpec:
    """Parses and validates one backend argument (from Python or from ini text)."""

    def __init__(self, kind: str, default: Any = None, secret: bool = False,
                 minimum: float | None = None, choices: Sequence[str] | None = None) -> None:
        if kind not in ("str", "int", "float", "bool", "list"):
            raise ValueError(f"unknown argument kind {kind!r}")
        self.kind = kind
        self.default = default
        self.secret = secret
        self.minimum = minimum
        self.choices = choices

    def parse(self, name: str, value: Any) -> Any:
        """Return ``value`` converted to this argument's type, or raise."""
        if value is None:
            return None
        try:
            parsed: Any = _PARSERS[self.kind](value)
        except (TypeError, ValueError):
            shown = "<secret>" if self.secret else repr(value)
            raise exception.ConfigurationError(
                f"backend argument {name!r} must be a {self.kind}, got {shown}",
                option=name) from None
        if self.minimum is not None and parsed < self.minimum:
            raise exception.ConfigurationError(
                f"backend argument {name!r} must be >= {self.minimum}", option=name)
        if self.choices is not None and parsed not in self.choices:
            raise exception.ConfigurationError(
                f"backend argument {name!r} must be one of {', '.join(self.choices)}",
                option=name)
        return parsed


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(value)


def _parse_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)):
        return [str(item) for item in value]
    raise TypeError(value)


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError(value)
    return float(value)


def _parse_str(value: Any) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise TypeError(value)
    return str(value)


_PARSERS = {
    "str": _parse_str,
    "int": _parse_int,
    "float": _parse_float,
    "bool": _parse_bool,
    "list": _parse_list,
}


class LeaseBackend(BytesBackend, abc.ABC):
    """Base class of every ``kvs.*`` backend.

    Subclasses declare their constructor arguments in :attr:`arguments`; the
    constructor parses them (so ini text such as ``"yes"`` or ``"a, b"`` becomes
    a bool or a list) and rejects unknown names with a
    :class:`~kvs.exception.ConfigurationError` that lists the valid ones.

    Thread-safe: one backend instance serves every thread of its store, and
    each call is atomic in the backend.
    """

    #: Backend arguments: name -> spec.  Subclasses extend this dict.
    arguments: ClassVar[dict[str, ArgumentSpec]] = {
        "max_value_size": ArgumentSpec("int", default=None, minimum=1),
        # Seconds dogpile's get_or_create mutex (a lease) lasts: see kvs.backends.mutex.
        "mutex_timeout": ArgumentSpec("float", default=5.0, minimum=0.1),
    }

    #: Largest serialized value (bytes) the backend itself can hold.
    backend_value_limit: ClassVar[int | None] = None

    @classmethod
    def max_duration(cls) -> float:
        """The longest TTL or lease, in seconds, this backend can represent now."""
        return durations.MAX_SECONDS

    # The store installs its own codec on the region after configuring it;
    # None here keeps dogpile from adopting BytesBackend's pickle default.
    serializer = None
    deserializer = None

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        self.options = self.parse_arguments(arguments)
        limit = self.options.get("max_value_size")
        if limit is None:
            limit = self.backend_value_limit
        self.max_value_size: int | None = limit

    @classmethod
    def parse_arguments(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(arguments) - set(cls.arguments)
        if unknown:
            raise exception.ConfigurationError(
                f"unknown argument {exception.names(unknown)} for backend "
                f"{cls.backend_name()}; valid arguments: {exception.names(cls.arguments)}",
                option=sorted(unknown)[0])
        parsed = {name: spec.default for name, spec in cls.arguments.items()}
        for name, value in arguments.items():
            parsed[name] = cls.arguments[name].parse(name, value)
        return parsed

    def get_mutex(self, key: str) -> CacheMutex:
        """dogpile's creation lock for ``key``: this backend's lease on it, so
        ``get_or_create`` runs one creator across every process (see
        :mod:`kvs.backends.mutex`)."""
        from kvs.backends.mutex import LeaseMutex

        return LeaseMutex(self, key, float(self.options.get("mutex_timeout") or 5.0))

    @classmethod
    def backend_name(cls) -> str:
        return getattr(cls, "name", cls.__name__)

    def check_size(self, key: str, value: bytes) -> None:
        """Raise :class:`~kvs.exception.ValueTooLarge` before writing an oversized value."""
        if self.max_value_size is not None and len(value) > self.max_value_size:
            raise exception.ValueTooLarge(
                f"value for key {key!r} is {len(value)} bytes, above the limit of "
                f"{self.max_value_size} bytes", key=key, size=len(value))

    def check_sizes(self, mapping: Mapping[str, bytes]) -> None:
        """:meth:`check_size` for every value, before any of them is written."""
        for key, value in mapping.items():
            self.check_size(key, value)

    # -- the lease contract -------------------------------------------------

    @abc.abstractmethod
    def acquire_lease(self, key: str, token: str, ttl: float | None) -> int | None:
        """Take the lease on ``key`` for ``ttl`` seconds (``None``: no expiry).

        Returns the new fence number if the lease was free, expired, or already
        held by ``token``; ``None`` if another token holds it.
        """

    @abc.abstractmethod
    def release_lease(self, key: str, token: str) -> bool:
        """Delete the lease only if ``token`` holds it; say whether it did."""

    @abc.abstractmethod
    def extend_lease(self, key: str, token: str, ttl: float) -> bool:
        """Add ``ttl`` seconds to the lease only if ``token`` holds it."""

    @abc.abstractmethod
    def persist_lease(self, key: str, token: str) -> bool:
        """Make the lease never expire, only if ``token`` holds it.

        ``lock_timeout = 0`` takes a lease with a short provisional TTL first
        and persists it once the grant's reply has arrived, so a grant whose
        replies are lost never leaves a lease without owner forever.
        """

    @abc.abstractmethod
    def fenced_set(self, key: str, value: bytes, token: str, ttl: float | None) -> Fenced:
        """Write ``value`` only if ``token`` holds the lease on ``key``."""

    @abc.abstractmethod
    def fenced_delete(self, key: str, token: str) -> Fenced:
        """Delete ``key`` only if ``token`` holds its lease."""

    @abc.abstractmethod
    def lease_info(self, key: str) -> LeaseInfo | None:
        """The current lease on ``key``, or ``None`` if nobody holds one."""

    @abc.abstractmethod
    def break_lease(self, key: str) -> bool:
        """Operator override: delete the lease whoever holds it."""

    def wait_for_release(self, key: str, timeout: float) -> None:
        """Block until the lease on ``key`` may be free, for at most ``timeout``.

        The default polls; backends with a wake-up channel override it.
        Spurious early returns are fine: the caller simply retries.
        """
        time.sleep(max(0.0, min(timeout, 0.01)))

    # Optional combined round trips, used by ``KeyValueStore.update`` when no
    # proxy is configured (a proxy must see the read and the write, so with
    # proxies update() makes the single calls).  The defaults compose them.

    def acquire_lease_and_get(
        self, key: str, token: str, ttl: float | None
    ) -> tuple[int | None, bytes | NoValue]:
        """``acquire_lease`` then, if it succeeded, ``get_serialized``."""
        fence = self.acquire_lease(key, token, ttl)
        if fence is None:
            return None, NO_VALUE
        return fence, self.get_serialized(key)

    def fenced_set_and_release(self, key: str, value: bytes, token: str,
                               ttl: float | None) -> Fenced:
        """``fenced_set`` then ``release_lease``."""
        outcome = self.fenced_set(key, value, token, ttl)
        if outcome is Fenced.WRITTEN:
            self.release_lease(key, token)
        return outcome

    #: True when keys need no hashing here: with ``enable_key_mangler`` and no
    #: mangler of its own, the store then keeps keys as given (prefixed)
    #: instead of hashing them with SHA-1.  Sealed stores hash names anyway.
    plain_keys: bool = False

    #: True when waiters queue through ``wait_for_grant(key, token, ttl, timeout,
    #: read_value)`` and ``cancel_grant(key, token, ttl)`` and a release grants
    #: the lease to the next one (kvs.redis, kvs.redis_sentinel): see
    #: :class:`kvs.lock.KeyValueStoreLock`.  Declared here so the lock reads it
    #: without a getattr default.
    grants_on_release: ClassVar[bool] = False

    #: True when :meth:`update_value` runs a whole ``update()`` in one atomic
    #: step in the backend (sqlite: one transaction; memory: one in-process
    #: lease).  Backends across a network keep the two round trips above.
    updates_in_one_step: ClassVar[bool] = False

    def update_value(self, key: str, change: Callable[[bytes | NoValue], bytes],
                     ttl: float | None, lease_ttl: float | None) -> Fenced | None:
        """Read-modify-write ``key`` in one atomic step, as if under a lease.

        If another token holds a live lease on ``key``, return ``None`` at once
        (nothing called, nothing written).  Otherwise call ``change(stored)``
        once with the stored bytes (``NO_VALUE`` when missing) while nobody
        else can lease or write the key, and write what it returns with
        ``ttl``: ``Fenced.WRITTEN``.  A backend that takes a lease for this
        advances the key's fence as any grant does; one whose exclusion is a
        transaction grants nothing, and the next grant's fence is still above
        every earlier one.
        ``Fenced.LEASE_LOST`` means the exclusion was broken meanwhile
        (``break_lease``) and nothing was written.  If ``change`` raises,
        nothing is written and the error propagates.  ``lease_ttl`` bounds how
        long the exclusion may outlive a caller that never comes back.
        """
        raise NotImplementedError(f"{self.backend_name()} has no one-step update")

    # -- dogpile's write entry points: plain writes without a TTL -------------

    def set_serialized(self, key: str, value: bytes) -> None:  # type: ignore[override]
        self.plain_set(key, value, None)

    def set_serialized_multi(self, mapping: Mapping[str, bytes]) -> None:  # type: ignore[override]
        self.plain_set_multi(mapping, None)

    def delete(self, key: str) -> None:  # type: ignore[override]
        self.plain_delete(key)

    @abc.abstractmethod
    def plain_set(self, key: str, value: bytes, ttl: float | None) -> None:
        """Write without a lease check (``ttl`` seconds; ``None``: no expiry)."""

    @abc.abstractmethod
    def plain_set_multi(self, mapping: Mapping[str, bytes], ttl: float | None) -> None:
        """Write many values atomically where the backend allows; sizes checked first."""

    @abc.abstractmethod
    def plain_delete(self, key: str) -> bool:
        """Delete without a lease check; say whether the key existed."""

    @abc.abstractmethod
    def get_serialized(self, key: str) -> bytes | NoValue:  # type: ignore[override]
        """The stored bytes, or ``NO_VALUE`` if missing or expired."""

    @abc.abstractmethod
    def get_serialized_multi(self, keys: Sequence[str]) -> list[bytes | NoValue]:  # type: ignore[override]
        """Stored bytes in key order, ``NO_VALUE`` for each missing key."""

    @abc.abstractmethod
    def delete_multi(self, keys: Sequence[str]) -> None:  # type: ignore[override]
        """Delete every key that exists; missing keys are ignored."""

    def ping(self) -> None:
        """Raise :class:`~kvs.exception.BackendUnavailable` if the backend is unreachable."""
        self.get_serialized("kvs:ping")

    # -- dogpile's object-level API: regions without a serializer ----------------
    #
    # A plain dogpile region with no serializer hands the backend CachedValue
    # objects.  They are stored in dogpile's own wire format, metadata|payload,
    # the payload in exact msgpack (every type kept, tuples included; anything
    # else raises SerializationError naming the type), so kvs stores and other
    # regions read them too.

    def get(self, key: str) -> Any:  # type: ignore[override]
        return _cached_value(self.get_serialized(key))

    def get_multi(self, keys: Sequence[str]) -> list[Any]:  # type: ignore[override]
        return [_cached_value(data) for data in self.get_serialized_multi(keys)]

    def set(self, key: str, value: Any) -> None:  # type: ignore[override]
        self.set_serialized(key, _wire_format(value))

    def set_multi(self, mapping: Mapping[str, Any]) -> None:  # type: ignore[override]
        self.set_serialized_multi({key: _wire_format(value) for key, value in mapping.items()})


def _wire_format(value: Any) -> bytes:
    if not isinstance(value, CachedValue):
        raise exception.SerializationError(
            f"a kvs backend stores dogpile CachedValue objects or bytes, not "
            f"{type(value).__name__}")
    metadata = json.dumps(value.metadata, separators=(",", ":")).encode("ascii")
    return metadata + b"|" + serializers.exact_dumps(value.payload)


def _cached_value(data: bytes | NoValue) -> Any:
    if data is NO_VALUE:
        return NO_VALUE
    raw = bytes(data)  # type: ignore[arg-type]
    metadata, bar, payload = raw.partition(b"|")
    if not bar or metadata[:1] != b"{":
        raise exception.CorruptValue("stored bytes are not a dogpile value (no metadata header)")
    try:
        return CachedValue(serializers.exact_loads(payload), json.loads(metadata))
    except Exception as exc:  # every decoder has its own exception zoo
        raise serializers._undecodable("msgpack", exc) from None


#: What an error message of a backend across a network calls each backend
#: method: the store operation a user called, never the internal method name.
OPERATION_WORDS: dict[str, str] = {
    "get_serialized": "get", "get_serialized_multi": "get", "acquire_lease_and_get": "lock",
    "plain_set": "set", "plain_set_multi": "set", "fenced_set": "set",
    "fenced_set_and_release": "set", "plain_delete": "delete", "delete_multi": "delete",
    "fenced_delete": "delete", "acquire_lease": "lock", "wait_for_release": "lock",
    "release_lease": "unlock", "extend_lease": "extend lock", "persist_lease": "extend lock",
    "break_lease": "break lock", "lease_info": "lease info", "ping": "ping",
}


def parse_node(option: str, text: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) to a tuple; ConfigurationError naming ``option``."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise exception.ConfigurationError(
            f"backend argument {option!r} needs host:port entries, got {text.strip()!r}",
            option=option)
    return host, int(port)


def require_client(backend: str, module: str, extra: str, packages: str) -> None:
    """Raise ConfigurationError naming the extra to install if ``module`` cannot be imported.

    The client libraries are optional: a backend module imports without its
    client (so listing or loading backends never fails and never logs), and
    its backend checks here when it is configured.
    """
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise exception.ConfigurationError(
            f"backend {backend} needs the Python package {module!r}, which is not "
            f"installed: pip install 'dogpile-kvs[{extra}]' (the {extra!r} extra: {packages})",
            option="backend", extra=extra) from None
