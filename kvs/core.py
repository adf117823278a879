"""KeyValueStore, the public API, and the registry of named stores.

A store is a thin policy layer over one dogpile.cache region:

* it checks keys, mangles them and serializes values (msgpack by default,
  never pickle unless asked for), in dogpile's wire format;
* it moves the bytes through one data path (:mod:`kvs.paths`), chosen once at
  configure time from the region's proxy chain and backend;
* a locked write is an explicit call: the lock runs
  ``path.fenced_set(key, data, token, ttl)``, the token travelling down as an
  argument through every proxy to the backend's atomic check, and the outcome
  coming back as the return value (see ``README.md``, "Architecture").
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dogpile.cache import exception as dogpile_exception
from dogpile.cache.api import NO_VALUE
from dogpile.cache.proxy import ProxyBackend
from dogpile.cache.region import CacheRegion, _backend_loader, make_region

from kvs import durations, exception, manglers, paths, security, serializers
from kvs.backends.base import Fenced, LeaseBackend, LeaseInfo
from kvs.errors import raise_translated, translated
from kvs.lock import KeyValueStoreLock, LockState, safety_window
from kvs.proxy import LeaseProxy, check_lease_proxy, layer_name
from kvs.stock import StockLeases, stock_lock_arguments

LOG = logging.getLogger(__name__)

#: keystone.common.kvs.core's name for it, so that ported code finds it here.
LockTimeout = exception.LockTimeout

#: Default lease length in seconds when neither configure() nor the config says.
DEFAULT_LOCK_TIMEOUT = 5.0

#: configure() arguments the store consumes itself; the rest go to the backend.
STORE_ARGUMENTS = (
    "lock_timeout", "lock_wait_timeout", "key_prefix", "serializer", "default_ttl",
    "enable_key_mangler", "security_strategy", "secret_key", "secret_keys",
)

_NO_DEFAULT: Any = object()

#: Client libraries of stock dogpile backends: their errors mean "unavailable".
_CLIENT_LIBRARIES = frozenset({"redis", "valkey", "pymemcache", "memcache", "pylibmc",
                               "bmemcached"})

# An enum member is looked up through its class on every access (about 70 ns):
# the hot paths use these names instead.
_WRITTEN, _LEASE_LOST, _HELD = Fenced.WRITTEN, Fenced.LEASE_LOST, LockState.HELD

#: Errors the store re-raises naming the user's key and the store.
_RENAMED = (exception.SerializationError, exception.ValueTooLarge, exception.CorruptValue,
            exception.TamperedValue)


#: Keystone's names of its two backends (``keystone.common.kvs``), kept as
#: deprecated aliases: configure() logs a warning naming the kvs backend.
KEYSTONE_BACKENDS = {
    "openstack.kvs.Memory": "kvs.memory",
    "openstack.kvs.Memcached": "kvs.memcached",
}

#: Keystone's prefix of the names of ``[kvs] backends`` entries.
KEYSTONE_PREFIX = "openstack.kvs."

#: Backends registered from ``[kvs] backends``: name -> (module, class).
_EXTRA_BACKENDS: dict[str, tuple[str, str]] = {}
_EXTRA_BACKENDS_LOCK = threading.Lock()


def known_backends() -> list[str]:
    """Names dogpile.cache can load: built-ins plus ``dogpile.cache`` entry points."""
    from importlib.metadata import entry_points

    names = set(_backend_loader.impls) | set(KEYSTONE_BACKENDS)
    names.update(ep.name for ep in entry_points(group=_backend_loader.group))
    return sorted(names)


def backend_entries(entries: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``[kvs] backends`` entries -> ``{name: (module, class)}``, refusing conflicts.

    Keystone's rule: ``package.module.Class`` is registered as
    ``openstack.kvs.Class`` (so class names must be unique).  kvs also keeps
    its own forms: the same entry under its dotted path, ``package.module:Class``
    (both names too), and ``name=package.module:Class`` under ``name`` only.
    """
    found: dict[str, tuple[str, str]] = {}
    clashed: set[str] = set()
    for entry in entries:
        name, sep, target = entry.partition("=")
        target = (target if sep else entry).strip()
        module, colon, cls = target.partition(":")
        if not colon:
            module, _, cls = target.rpartition(".")
        if not module or not cls or (sep and not name.strip()):
            raise exception.ConfigurationError(
                f"option 'backends' in section [kvs]: cannot read backend entry {entry!r}",
                option="backends", section="kvs")
        alias = KEYSTONE_PREFIX + cls
        names = [name.strip()] if sep else [alias, entry.strip()]
        for one in names:
            if one in clashed:
                continue
            taken = found.get(one) or _EXTRA_BACKENDS.get(one) or _known_backend(one)
            if one in KEYSTONE_BACKENDS or (taken is not None and taken != (module, cls)):
                if one == alias and not sep:
                    # Two classes of one name: Keystone's short name cannot tell them
                    # apart, so neither gets it; both keep their dotted paths.
                    LOG.warning("[kvs] backends: %r is not registered as %r, which names "
                                "another backend; use its dotted path", entry, one)
                    found.pop(one, None)
                    clashed.add(one)
                    continue
                raise exception.ConfigurationError(
                    f"option 'backends' in section [kvs]: entry {entry!r} would register "
                    f"backend {one!r}, which names another backend already",
                    option="backends", section="kvs")
            found[one] = (module, cls)
    return found


