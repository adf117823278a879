"""KeyValueStore, the public API, and the registry of named stores.

A store is a thin policy layer over one dogpile.cache region:

* reads and writes go through the region, so key mangling and configured
  proxies apply to every call, locked writes included;
* the lease token and per-call TTL of a write travel to the backend through
  :func:`kvs.backends.base.write_options`, and a ``kvs.*`` backend turns a write
  carrying a token into an atomic fenced write;
* values are encoded by the store's serializer (msgpack by default), never by
  pickle unless asked for.
"""

from __future__ import annotations

import importlib
import logging
import math
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from dogpile.cache import exception as dogpile_exception
from dogpile.cache.api import NO_VALUE
from dogpile.cache.proxy import ProxyBackend
from dogpile.cache.region import CacheRegion, _backend_loader, make_region

from kvs import exception, manglers, security, serializers
from kvs.backends.base import Fenced, LeaseBackend, LeaseInfo, write_options
from kvs.lock import KeyValueStoreLock, Leases
from kvs.stock import StockLeases

LOG = logging.getLogger(__name__)

#: Default lease length in seconds when neither configure() nor the config says.
DEFAULT_LOCK_TIMEOUT = 5.0

#: configure() arguments the store consumes itself; the rest go to the backend.
STORE_ARGUMENTS = (
    "lock_timeout", "lock_wait_timeout", "key_prefix", "serializer", "default_ttl",
    "enable_key_mangler", "security_strategy", "secret_key",
)

_NO_DEFAULT: Any = object()

#: Client libraries of stock dogpile backends: their errors mean "unavailable".
_CLIENT_LIBRARIES = frozenset({"redis", "valkey", "pymemcache", "memcache", "pylibmc",
                               "bmemcached"})


def known_backends() -> list[str]:
    """Names dogpile.cache can load: built-ins plus ``dogpile.cache`` entry points."""
    from importlib.metadata import entry_points

    names = set(_backend_loader.impls)
    names.update(ep.name for ep in entry_points(group=_backend_loader.group))
    return sorted(names)


def _load_backend_class(name: str) -> type:
    try:
        return _backend_loader.load(name)  # type: ignore[no-any-return]
    except (dogpile_exception.PluginNotFound, _backend_loader.NotFound):
        raise exception.ConfigurationError(
            f"unknown backend {name!r}; known backends: {', '.join(known_backends())}",
            option="backend") from None


def _import_proxy(entry: Any) -> ProxyBackend:
    """Turn a proxy_list entry (class, instance or dotted path) into an instance."""
    target = entry
    if isinstance(entry, str):
        module_name, _, attr = entry.rpartition(".")
        try:
            target = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError, ValueError):
            raise exception.ConfigurationError(
                f"cannot import proxy {entry!r}", option="proxies") from None
    if isinstance(target, type) and issubclass(target, ProxyBackend):
        return target()
    if isinstance(target, ProxyBackend):
        return target
    raise exception.ConfigurationError(
        f"proxy {entry!r} is not a dogpile.cache ProxyBackend", option="proxies")


