"""Memoization on a store, in the style of oslo.cache's ``get_memoization_decorator``.

``store.memoize()`` (or ``kvs.memoize.memoize(store)``) returns dogpile's
``cache_on_arguments`` decorator on a region of its own that shares the
store's backend, proxies and seal:

* **A namespace of its own.** Memoized entries are stored under
  ``<key_prefix>#memo:`` where the store's keys are ``<key_prefix>:``, so no
  ``store.get``/``store.set`` of a user key can read or clobber them (a store
  whose keys are neither prefixed nor hashed has no such room: refused).
* **Expiry** is dogpile's: after ``expiration_time`` seconds the next call
  regenerates the value while concurrent callers keep getting the old one.
  Entries nobody calls for stay in the backend (as with oslo.cache).
* **Single flight across processes.** dogpile takes the backend's mutex
  before it runs the function; on ``kvs.*`` backends that is a lease
  (:mod:`kvs.backends.mutex`), so one process regenerates and the others wait
  for its value.
* **Types are kept or refused.** A result comes back with the type it had:
  with msgpack a tuple stays a tuple (an extension type, inside memoized
  entries only); a type the store's serializer cannot keep exactly (a set, a
  dict subclass, a tuple with json) raises
  :class:`~kvs.exception.SerializationError` at the first call, before
  anything is stored.  pickle keeps everything (read the warning on pickle).

Thread-safe, as dogpile's regions are.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dogpile.cache.proxy import ProxyBackend
from dogpile.cache.region import CacheRegion

from kvs import exception, manglers, serializers

if TYPE_CHECKING:
    from kvs.core import KeyValueStore

#: What memoized keys add to the store's key prefix: ``<prefix>#memo:<key>``.
NAMESPACE_SUFFIX = "#memo"

def _exact_json(value: Any) -> None:
    """json keeps None, bool, int, float, str, list and str-keyed dict: refuse the rest."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"dict keys must be str with json, not {type(key).__name__}")
            _exact_json(item)
    elif kind is list:
        for item in value:
            _exact_json(item)
    elif kind not in (type(None), bool, int, float, str):
        raise TypeError(f"{kind.__name__} results cannot be memoized with json "
                        f"(it would not come back as a {kind.__name__})")


class MemoCodec:
    """Payload codec of memoized entries: the store's serializer, types kept exactly."""

    def __init__(self, serializer: serializers.Serializer) -> None:
        self.name = serializer.name
        self._serializer = serializer

    def dumps(self, value: Any) -> bytes:
        try:
            if self.name == "msgpack":
                return serializers.exact_dumps(value)
            if self.name == "json":
                _exact_json(value)
        except exception.SerializationError as error:
            raise exception.SerializationError(f"cannot memoize this result: {error.message}",
                                               codec=self.name) from None
        except (TypeError, ValueError, OverflowError) as error:
            raise exception.SerializationError(f"cannot memoize this result: {error}",
                                               codec=self.name) from None
        return self._serializer.dumps(value)

    def loads(self, data: bytes) -> Any:
        try:
            if self.name == "msgpack":
                return serializers.exact_loads(data)
            return self._serializer.loads(data)
        except Exception as error:  # every decoder has its own exception zoo
            raise exception.CorruptValue(
                f"a memoized entry cannot be decoded with {self.name}: "
                f"{type(error).__name__}") from None


class _SharedBackend(ProxyBackend):
    """Puts the store's whole backend chain (proxies, seal) under the memo region."""

    def __init__(self, chain: Any) -> None:
        super().__init__()
        self._chain = chain

    def wrap(self, backend: Any) -> _SharedBackend:
        # The region's own backend is dogpile.cache.null, a placeholder: every
        # call goes to the store's chain instead.
        self.proxied = self._chain
        return self


def configure_memo_region(region: CacheRegion, store: KeyValueStore) -> None:
    """Point ``region`` at ``store``'s backend, with keys ``<prefix>#memo:...``."""
    prefix, mangler = store._memo_key_parts()
    if not prefix:
        raise exception.ConfigurationError(
            f"store {store.name!r} has an empty key_prefix, so memoized entries could not be "
            f"kept apart from its keys; give it a key_prefix", option="key_prefix",
            store=store.name)
    codec = MemoCodec(store._serializer)
    region.configure("dogpile.cache.null", wrap=[_SharedBackend(store.region.backend)])
    # After configure(), which adopts the placeholder backend's (absent) ones.
    region.key_mangler = manglers.prefixed(prefix + NAMESPACE_SUFFIX, mangler)
    region.serializer = codec.dumps
    region.deserializer = codec.loads


#: The helpers dogpile's decorator adds to the decorated function.
_HELPERS = ("invalidate", "refresh", "set", "get")


def memoize(store: KeyValueStore, expiration_time: float | None = None,
            namespace: str | None = None,
            should_cache_fn: Callable[[Any], bool] | None = None
            ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """dogpile's ``cache_on_arguments`` on ``store`` (see the module docstring).

    ``expiration_time``: seconds before a result is regenerated (None: never).
    ``namespace`` tells apart two functions of the same module and name.  The
    decorated function has dogpile's ``invalidate(*args)``, ``refresh(*args)``,
    ``set(value, *args)``, ``get(*args)`` and ``original``.

    Decorating needs no configured store (functions are often decorated at
    import time); the first call does, and raises
    :class:`~kvs.exception.NotConfigured` without one.
    """
    if expiration_time is not None and (
            isinstance(expiration_time, bool) or not isinstance(expiration_time, (int, float))
            or not expiration_time > 0):
        raise exception.ConfigurationError(
            "memoize expiration_time must be a number of seconds > 0, or None",
            option="expiration_time")
    region = store._memo
    decorate = region.cache_on_arguments(
        namespace=namespace, expiration_time=expiration_time, should_cache_fn=should_cache_fn)

    def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
        cached: Any = decorate(function)

        def ready(call: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(call)
            def first_configure(*args: Any, **kwargs: Any) -> Any:
                store._ready_memo_region()
                return call(*args, **kwargs)
            return first_configure

        memoized: Any = functools.wraps(function)(ready(cached))
        for helper in _HELPERS:
            setattr(memoized, helper, ready(getattr(cached, helper)))
        memoized.original = function
        return memoized  # type: ignore[no-any-return]

    return decorator


__all__ = ["NAMESPACE_SUFFIX", "MemoCodec", "configure_memo_region", "memoize"]