def _known_backend(name: str) -> tuple[str, str] | None:
    """(module, class) of an installed backend called ``name`` (kvs's own, stock ones)."""
    import importlib.metadata

    for point in importlib.metadata.entry_points(group="dogpile.cache", name=name):
        module, _, cls = point.value.partition(":")
        return module.strip(), cls.strip()
    return None


def register_backends(entries: Sequence[str]) -> None:
    """Register ``[kvs] backends`` entries with dogpile.cache (see :func:`backend_entries`).

    Registering the same entries again is harmless; nothing is registered if
    any entry is refused.
    """
    from dogpile.cache import register_backend

    with _EXTRA_BACKENDS_LOCK:
        for name, (module, cls) in backend_entries(entries).items():
            register_backend(name, module, cls)
            _EXTRA_BACKENDS[name] = (module, cls)


def _load_backend_class(name: str) -> type:
    name = KEYSTONE_BACKENDS.get(name, name)
    try:
        return _backend_loader.load(name)  # type: ignore[no-any-return]
    except (dogpile_exception.PluginNotFound, _backend_loader.NotFound):
        pass
    # As Keystone did on first use: the [kvs] backends of the service's conf.
    entries = service_default("backends", [])
    if entries:
        register_backends(entries)
        try:
            return _backend_loader.load(name)  # type: ignore[no-any-return]
        except (dogpile_exception.PluginNotFound, _backend_loader.NotFound):
            pass
    raise exception.ConfigurationError(
        f"unknown backend {name!r}; known backends: {', '.join(known_backends())}",
        option="backend")


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


def _build_proxies(proxy_list: Sequence[Any] | None,
                   seal: security.SealCodec | None) -> list[ProxyBackend]:
    """Proxy instances for one store, outermost first; the security proxy innermost.

    dogpile's ``wrap()`` points an instance at the backend below it, so one
    instance in two chains would wire one store into the other's backend:
    an instance that is already wired, or listed twice, is refused.
    """
    if proxy_list is None:
        proxy_list = []
    if not isinstance(proxy_list, (list, tuple)):
        raise exception.ConfigurationError(
            "proxy_list must be a list or tuple of ProxyBackend classes", option="proxies")
    proxies = [_import_proxy(entry) for entry in proxy_list]
    seen: set[int] = set()
    for proxy in proxies:
        if getattr(proxy, "proxied", None) is not None or id(proxy) in seen:
            raise exception.ConfigurationError(
                f"proxy instance {layer_name(proxy)} is already part of a proxy chain; give "
                f"each store its own instance (or pass the class)", option="proxies",
                layer=layer_name(proxy))
        seen.add(id(proxy))
        if isinstance(proxy, LeaseProxy):
            check_lease_proxy(proxy)
    if seal is not None:
        # Innermost, so it signs exactly the bytes the backend stores.
        proxies.append(security.SecurityProxy(seal))
    return proxies