def _non_negative(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise exception.ConfigurationError(
            f"{name} must be a number of seconds, got {value!r}", option=name) from None
    if not math.isfinite(number) or number < 0:
        raise exception.ConfigurationError(
            f"{name} must be a finite number >= 0, got {value!r}", option=name)
    return number


def _positive_ttl(name: str, value: Any) -> float | None:
    if value is None:
        return None
    number = _non_negative(name, value)
    if number == 0:
        raise exception.ConfigurationError(
            f"{name} must be > 0 seconds (use None for no expiry)", option=name)
    return number


class KeyValueStore:
    """A named key-value store.  Get one with :func:`get_key_value_store`."""

    def __init__(self, name: str, kvs_region: CacheRegion | None = None) -> None:
        self.name = name
        self._region = kvs_region if kvs_region is not None else make_region(name=name)
        self._configure_lock = threading.Lock()
        self._configured = False
        self.locking = True
        self.lock_timeout = DEFAULT_LOCK_TIMEOUT
        self.lock_wait_timeout = DEFAULT_LOCK_TIMEOUT
        self.key_prefix = name
        self.default_ttl: float | None = None
        self.security_strategy = "none"
        self.backend_name: str | None = None
        self._serializer: serializers.Serializer = serializers.get_serializer(
            serializers.DEFAULT_SERIALIZER)
        self._leases: Leases | None = None
        self._lease_backend: LeaseBackend | None = None
        self._stock: StockLeases | None = None
        self._has_proxies = False
        #: The backend to call directly: a kvs backend with no proxy in between.
        self._direct: LeaseBackend | None = None
        self._key_mangler: Callable[[str], str] = manglers.prefixed(name, None)

    def __repr__(self) -> str:
        state = f"backend={self.backend_name}" if self._configured else "unconfigured"
        return f"<KeyValueStore {self.name!r} {state}>"

    # -- configuration ------------------------------------------------------

    @property
    def is_configured(self) -> bool:
        return self._configured

    @property
    def region(self) -> CacheRegion:
        """The dogpile region behind this store (read-only use, please)."""
        return self._region

    @property
    def fenced(self) -> bool:
        """True when locked writes are fenced by the backend (a ``kvs.*`` backend)."""
        return self._lease_backend is not None

    def configure(self, backing_store: str, key_mangler: Callable[[str], str] | None = None,
                  proxy_list: Sequence[Any] | None = None, locking: bool = True,
                  **region_config_args: Any) -> None:
        """Configure the store once.  See the README for every argument.

        Raises :class:`~kvs.exception.AlreadyConfigured` on a second call.  A
        call that fails leaves the store unconfigured, so it can be retried.
        """
        with self._configure_lock:
            if self._configured or self._region.is_configured:
                raise exception.AlreadyConfigured(
                    f"store {self.name!r} is already configured; create a new store instead",
                    store=self.name)
            self._configure(backing_store, key_mangler, proxy_list, locking,
                            dict(region_config_args))
            self._configured = True

    def _configure(self, backing_store: str, key_mangler: Callable[[str], str] | None,
                   proxy_list: Sequence[Any] | None, locking: bool,
                   args: dict[str, Any]) -> None:
        # Everything that can fail is checked before region.configure(): once
        # the region holds a backend it cannot be configured again.
        lock_timeout = _non_negative("lock_timeout", args.pop("lock_timeout", DEFAULT_LOCK_TIMEOUT))
        wait = args.pop("lock_wait_timeout", None)
        if wait is None:
            # 0 means "never expires", not "never wait": waiting forever for a
            # lease that never expires would hang, so wait the default instead.
            wait = lock_timeout if lock_timeout > 0 else DEFAULT_LOCK_TIMEOUT
        lock_wait_timeout = _non_negative("lock_wait_timeout", wait)
        key_prefix = args.pop("key_prefix", None)
        key_prefix = self.name if key_prefix is None else str(key_prefix)
        codec = serializers.get_serializer(
            args.pop("serializer", None) or serializers.DEFAULT_SERIALIZER)
        default_ttl = _positive_ttl("default_ttl", args.pop("default_ttl", None))
        enable_mangler = bool(args.pop("enable_key_mangler", True))
        strategy = args.pop("security_strategy", None) or "none"
        seal = security.make_codec(strategy, args.pop("secret_key", None))

        backend_cls: Any = _load_backend_class(backing_store)
        if issubclass(backend_cls, LeaseBackend):
            unknown = set(args) - set(backend_cls.arguments)
            if unknown:
                valid = set(backend_cls.arguments) | set(STORE_ARGUMENTS)
                raise exception.ConfigurationError(
                    f"unknown argument {exception.names(unknown)} for backend {backing_store}; "
                    f"valid arguments: {exception.names(valid)}", option=sorted(unknown)[0])
        elif default_ttl is not None:
            raise exception.ConfigurationError(
                f"backend {backing_store} cannot expire individual keys; default_ttl needs "
                f"a kvs.* backend", option="default_ttl")

        if key_mangler is not None and not callable(key_mangler):
            raise exception.ConfigurationError("key_mangler must be callable", option="key_mangler")
        if proxy_list is None:
            proxy_list = []
        if not isinstance(proxy_list, (list, tuple)):
            raise exception.ConfigurationError(
                "proxy_list must be a list or tuple of ProxyBackend classes", option="proxies")
        proxies = [_import_proxy(entry) for entry in proxy_list]
        if seal is not None:
            # Innermost, so it signs exactly the bytes the backend stores.
            proxies.append(security.SecurityProxy(seal))

        # Mangler precedence, as in Keystone: explicit, else the backend's own,
        # else SHA-1 when enabled.
        mangler = key_mangler or getattr(backend_cls, "key_mangler", None)
        if mangler is None and enable_mangler:
            mangler = manglers.sha1_mangle_key

        try:
            self._region.configure(backing_store, arguments=args, wrap=proxies)
        except exception.KVSError:
            raise
        except dogpile_exception.DogpileCacheException as exc:
            raise exception.ConfigurationError(
                f"backend {backing_store} for store {self.name!r}: {exc}",
                option="backend") from None
        except (TypeError, ValueError, KeyError) as exc:
            raise exception.ConfigurationError(
                f"backend {backing_store} rejected its arguments for store {self.name!r}: "
                f"{type(exc).__name__}", option="backend_argument") from None

        self._key_mangler = manglers.prefixed(key_prefix, mangler)
        self._region.key_mangler = self._key_mangler
        self._region.serializer = codec.dumps
        self._region.deserializer = serializers.checked_loads(codec)
        self.locking = bool(locking)
        self.lock_timeout = lock_timeout
        self.lock_wait_timeout = lock_wait_timeout
        self.key_prefix = key_prefix
        self.default_ttl = default_ttl
        self.backend_name = backing_store
        self._serializer = codec
        self._has_proxies = bool(proxies)
        actual = self._region.actual_backend
        if isinstance(actual, LeaseBackend):
            self._lease_backend = actual
            self._leases = actual
            self._direct = None if proxies else actual
        else:
            self._stock = StockLeases(self._region)
            self._leases = self._stock
            if locking:
                LOG.warning(
                    "store %r uses stock backend %s: locks use dogpile's get_mutex and a "
                    "client-side clock check; writes under a lock are NOT fenced",
                    self.name, backing_store)
        self.security_strategy = strategy
        if codec.name == "pickle" and seal is None:
            LOG.warning("store %r uses the pickle serializer without a security_strategy: "
                        "anyone who can write to its backend can run code in this process",
                        self.name)

    # -- helpers ------------------------------------------------------------

    def _require_configured(self) -> None:
        if not self._configured:
            raise exception.NotConfigured(
                f"store {self.name!r} is not configured", store=self.name)

    def _mangle(self, key: str) -> str:
        return self._key_mangler(key)

    def _ttl(self, ttl: float | None) -> float | None:
        if ttl is None:
            return self.default_ttl
        ttl = _positive_ttl("ttl", ttl)
        if self._lease_backend is None:
            raise exception.ConfigurationError(
                f"backend {self.backend_name} of store {self.name!r} cannot expire "
                f"individual keys", option="ttl")
        return ttl

    def _errors(self, key: Any, reading: bool = False) -> _NameKeyInErrors:
        """Name the user's key in errors raised below the store."""
        return _NameKeyInErrors(self, key, reading)

    def _translate(self, exc: BaseException, key: Any, reading: bool) -> BaseException | None:
        """The error to raise instead of ``exc`` (None: let ``exc`` through)."""
        if isinstance(exc, (exception.SerializationError, exception.ValueTooLarge,
                            exception.CorruptValue, exception.TamperedValue)):
            return type(exc)(f"key {key!r} in store {self.name!r}: {exc.message}",
                             key=key, store=self.name)
        if isinstance(exc, exception.KVSError):
            return None
        if reading and isinstance(exc, (ValueError, UnicodeDecodeError)):
            # dogpile's metadata parsing failed: bytes written by someone else.
            return exception.CorruptValue(
                f"key {key!r} in store {self.name!r} holds bytes that are not a kvs value "
                f"({type(exc).__name__})", key=key, store=self.name)
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)) or \
                type(exc).__module__.split(".")[0] in _CLIENT_LIBRARIES:
            return exception.BackendUnavailable(
                f"backend {self.backend_name} of store {self.name!r} failed: "
                f"{type(exc).__name__}", store=self.name)
        return None

    def _check_write_lock(self, key: str, lock: KeyValueStoreLock) -> None:
        if not isinstance(lock, KeyValueStoreLock):
            raise TypeError(f"lock must be a KeyValueStoreLock, not {type(lock).__name__}")
        if lock._leases is not self._leases:
            raise ValueError(f"lock on key {lock.key!r} belongs to store {lock.store!r}, "
                             f"not {self.name!r}")
        lock.check(for_key=key)
        if self._stock is not None and lock.enabled:
            assert lock.token is not None
            if not self._stock.holds(lock.lease_key, lock.token):
                raise exception.LeaseLost(
                    f"lease on key {key!r} in store {self.name!r} is no longer held",
                    key=key, store=self.name)

    def _lease_lost(self, key: str, lock: KeyValueStoreLock) -> exception.LeaseLost:
        lock._mark_lost()
        return exception.LeaseLost(
            f"lease on key {key!r} in store {self.name!r} expired or was taken over; "
            f"nothing was written", key=key, store=self.name)

    # -- reads --------------------------------------------------------------
    #
    # With a kvs backend and no proxy, calls go straight to the backend with
    # the store's own codec (same wire format as dogpile's region); otherwise
    # through the region, so that every proxy sees every call.

    def get(self, key: str) -> Any:
        """Return the value of ``key``; raise :class:`~kvs.exception.NotFound` if missing."""
        if not self._configured:
            self._require_configured()
        manglers.check_key(key)
        backend = self._direct
        try:
            if backend is None:
                value = self._region.get(key)
            else:
                stored = backend.get_serialized(self._key_mangler(key))
                value = NO_VALUE if stored is NO_VALUE else \
                    serializers.unpack(self._serializer, stored)
        except Exception as exc:  # a try, not a context manager: this is the hot path
            replacement = self._translate(exc, key, reading=True)
            if replacement is None:
                raise
            raise replacement from None
        if value is NO_VALUE:
            raise exception.NotFound(key, store=self.name)
        return value

    def exists(self, key: str) -> bool:
        """True if ``key`` holds a value (it may still expire right after)."""
        try:
            self.get(key)
        except exception.NotFound:
            return False
        return True

    def get_multi(self, keys: Iterable[str]) -> list[Any]:
        """Values in key order; NotFound listing every missing key if any is missing."""
        self._require_configured()
        keys = [manglers.check_key(key) for key in keys]
        if not keys:
            return []
        backend = self._direct
        with self._errors(keys[0] if len(keys) == 1 else keys, reading=True):
            if backend is None:
                values = list(self._region.get_multi(keys))
            else:
                mangle, codec, unpack = self._key_mangler, self._serializer, serializers.unpack
                stored = backend.get_serialized_multi([mangle(key) for key in keys])
                values = [item if item is NO_VALUE else unpack(codec, item) for item in stored]
        if NO_VALUE in values:
            missing = [key for key, value in zip(keys, values) if value is NO_VALUE]
            raise exception.NotFound(missing, store=self.name)
        return values

    # -- writes -------------------------------------------------------------

    def set(self, key: str, value: Any, lock: KeyValueStoreLock | None = None,
            ttl: float | None = None) -> None:
        """Store ``value``.  With ``lock=``, only if that lease is still ours."""
        if not self._configured:
            self._require_configured()
        manglers.check_key(key)
        ttl = self.default_ttl if ttl is None else self._ttl(ttl)
        token = None
        if lock is not None:
            self._check_write_lock(key, lock)
            if lock.enabled and self._lease_backend is not None:
                token = lock.token
        backend = self._direct
        try:
            if backend is None:
                with write_options(ttl=ttl, token=token) as options:
                    self._region.set(key, value)
                outcome = options.outcome
            else:
                mangled = self._key_mangler(key)
                data = serializers.pack(self._serializer, value)
                backend.check_size(mangled, data)
                if token is None:
                    backend.plain_set(mangled, data, ttl)
                    return
                outcome = backend.fenced_set(mangled, data, token, ttl)
        except Exception as exc:  # a try, not a context manager: this is the hot path
            replacement = self._translate(exc, key, reading=False)
            if replacement is None:
                raise
            raise replacement from None
        if outcome is Fenced.LEASE_LOST:
            assert lock is not None
            raise self._lease_lost(key, lock)

    def set_multi(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """Store several values (atomically where the backend allows).  No lock."""
        self._require_configured()
        mapping = dict(mapping)
        for key in mapping:
            manglers.check_key(key)
        if not mapping:
            return
        ttl = self._ttl(ttl)
        backend = self._direct
        if backend is None:
            with self._errors(list(mapping)), write_options(ttl=ttl):
                self._region.set_multi(mapping)
            return
        mangle, dumps, check_size = self._key_mangler, self._serializer.dumps, backend.check_size
        head = serializers.header()
        encoded = {}
        current: Any = None  # the key named by an error
        try:  # every value is encoded and checked before anything is written
            for current, value in mapping.items():
                data = head + dumps(value)
                mangled = mangle(current)
                check_size(mangled, data)
                encoded[mangled] = data
            current = list(mapping)
            backend.plain_set_multi(encoded, ttl)
        except Exception as exc:
            replacement = self._translate(exc, current, reading=False)
            if replacement is None:
                raise
            raise replacement from None

    def delete(self, key: str, lock: KeyValueStoreLock | None = None) -> None:
        """Delete ``key``; raise :class:`~kvs.exception.NotFound` if it does not exist."""
        self._require_configured()
        manglers.check_key(key)
        token = None
        if lock is not None:
            self._check_write_lock(key, lock)
            if lock.enabled and self._lease_backend is not None:
                token = lock.token
        if self._lease_backend is None:
            # Stock backends do not say whether the key existed: read first.
            self.get(key)
        backend = self._direct
        existed: bool | None = None
        with self._errors(key):
            if backend is None:
                with write_options(token=token) as options:
                    self._region.delete(key)
                outcome, existed = options.outcome, options.existed
            elif token is None:
                outcome, existed = None, backend.plain_delete(self._key_mangler(key))
            else:
                outcome = backend.fenced_delete(self._key_mangler(key), token)
        if outcome is Fenced.LEASE_LOST:
            assert lock is not None
            raise self._lease_lost(key, lock)
        if outcome is Fenced.MISSING or existed is False:
            raise exception.NotFound(key, store=self.name)

    def delete_multi(self, keys: Iterable[str]) -> None:
        """Delete every key that exists; missing keys are fine.  No lock."""
        self._require_configured()
        keys = [manglers.check_key(key) for key in keys]
        if not keys:
            return
        backend = self._direct
        with self._errors(keys):
            if backend is None:
                self._region.delete_multi(keys)
            else:
                backend.delete_multi([self._key_mangler(key) for key in keys])

    # -- locking ------------------------------------------------------------

    def get_lock(self, key: str, lock_timeout: float | None = None,
                 lock_wait_timeout: float | None = None) -> KeyValueStoreLock:
        """A write lease on ``key``, not yet acquired.

        ``lock_timeout``/``lock_wait_timeout`` override the store's for this lock.
        """
        self._require_configured()
        manglers.check_key(key)
        assert self._leases is not None
        timeout = (self.lock_timeout if lock_timeout is None
                   else _non_negative("lock_timeout", lock_timeout))
        wait = (self.lock_wait_timeout if lock_wait_timeout is None
                else _non_negative("lock_wait_timeout", lock_wait_timeout))
        return KeyValueStoreLock(self._leases, key, self._mangle(key), timeout, wait,
                                 enabled=self.locking, store=self.name)

    def lease_info(self, key: str) -> LeaseInfo | None:
        """Who holds the lease on ``key`` right now (token, fence, time left)."""
        self._require_configured()
        assert self._leases is not None
        info: LeaseInfo | None = self._leases.lease_info(
            self._mangle(manglers.check_key(key)))
        return info

    def break_lock(self, key: str) -> bool:
        """Operator override: drop the lease on ``key`` whoever holds it.

        The old holder's next fenced write is refused.  Returns whether a lease
        was there.
        """
        self._require_configured()
        leases: Any = self._leases
        return bool(leases.break_lease(self._mangle(manglers.check_key(key))))

    def update(self, key: str, fn: Callable[[Any], Any], default: Any = _NO_DEFAULT,
               ttl: float | None = None) -> Any:
        """Atomic read-modify-write of ``key`` under a fenced lease.

        Reads the value (or ``default``; with no default a missing key raises
        NotFound), writes ``fn(value)`` as a fenced write, releases the lease
        and returns the new value.  Raises LockTimeout, writing nothing, if the
        lease is lost meanwhile.
        """
        self._require_configured()
        manglers.check_key(key)
        ttl = self._ttl(ttl)
        lock = self.get_lock(key)
        if self._lease_backend is not None and self.locking and not self._has_proxies:
            return self._update_fast(lock, fn, default, ttl)
        with lock:
            try:
                current = self.get(key)
            except exception.NotFound:
                if default is _NO_DEFAULT:
                    raise
                current = default
            new = fn(current)
            self.set(key, new, lock=lock, ttl=ttl)
        return new

    def _update_fast(self, lock: KeyValueStoreLock, fn: Callable[[Any], Any], default: Any,
                     ttl: float | None) -> Any:
        """update() in two backend round trips: acquire+read, then write+release."""
        backend = self._lease_backend
        assert backend is not None
        key = lock.key
        with self._errors(key, reading=True):
            stored = lock.acquire_and_get(backend)
        try:
            if stored is NO_VALUE:
                if default is _NO_DEFAULT:
                    raise exception.NotFound(key, store=self.name)
                current = default
            else:
                with self._errors(key, reading=True):
                    current = serializers.unpack(self._serializer, stored)
            new = fn(current)
            with self._errors(key):
                data = serializers.pack(self._serializer, new)
                backend.check_size(lock.lease_key, data)
            lock.check(for_key=key)
            assert lock.token is not None
            with self._errors(key):
                outcome = backend.fenced_set_and_release(lock.lease_key, data, lock.token, ttl)
        except BaseException:
            lock.release()
            raise
        if outcome is Fenced.LEASE_LOST:
            raise self._lease_lost(key, lock)
        lock._mark_released()
        return new

    # -- health -------------------------------------------------------------

    def ping(self) -> None:
        """Raise :class:`~kvs.exception.BackendUnavailable` if the backend is unreachable."""
        self._require_configured()
        if self._lease_backend is not None:
            with self._errors("<ping>"):
                self._lease_backend.ping()
        else:
            with self._errors("<ping>"):
                self._region.get("\x00kvs-ping")


class _NameKeyInErrors:
    """Context manager: re-raise errors from below the store naming the user's key.

    A class rather than a generator-based context manager: it sits on every
    call's hot path.
    """

    __slots__ = ("key", "reading", "store")

    def __init__(self, store: KeyValueStore, key: Any, reading: bool) -> None:
        self.store = store
        self.key = key
        self.reading = reading

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            return
        replacement = self.store._translate(exc, self.key, self.reading)
        if replacement is not None:
            raise replacement from None


# -- registry ---------------------------------------------------------------

_REGISTRY: dict[str, KeyValueStore] = {}
_REGISTRY_LOCK = threading.Lock()


def get_key_value_store(name: str, kvs_region: CacheRegion | None = None) -> KeyValueStore:
    """Return the one :class:`KeyValueStore` called ``name`` in this process.

    The registry holds strong references: a store lives until
    :func:`kvs.testing.reset_registry` (tests only).  ``kvs_region`` is used
    only when the store is created.
    """
    if not isinstance(name, str) or not name:
        raise exception.ConfigurationError("a store name must be a non-empty str", option="name")
    store = _REGISTRY.get(name)
    if store is not None:
        return store
    with _REGISTRY_LOCK:
        store = _REGISTRY.get(name)
        if store is None:
            store = KeyValueStore(name, kvs_region)
            _REGISTRY[name] = store
        return store


def registered_stores() -> dict[str, KeyValueStore]:
    """A snapshot of the registry."""
    with _REGISTRY_LOCK:
        return dict(_REGISTRY)


def _clear_registry() -> None:
    with _REGISTRY_LOCK:
        _REGISTRY.clear()
