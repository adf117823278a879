"""Every error kvs raises on purpose.

Each class derives from :class:`KVSError` and also from the builtin that fits,
so callers who only know the builtins (``KeyError``, ``ValueError``,
``TypeError``) still catch the right thing.

A message names the key, store, option or host involved.  It never contains a
password or any other secret: exceptions built from configuration only ever
carry option *names* and host names, never option values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


class KVSError(Exception):
    """Base class of every error raised on purpose by kvs."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        #: What the error is about: ``key``, ``store``, ``option``, ``host``...
        self.context = context

    def __str__(self) -> str:
        return self.message


class NotFound(KVSError, KeyError):
    """A key (or several, for ``get_multi``) does not exist or has expired."""

    def __init__(self, keys: str | Sequence[str], store: str | None = None) -> None:
        self.keys: list[str] = [keys] if isinstance(keys, str) else list(keys)
        where = f" in store {store!r}" if store else ""
        if len(self.keys) == 1:
            message = f"key {self.keys[0]!r} not found{where}"
        else:
            message = f"keys {self.keys!r} not found{where}"
        super().__init__(message, keys=self.keys, store=store)

    @property
    def key(self) -> str:
        return self.keys[0]


class InvalidKey(KVSError, TypeError):
    """A key is not a ``str``.  Raised before any backend call."""


class LockTimeout(KVSError):
    """A lease expired, was taken over, or could not be taken in time."""


class LockAcquireTimeout(LockTimeout):
    """``acquire()`` waited ``lock_wait_timeout`` seconds without getting the lease."""


class LeaseLost(LockTimeout):
    """The backend refused a fenced write: the lease is no longer ours.

    Unlike a plain :class:`LockTimeout` raised by the client-side clock check,
    this one comes from the backend's atomic ownership check.
    """


class UnsupportedProxy(KVSError, RuntimeError):
    """A proxy between the store and the backend cannot carry this write.

    Raised for a locked write (or a write with a per-call TTL) when a layer of
    the store's ``proxy_list`` is a plain dogpile ``ProxyBackend`` rather than
    a :class:`kvs.proxy.LeaseProxy`.  Raised before anything is sent: nothing
    was written.  ``context["layer"]`` names the proxy class.
    """


class UnconfirmedWrite(KVSError, RuntimeError):
    """A layer returned no fenced-write outcome, so the write cannot be confirmed.

    A :class:`kvs.proxy.LeaseProxy` must return what the layer below it
    returned.  One that returned something else (``None``: it swallowed the
    call) is named in ``context["layer"]``.  The store does not report success
    for such a write; whether it landed is unknown.
    """


class ConfigurationError(KVSError, ValueError):
    """A configuration value, option or ``configure()`` argument is wrong."""


class BrokenStores(ConfigurationError):
    """One or more ``[store:NAME]`` sections could not be configured.

    Raised by :func:`kvs.configure_stores` after it has configured every
    healthy store.  ``errors`` maps each broken section to its own error
    (a :class:`ConfigurationError`, or :class:`AlreadyConfigured`,
    :class:`BackendUnavailable`...); ``stores`` holds the stores that were
    configured.  With one broken section, ``context`` is that section's.
    """

    def __init__(self, errors: dict[str, KVSError], stores: dict[str, Any]) -> None:
        listed = "; ".join(error.message for error in errors.values())
        sections = ", ".join(f"[{section}]" for section in errors)
        count = "a store section" if len(errors) == 1 else f"{len(errors)} store sections"
        single = next(iter(errors.values())).context if len(errors) == 1 else {}
        super().__init__(f"{count} could not be configured ({sections}): {listed}",
                         **{**single, "sections": list(errors)})
        self.errors = errors
        self.stores = stores


class AlreadyConfigured(KVSError, RuntimeError):
    """``configure()`` was called on a store that is already configured."""


class NotConfigured(KVSError, RuntimeError):
    """A data call was made on a store that is not configured yet."""


class BackendUnavailable(KVSError, ConnectionError):
    """The backend (a server, or the SQLite file) cannot be reached or used.

    The message names the host or file, never a password.
    """


class SerializationError(KVSError, TypeError):
    """A value cannot be serialized.  Raised before anything is written."""


class CorruptValue(KVSError, ValueError):
    """Bytes stored under a key cannot be decoded by this store's serializer."""


class TamperedValue(KVSError, ValueError):
    """A stored value failed its signature or decryption check (forged, altered or moved)."""


class ValueTooLarge(KVSError, ValueError):
    """A serialized value is larger than the store or backend accepts."""


class Locked(KVSError, PermissionError):
    """A declared store or endpoint is locked out and the right lockout key was not given.

    Lockout keys are dripline-style ownership tokens (see ``kvs.provider``),
    separate from the per-key write leases.  The message never shows a key.
    """


#: The name the provider brief uses for :class:`Locked`.
LockedOut = Locked


class CalibrationError(KVSError, ValueError):
    """An endpoint's calibration could not be applied to a raw value.

    ``value_raw`` carries the raw value that was read, so a caller still has it.
    """

    def __init__(self, message: str, value_raw: Any = None, **context: Any) -> None:
        super().__init__(message, **context)
        self.value_raw = value_raw
        #: The partial result: what a get returns when calibration fails.
        self.result = {"value_raw": value_raw}


def names(items: Iterable[str]) -> str:
    """Join names for a message: ``a, b, c``."""
    return ", ".join(sorted(items))