class KeyValueStore:
    """A named key-value store.  Get one with :func:`get_key_value_store`.

    Thread-safe: configure it once, then use it from any number of threads.
    """

    def __init__(self, name: str, kvs_region: CacheRegion | None = None) -> None:
        self.name = name
        self._region = kvs_region if kvs_region is not None else make_region(name=name)
        self._configure_lock = threading.Lock()
        self._configured = False
        #: configure()'s arguments once it succeeded (to tell a repeat from a change).
        self._configured_with: dict[str, Any] | None = None
        self._inner_mangler: Callable[[str], str] | None = None
        #: The region of memoized entries; functions are decorated with it before
        #: the store is configured, and it is configured on their first call.
        self._memo: CacheRegion = make_region(name=f"{name}#memo")
        self._memo_ready = False
        self.locking = True
        self.lock_timeout = DEFAULT_LOCK_TIMEOUT
        self.lock_wait_timeout = DEFAULT_LOCK_TIMEOUT
        self.key_prefix = name
        self.default_ttl: float | None = None
        self.security_strategy = "none"
        self.backend_name: str | None = None
        self._serializer: serializers.Serializer = serializers.get_serializer(
            serializers.DEFAULT_SERIALIZER)
        self._path: paths.DataPath | None = None
        #: The longest duration the backend can represent (seconds, now).
        self._max_duration: Callable[[], float] = lambda: durations.MAX_SECONDS
        self._key_mangler: Callable[[str], str] = manglers.prefixed(name, None)
        self._max_lock_attempts: int | None = None
        #: The backend that runs update() in one step (memory, sqlite), when
        #: nothing sits in between and locking is on; else None.
        self._one_step: LeaseBackend | None = None
        #: update()'s fn time limit (the holder's view of lock_timeout) and
        #: the backend's lease for it (see kvs.lock.safety_window); None: none.
        self._update_budget: float | None = None
        self._update_lease_ttl: float | None = None

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
        """True when locked writes are fenced by the backend's atomic check."""
        path = self._path
        return isinstance(path, paths.LeasePath) and isinstance(path.leases, LeaseBackend)

    def configure(self, backing_store: str, key_mangler: Callable[[str], str] | None = None,
                  proxy_list: Sequence[Any] | None = None, locking: bool = True,
                  **region_config_args: Any) -> None:
        """Configure the store once.  See the README for every argument.

        Configuring a configured store again with the same arguments does
        nothing; with different ones it raises
        :class:`~kvs.exception.AlreadyConfigured`, naming what differs (never
        the values: they may be secrets).  A call that fails leaves the store
        unconfigured, so it can be retried.
        """
        if backing_store in KEYSTONE_BACKENDS:
            LOG.warning("store %r: backend name %r is deprecated (Keystone's name); use %r",
                        self.name, backing_store, KEYSTONE_BACKENDS[backing_store])
        given = {"backing_store": backing_store, "key_mangler": key_mangler,
                 "proxy_list": list(proxy_list) if isinstance(proxy_list, (list, tuple))
                 else proxy_list, "locking": locking,
                 **region_config_args}
        with self._configure_lock:
            if self._configured or self._region.is_configured:
                before = self._configured_with
                if before is None:  # a region configured by hand, outside configure()
                    raise exception.AlreadyConfigured(
                        f"store {self.name!r} is already configured (its region was "
                        f"configured directly)", store=self.name)
                differ = sorted(name for name in set(before) | set(given)
                                if name not in before or name not in given
                                or not _same(before[name], given[name]))
                if differ:
                    raise exception.AlreadyConfigured(
                        f"store {self.name!r} is already configured; this configuration "
                        f"differs in {', '.join(differ)} (reconfiguring is not supported: "
                        f"use kvs.testing.reset_registry() in tests, or a new store name)",
                        store=self.name, differs=differ)
                return  # the same configuration again: nothing to do
            self._configure(backing_store, key_mangler, proxy_list, locking,
                            dict(region_config_args))
            self._configured_with = given
            self._configured = True

    def _configure(self, backing_store: str, key_mangler: Callable[[str], str] | None,
                   proxy_list: Sequence[Any] | None, locking: bool,
                   args: dict[str, Any]) -> None:
        # Everything that can fail is checked before region.configure(): once
        # the region holds a backend it cannot be configured again.
        backing_store = KEYSTONE_BACKENDS.get(backing_store, backing_store)
        backend_cls: Any = _load_backend_class(backing_store)
        max_duration = getattr(backend_cls, "max_duration", None)
        if max_duration is None:
            max_duration = self._max_duration
        settings = self._store_settings(args, max_duration())
        _near_cache_arguments(backing_store, backend_cls, args, settings["key_prefix"])
        self._check_backend_arguments(backing_store, backend_cls, args, settings["default_ttl"])
        if key_mangler is not None and not callable(key_mangler):
            raise exception.ConfigurationError("key_mangler must be callable", option="key_mangler")
        proxies = _build_proxies(proxy_list, settings["seal"])
        blocker = next((proxy for proxy in proxies if not paths.carries_writes(proxy)), None)
        if blocker is not None and settings["default_ttl"] is not None:
            raise exception.UnsupportedProxy(
                f"default_ttl for store {self.name!r} needs every proxy to be a "
                f"kvs.proxy.LeaseProxy; {layer_name(blocker)} is not",
                layer=layer_name(blocker), option="default_ttl")
        stock = None
        if not issubclass(backend_cls, LeaseBackend):
            if locking:
                stock_lock_arguments(backend_cls, settings["lock_timeout"], args)
            timeout = args.get("lock_timeout") if args.get("distributed_lock") else None
            stock = StockLeases(self._region, None if timeout is None else float(timeout))
            proxies.append(paths.StockWrites(stock, backing_store))
        self._configure_region(backing_store, args, proxies)
        path = paths.choose(self._region, backing_store, stock)
        backend = self._region.actual_backend
        mangler = self._choose_mangler(key_mangler, backend, settings)
        self._key_mangler = manglers.prefixed(settings["key_prefix"], mangler)
        self._inner_mangler = mangler
        self._region.key_mangler = self._key_mangler
        # As Keystone did: the backend gets the store's mangler, so it can
        # compute backend keys itself (kvs.memcached's no_expiry_keys).
        try:
            backend.key_mangler = self._key_mangler
        except AttributeError:  # a read-only mangler: the backend manages its own
            LOG.debug("store %r: backend %s keeps its own key_mangler", self.name,
                      type(backend).__name__)
        #: kvs.memcached's max_lock_attempts (Keystone's): acquire()'s attempts.
        self._max_lock_attempts = getattr(backend, "max_lock_attempts", None)
        self._region.serializer = settings["codec"].dumps
        self._region.deserializer = serializers.checked_loads(settings["codec"])
        self._path = path
        self._max_duration = max_duration
        self._serializer = settings["codec"]
        self.locking = bool(locking)
        self.lock_timeout = settings["lock_timeout"]
        self.lock_wait_timeout = settings["lock_wait_timeout"]
        self._set_update_constants(path)
        self.key_prefix = settings["key_prefix"]
        self.default_ttl = settings["default_ttl"]
        self.security_strategy = settings["strategy"]
        self.backend_name = backing_store
        self._warn_about(path, settings)

    @staticmethod
    def _choose_mangler(explicit: Callable[[str], str] | None, backend: Any,
                        settings: dict[str, Any]) -> Callable[[str], str] | None:
        """The mangler of the user's keys, with Keystone's precedence.

        A backend whose class sets ``use_backend_key_mangler = True`` and has a
        mangler of its own wins; then the explicit one; then the backend's own;
        then (with ``enable_key_mangler``) names keyed by the secret when
        values are sealed (see kvs.security), or SHA-1, unless the backend's
        keys need no hashing (``plain_keys``, known once its file is open).
        """
        own = getattr(backend, "key_mangler", None)
        own = own if callable(own) else None
        if own is not None and (explicit is None
                                or getattr(backend, "use_backend_key_mangler", False)):
            return own
        if explicit is not None or not settings["enable_key_mangler"]:
            return explicit
        if settings["seal"] is not None:
            return security.keyed_mangler(settings["seal"])
        if getattr(backend, "plain_keys", False):
            return None
        return manglers.sha1_mangle_key

    def _store_settings(self, args: dict[str, Any], maximum: float) -> dict[str, Any]:
        """Pop and validate the arguments the store consumes itself."""
        # The backend keeps a lease for lock_timeout plus its safety window.
        default_timeout = service_default("default_lock_timeout", DEFAULT_LOCK_TIMEOUT)
        lock_timeout = args.pop("lock_timeout", None)
        lock_timeout = durations.seconds(
            "lock_timeout", default_timeout if lock_timeout is None else lock_timeout,
            maximum - 2)
        wait = args.pop("lock_wait_timeout", None)
        if wait is None:
            # 0 means "never expires", not "never wait": waiting forever for a
            # lease that never expires would hang, so wait the default instead.
            wait = (lock_timeout if lock_timeout > 0
                    else default_timeout if default_timeout > 0 else DEFAULT_LOCK_TIMEOUT)
        mangle = args.pop("enable_key_mangler", None)
        key_prefix = args.pop("key_prefix", None)
        strategy = args.pop("security_strategy", None) or "none"
        return {
            "lock_timeout": lock_timeout,
            "lock_wait_timeout": durations.seconds("lock_wait_timeout", wait, maximum),
            "key_prefix": self.name if key_prefix is None else str(key_prefix),
            "codec": serializers.get_serializer(
                args.pop("serializer", None) or serializers.DEFAULT_SERIALIZER),
            "default_ttl": durations.ttl("default_ttl", args.pop("default_ttl", None), maximum),
            "enable_key_mangler": bool(service_default("enable_key_mangler", True)
                                       if mangle is None else mangle),
            "strategy": strategy,
            "seal": security.make_codec(strategy, args.pop("secret_key", None),
                                        args.pop("secret_keys", None)),
        }

    @staticmethod
    def _check_backend_arguments(backing_store: str, backend_cls: Any, args: dict[str, Any],
                                 default_ttl: float | None) -> None:
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

    def _configure_region(self, backing_store: str, args: dict[str, Any],
                          proxies: list[ProxyBackend]) -> None:
        try:
            self._region.configure(backing_store, arguments=args, wrap=proxies)
        except exception.KVSError:
            raise
        except ImportError as exc:  # a stock backend whose client library is missing
            raise exception.ConfigurationError(
                f"backend {backing_store} for store {self.name!r} needs the Python package "
                f"{exc.name or 'its client library'!r}, which is not installed",
                option="backend") from None
        except dogpile_exception.DogpileCacheException as exc:
            raise exception.ConfigurationError(
                f"backend {backing_store} for store {self.name!r}: {exc}",
                option="backend") from None
        except (TypeError, ValueError, KeyError) as exc:
            raise exception.ConfigurationError(
                f"backend {backing_store} rejected its arguments for store {self.name!r}: "
                f"{type(exc).__name__}", option="backend_argument") from None

    def _warn_about(self, path: paths.DataPath, settings: dict[str, Any]) -> None:
        if not isinstance(path.leases, LeaseBackend) and self.locking:
            LOG.warning(
                "store %r uses stock backend %s: locks use dogpile's get_mutex and a "
                "client-side clock check; writes under a lock are NOT fenced",
                self.name, self.backend_name)
        elif isinstance(path, paths.DogpilePath) and path.blocker is not None:
            LOG.warning(
                "store %r: proxy %s is a plain dogpile ProxyBackend, so locked writes and "
                "per-call TTLs are refused (UnsupportedProxy); make it a kvs.proxy.LeaseProxy",
                self.name, layer_name(path.blocker))
        if settings["codec"].name == "pickle" and settings["seal"] is None:
            LOG.warning("store %r uses the pickle serializer without a security_strategy: "
                        "anyone who can write to its backend can run code in this process",
                        self.name)

    # -- helpers ------------------------------------------------------------

    def _set_update_constants(self, path: paths.DataPath) -> None:
        """update()'s per-store constants, worked out once instead of per call."""
        backend = path.backend
        self._one_step = backend if (self.locking and backend is not None
                                     and backend.updates_in_one_step) else None
        lock_timeout = self.lock_timeout
        if lock_timeout:
            window = safety_window(lock_timeout)
            self._update_budget = lock_timeout - window
            self._update_lease_ttl = lock_timeout + window
        else:
            self._update_budget = self._update_lease_ttl = None

    def _require_path(self) -> paths.DataPath:
        path = self._path
        if path is None:
            raise exception.NotConfigured(
                f"store {self.name!r} is not configured", store=self.name)
        return path

    def backend_key(self, key: str) -> str:
        """The key ``key`` is stored under in the backend (prefixed and mangled)."""
        return self._key_mangler(key)

    def _ttl(self, ttl: float | None) -> float | None:
        if ttl is None:
            return self.default_ttl
        checked = durations.ttl("ttl", ttl, self._max_duration())
        if self._path is not None and not isinstance(self._path.leases, LeaseBackend):
            raise paths.no_ttl_on_stock(str(self.backend_name))  # before anything is sent
        return checked

    def _decode(self, stored: Any) -> Any:
        return NO_VALUE if stored is NO_VALUE else self._serializer.unpack(stored)

    def translate_error(self, exc: Exception, operation: str,
                        args: tuple[Any, ...]) -> BaseException | None:
        """The error to raise instead of ``exc`` (None: let it through).

        Names the user's key (the method's first argument) and the store.
        """
        key = args[0] if args else None
        if isinstance(key, Mapping):
            key = list(key)
        elif isinstance(key, (list, tuple)) and len(key) == 1:
            key = key[0]
        if isinstance(exc, _RENAMED):
            if exc.context.get("store") == self.name:
                return None  # already named by this store
            return type(exc)(f"key {key!r} in store {self.name!r}: {exc.message}",
                             key=key, store=self.name)
        if isinstance(exc, exception.KVSError):
            return None
        if operation in _READS and isinstance(exc, (ValueError, UnicodeDecodeError)):
            # dogpile's metadata parsing failed: bytes written by someone else.
            return exception.CorruptValue(
                f"key {key!r} in store {self.name!r} holds bytes that are not a kvs value "
                f"({type(exc).__name__})", key=key, store=self.name)
        if type(exc).__name__ == "MemcacheIllegalInputError":
            # A stock memcached backend refusing a raw key (enable_key_mangler = false).
            return exception.InvalidKey(
                f"key {key!r} in store {self.name!r} is not a valid memcached key "
                f"(spaces, control characters or over 250 bytes); enable the key mangler",
                key=key, store=self.name)
        if isinstance(exc, (ConnectionError, TimeoutError, OSError)) or \
                type(exc).__module__.split(".")[0] in _CLIENT_LIBRARIES:
            return exception.BackendUnavailable(
                f"backend {self.backend_name} of store {self.name!r} failed: "
                f"{type(exc).__name__}", store=self.name)
        return None

    def _check_lock(self, key: str, lock: KeyValueStoreLock) -> bool:
        """Check ``lock`` for a write to ``key``; True if the write must be fenced.

        A lock of a ``locking=False`` store is checked here (key, timeout) and
        the write is plain; an enabled lock is checked by ``lock.fenced``.
        """
        if type(lock) is not KeyValueStoreLock and not isinstance(lock, KeyValueStoreLock):
            raise TypeError(f"lock must be a KeyValueStoreLock, not {type(lock).__name__}")
        assert self._path is not None
        if not lock.issued_by(self._path.leases):
            raise ValueError(f"lock on key {lock.key!r} belongs to store {lock.store!r}, "
                             f"not {self.name!r}")
        if lock.enabled:
            return True
        lock.check(for_key=key)
        return False

    # -- reads --------------------------------------------------------------

    def get(self, key: str) -> Any:
        """Return the value of ``key``; raise :class:`~kvs.exception.NotFound` if missing."""
        try:  # the hot path: raise_translated instead of a @translated frame
            path = self._path or self._require_path()
            stored = path.get(self._key_mangler(key))
            if stored is NO_VALUE:
                raise exception.NotFound(key, store=self.name)
            return self._serializer.unpack(stored)
        except Exception as exc:
            raise_translated(self, exc, "get", (key,))

    def exists(self, key: str) -> bool:
        """True if ``key`` holds a value (it may still expire right after)."""
        try:
            self.get(key)
        except exception.NotFound:
            return False
        return True

    @translated
    def get_multi(self, keys: Iterable[str]) -> list[Any]:
        """Values in key order; NotFound listing every missing key if any is missing."""
        path = self._path or self._require_path()
        keys = list(keys)
        if not keys:
            return []
        stored = path.get_multi(self._mangle_all(keys))  # every key checked before the read
        # all() first: NO_VALUE is falsy and stored bytes are not, and a truth
        # test costs a tenth of comparing every item with NO_VALUE.
        if not all(stored) and NO_VALUE in stored:
            missing = [key for key, item in zip(keys, stored) if item is NO_VALUE]
            raise exception.NotFound(missing, store=self.name)
        try:
            return self._serializer.unpack_many(stored)  # type: ignore[arg-type]  # none is NO_VALUE
        except exception.CorruptValue as exc:
            raise self._name_corrupt(keys, stored, exc) from None

    def _mangle_all(self, keys: list[str]) -> list[str]:
        """The store's mangler on every key, in bulk where it offers it (manglers.prefixed:
        a call per key is a tenth of a get_multi)."""
        mangle = self._key_mangler
        mangle_all = getattr(mangle, "mangle_all", None)
        return mangle_all(keys) if mangle_all is not None else list(map(mangle, keys))

    def _name_corrupt(self, keys: list[str], stored: list[Any],
                      exc: exception.CorruptValue) -> Exception:
        """The CorruptValue of get_multi naming the first key whose value is damaged
        (decoded again one by one, with the same checks; only on this error path)."""
        unpack_many = self._serializer.unpack_many
        for key, item in zip(keys, stored):
            try:
                unpack_many([item])
            except exception.CorruptValue as single:
                return exception.CorruptValue(
                    f"key {key!r} in store {self.name!r}: {single.message}",
                    key=key, store=self.name)
        return exc  # not one alone: translate_error names every key

    # -- writes -------------------------------------------------------------

    def set(self, key: str, value: Any, lock: KeyValueStoreLock | None = None,
            ttl: float | None = None) -> None:
        """Store ``value``.  With ``lock=``, only if that lease is still ours."""
        try:  # the hot path: raise_translated instead of a @translated frame
            path = self._path or self._require_path()
            if lock is None:
                mangled = self._key_mangler(key)
                ttl = self.default_ttl if ttl is None else self._ttl(ttl)
                path.set(mangled, self._serializer.pack(value), ttl)
                return
            if type(lock) is KeyValueStoreLock and key == lock.key:
                mangled = lock.lease_key  # the key, checked and mangled by get_lock
            else:
                mangled = self._key_mangler(key)
            ttl = self.default_ttl if ttl is None else self._ttl(ttl)
            # Every locked write: _check_lock and lock.fenced() written out for a
            # lock of this store.
            if (type(lock) is KeyValueStoreLock and lock.enabled
                    and lock._leases is path.leases) or self._check_lock(key, lock):
                data = self._serializer.pack(value)
                # lock.write_token(key) written out for a held lock still within
                # its time (a call frame is a tenth of the whole write here);
                # anything else goes through it, which raises the right error.
                valid_until = lock._valid_until
                if key == lock.key and lock._state is _HELD and (
                        valid_until is None or time.monotonic() < valid_until):
                    token: str = lock.token  # type: ignore[assignment]  # set while HELD
                else:
                    token = lock.write_token(key)
                if path.fenced_set(mangled, data, token, ttl) is _LEASE_LOST:
                    lock.lose()
            else:  # locking=False: key and timeout checked, plain write
                path.set(mangled, self._serializer.pack(value), ttl)
        except Exception as exc:
            raise_translated(self, exc, "set", (key,))

    @translated
    def set_multi(self, mapping: Mapping[str, Any], ttl: float | None = None) -> None:
        """Store several values (atomically where the backend allows).  No lock.

        Every value is encoded before anything is written.
        """
        path = self._require_path()
        mapping = dict(mapping)
        mangle = self._key_mangler  # checks every key before anything is encoded
        mangled = [mangle(key) for key in mapping]
        if not mapping:
            return
        ttl = self._ttl(ttl)
        dumps, head = self._serializer.encode, serializers.header()
        encoded = {}
        for backend_key, (key, value) in zip(mangled, mapping.items()):
            encoded[backend_key] = self._encode_named(key, head, dumps, value)
        path.set_multi(encoded, ttl)

    def _encode_named(self, key: str, head: bytes, dumps: Callable[[Any], bytes | memoryview],
                      value: Any) -> bytes:
        """One value of set_multi; an encoding error names that key, not all of them."""
        try:
            return head + dumps(value)
        except exception.SerializationError as exc:
            raise exception.SerializationError(
                f"key {key!r} in store {self.name!r}: {exc.message}",
                key=key, store=self.name) from exc

    @translated
    def delete(self, key: str, lock: KeyValueStoreLock | None = None) -> None:
        """Delete ``key``; raise :class:`~kvs.exception.NotFound` if it does not exist."""
        path = self._require_path()
        mangled = self._key_mangler(key)
        if lock is not None and self._check_lock(key, lock):
            found = lock.fenced(
                key, lambda token: path.fenced_delete(mangled, token)) is Fenced.WRITTEN
        else:
            found = path.delete(mangled)
        if not found:
            raise exception.NotFound(key, store=self.name)

    @translated
    def delete_multi(self, keys: Iterable[str]) -> None:
        """Delete every key that exists; missing keys are fine.  No lock."""
        path = self._require_path()
        mangled = [self._key_mangler(key) for key in keys]
        if mangled:
            path.delete_multi(mangled)

    # -- locking ------------------------------------------------------------

    def memoize(self, expiration_time: float | None = None, namespace: str | None = None,
                should_cache_fn: Callable[[Any], bool] | None = None
                ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """A decorator that caches a function's results in this store.

        In the style of oslo.cache's ``get_memoization_decorator``: entries
        live in a namespace of their own (``<key_prefix>#memo:``), expire
        after ``expiration_time`` seconds, are regenerated by one process at a
        time, and keep their type or are refused.  See :mod:`kvs.memoize`.
        """
        from kvs import memoize

        return memoize.memoize(self, expiration_time, namespace, should_cache_fn)

    def _memo_key_parts(self) -> tuple[str, Callable[[str], str] | None]:
        self._require_path()
        return self.key_prefix, self._inner_mangler

    def _ready_memo_region(self) -> None:
        """Configure the region of memoized entries on first use (see :mod:`kvs.memoize`)."""
        if self._memo_ready:
            return
        with self._configure_lock:
            if not self._memo_ready:
                from kvs import memoize

                memoize.configure_memo_region(self._memo, self)
                self._memo_ready = True

    def get_lock(self, key: str, lock_timeout: float | None = None,
                 lock_wait_timeout: float | None = None) -> KeyValueStoreLock:
        """A write lease on ``key``, not yet acquired.

        ``lock_timeout``/``lock_wait_timeout`` override the store's for this lock.
        """
        path = self._path or self._require_path()
        mangled = self._key_mangler(key)  # checks the key
        timeout, wait = self.lock_timeout, self.lock_wait_timeout
        if lock_timeout is not None:
            timeout = durations.seconds("lock_timeout", lock_timeout, self._max_duration() - 2)
        if lock_wait_timeout is not None:
            wait = durations.seconds("lock_wait_timeout", lock_wait_timeout,
                                     self._max_duration())
        return KeyValueStoreLock(path.leases, key, mangled, timeout, wait, self.locking,
                                 self.name, self._max_duration, self._max_lock_attempts)

    def lease_info(self, key: str) -> LeaseInfo | None:
        """Who holds the lease on ``key`` right now (token, fence, time left)."""
        path = self._require_path()
        return path.leases.lease_info(self._key_mangler(key))

    def break_lock(self, key: str) -> bool:
        """Operator override: drop the lease on ``key`` whoever holds it.

        The old holder's next fenced write is refused.  Returns whether a lease
        was there.
        """
        path = self._require_path()
        leases: Any = path.leases
        return bool(leases.break_lease(self._key_mangler(key)))

    def update(self, key: str, fn: Callable[[Any], Any], default: Any = _NO_DEFAULT,
               ttl: float | None = None) -> Any:
        """Atomic read-modify-write of ``key`` under a fenced lease.

        Reads the value (or ``default``; with no default a missing key raises
        NotFound), writes ``fn(value)`` as a fenced write, releases the lease
        and returns the new value.  Raises LockTimeout, writing nothing, if the
        lease is lost meanwhile.
        """
        one_step = self._one_step
        if one_step is not None:
            # update() on a backend that runs it atomically in one step (sqlite,
            # memory), written out here: a frame more is a twentieth of an
            # update() on kvs.memory.  The same rules as under a lease: another
            # holder's lease makes it wait up to lock_wait_timeout; fn running
            # past the holder's view of lock_timeout raises LockTimeout and
            # writes nothing; fn raising writes nothing.
            mangled = self._key_mangler(key)  # checks the key
            ttl = self.default_ttl if ttl is None else self._ttl(ttl)
            # What change() reads comes in as defaults and what it hands out
            # goes into ``out`` (the new value, fn's own error): a closure would
            # make a cell per name on every call, a seventh of an update() on
            # kvs.memory.  change runs at most once per update_value.
            out: list[Any] = [None, None]

            def change(stored: Any, store: KeyValueStore = self, key: str = key,
                       fn: Callable[[Any], Any] = fn, default: Any = default,
                       out: list[Any] = out) -> bytes:
                started = time.monotonic()
                if stored is not NO_VALUE:
                    current = store._serializer.unpack(stored)
                elif default is _NO_DEFAULT:
                    raise exception.NotFound(key, store=store.name)
                else:
                    current = default
                try:
                    value = fn(current)
                except BaseException as error:
                    out[1] = error  # fn's own error reaches the caller unchanged
                    raise
                budget = store._update_budget
                if budget is not None and time.monotonic() - started >= budget:
                    raise exception.LockTimeout(
                        f"lock timeout occurred for key {key!r} in store {store.name!r} "
                        f"(update's fn ran past lock_timeout={store.lock_timeout} s); "
                        f"nothing was written", key=key, store=store.name)
                out[0] = value
                return store._serializer.pack(value)

            try:
                outcome = one_step.update_value(mangled, change, ttl, self._update_lease_ttl)
                if outcome is not _WRITTEN:
                    self._update_again(one_step, key, mangled, change, ttl, outcome)
                return out[0]
            except Exception as exc:
                if out[1] is exc:
                    raise
                raise_translated(self, exc, "update", (key,))
        path = self._path or self._require_path()
        mangled = self._key_mangler(key)  # checks the key
        ttl = self.default_ttl if ttl is None else self._ttl(ttl)
        backend = path.backend
        if self.locking:
            if backend is not None:  # nothing in between: the backend carries every write
                return self._update_in_two_round_trips(backend, self.get_lock(key), fn,
                                                       default, ttl)
            # Refuse before fn runs (and has side effects), not at the write.
            path.check_fenced_write(ttl)
        lock = self.get_lock(key)
        lock.acquire()
        try:
            try:
                current = self.get(key)
            except exception.NotFound:
                if default is _NO_DEFAULT:
                    raise
                current = default
            new = fn(current)
            self.set(key, new, lock=lock, ttl=ttl)
        except BaseException:
            _release_keeping_the_error(lock)
            raise
        lock.release()
        return new

    def _update_again(self, backend: LeaseBackend, key: str, mangled: str,
                      change: Callable[[bytes | Any], bytes], ttl: float | None,
                      outcome: Fenced | None) -> None:
        """The rest of a one-step update() whose first try did not write.

        A lease another holder has makes it wait for a release and try again,
        up to ``lock_wait_timeout``.  Returns once ``change`` was written.
        """
        deadline = None
        while True:
            if outcome is _LEASE_LOST:
                raise exception.LeaseLost(
                    f"lease on key {key!r} in store {self.name!r} was broken during "
                    f"update(); nothing was written", key=key, store=self.name)
            now = time.monotonic()
            if deadline is None:
                deadline = now + self.lock_wait_timeout
            if now >= deadline:
                raise exception.LockAcquireTimeout(
                    f"could not lock key {key!r} in store {self.name!r} within "
                    f"{self.lock_wait_timeout} s", key=key, store=self.name)
            backend.wait_for_release(mangled, deadline - now)
            outcome = backend.update_value(mangled, change, ttl, self._update_lease_ttl)
            if outcome is _WRITTEN:
                return

    def _update_in_two_round_trips(self, backend: LeaseBackend, lock: KeyValueStoreLock,
                                   fn: Callable[[Any], Any], default: Any,
                                   ttl: float | None) -> Any:
        """update() with no proxy: acquire+read, then fenced write+release."""
        key = lock.key
        try:  # fn runs outside: its own errors reach the caller unchanged
            stored = lock.acquire_and_get(backend)
            try:
                if stored is not NO_VALUE:
                    current = self._serializer.unpack(stored)
                elif default is _NO_DEFAULT:
                    raise exception.NotFound(key, store=self.name)
                else:
                    current = default
            except BaseException:
                _release_keeping_the_error(lock)
                raise
        except Exception as exc:
            raise_translated(self, exc, "update", (key,))
        try:
            new = fn(current)
            try:
                data = self._serializer.pack(new)
                lock.fenced_and_release(lambda token: backend.fenced_set_and_release(
                    lock.lease_key, data, token, ttl))
            except Exception as exc:
                raise_translated(self, exc, "update", (key,))
        except BaseException:
            _release_keeping_the_error(lock)
            raise
        return new

    # -- health -------------------------------------------------------------

    @translated
    def ping(self) -> None:
        """Raise :class:`~kvs.exception.BackendUnavailable` if the backend is unreachable."""
        path = self._require_path()
        if isinstance(path.leases, LeaseBackend):
            path.leases.ping()
        else:  # a key every backend accepts, mangled or not
            path.get(self._key_mangler("kvs-ping"))


def _near_cache_arguments(backing_store: str, backend_cls: Any, args: dict[str, Any],
                          key_prefix: str) -> None:
    """``near_cache`` and ``near_cache_size``: only where the backend has a near cache
    (kvs.redis, kvs.redis_sentinel); it tracks the store's key prefix."""
    if "near_cache_prefix" in args:
        raise exception.ConfigurationError(
            "near_cache_prefix is set by the store from its key_prefix", option="near_cache_prefix")
    wanted = args.get("near_cache")
    if wanted is None and "near_cache_size" not in args:
        return
    offered = "near_cache" in getattr(backend_cls, "arguments", {})
    if not offered:
        if wanted in (None, False, "false", "no", "off", "0", 0):
            args.pop("near_cache", None)
            args.pop("near_cache_size", None)
            return
        raise exception.ConfigurationError(
            f"near_cache is offered by kvs.redis and kvs.redis_sentinel only, not by "
            f"{backing_store}: its coherence needs Redis's server-assisted invalidation",
            option="near_cache")
    args["near_cache_prefix"] = key_prefix


def _same(before: Any, now: Any) -> bool:
    """Two configure() argument values are the same (callables and objects: the same one)."""
    if before is now:
        return True
    try:
        return bool(before == now)
    except Exception:  # an object whose == refuses to compare
        return False


def _release_keeping_the_error(lock: KeyValueStoreLock) -> None:
    """Release while another error is on its way up: a failed release must not hide it.

    The lease then ends with its TTL; the failure is logged.
    """
    try:
        lock.release()
    except exception.KVSError as error:
        LOG.warning("could not release the lock on key %r in store %r after an error: %s",
                    lock.key, lock.store, error.message)


#: Store methods whose ValueErrors from below mean "foreign bytes".
_READS = frozenset({"get", "get_multi"})


# -- the service's [kvs] defaults ------------------------------------------------

#: The ConfigOpts given to :func:`kvs.register_opts`: its ``[kvs]`` options are
#: the defaults of every ``configure()`` in this process (read at configure time,
#: so after the service has parsed its files).  None: kvs's built-in defaults.
_SERVICE_CONF: Any = None


def use_service_defaults(conf: Any) -> None:
    """Take ``configure()``'s defaults from ``conf``'s ``[kvs]`` section (None: built-in)."""
    global _SERVICE_CONF
    _SERVICE_CONF = conf


def service_default(option: str, fallback: Any) -> Any:
    """``[kvs] <option>`` of the service's config, or ``fallback`` without one."""
    conf = _SERVICE_CONF
    if conf is None:
        return fallback
    try:
        return getattr(conf.kvs, option)
    except (ValueError, KeyError, AttributeError):
        # oslo's message may quote the value; name the option only.
        raise exception.ConfigurationError(
            f"option {option!r} in section [kvs]: invalid value", option=option,
            section="kvs") from None


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
