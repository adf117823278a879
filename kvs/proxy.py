"""Proxies that take part in fenced writes: :class:`LeaseProxy`.

A dogpile ``ProxyBackend`` sees dogpile's calls only (``set_serialized``,
``delete``...).  Those calls have no place for a lease token or a per-call
TTL, so a plain ``ProxyBackend`` cannot carry a locked write to the backend's
atomic check.  kvs therefore never passes a locked write through one: such a
write raises :class:`~kvs.exception.UnsupportedProxy`, naming the proxy, and
nothing is written.

A :class:`LeaseProxy` also answers kvs's write calls, each with the token and
TTL as arguments and the outcome as the return value::

    plain_set(key, value, ttl)                -> None
    plain_set_multi(mapping, ttl)             -> None
    plain_delete(key)                         -> bool (the key existed)
    fenced_set(key, value, token, ttl)        -> Fenced
    fenced_delete(key, token)                 -> Fenced

By default each one hands the call to ``self.proxied``, passing values
through :meth:`LeaseProxy.encode_value` on the way down and
:meth:`LeaseProxy.decode_value` on the way up.  So a proxy that compresses
or encrypts overrides only those two hooks, and locked writes are
transformed like any other.  A proxy that observes or reroutes writes
overrides the calls themselves, and must return what ``self.proxied``
returned (or raise).  One that returns anything else is reported by the layer
above it as :class:`~kvs.exception.UnconfirmedWrite`, naming it.

dogpile's own calls on a ``LeaseProxy`` (``set_serialized``, ``delete``...)
are routed into the kvs calls above (with no TTL), so one override sees writes
from the store and from a plain dogpile region alike.  (Above a plain
``ProxyBackend``, which cannot take kvs calls, they stay dogpile calls.)

Thread-safety: a proxy instance belongs to one store (kvs refuses to wire one
instance into two), and is called from every thread that uses the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE
from dogpile.cache.proxy import ProxyBackend

from kvs import exception
from kvs.backends.base import Fenced

#: The kvs write calls a layer must answer to carry fenced writes.
WRITE_CALLS = ("plain_set", "plain_set_multi", "plain_delete", "fenced_set", "fenced_delete")

# dogpile call -> the kvs call it is routed into on a LeaseProxy.
_ROUTED = {"set_serialized": "plain_set", "set_serialized_multi": "plain_set_multi",
           "delete": "plain_delete"}


def layer_name(layer: Any) -> str:
    """How a layer is named in messages: its class, with its module."""
    cls = type(layer)
    return f"{cls.__module__}.{cls.__qualname__}"


def expect_outcome(layer: Any, outcome: Any, call: str) -> Fenced:
    """Return ``outcome`` if it is a fenced-write outcome, else raise UnconfirmedWrite."""
    if type(outcome) is Fenced:
        return outcome
    raise exception.UnconfirmedWrite(
        f"layer {layer_name(layer)} returned {type(outcome).__name__} from {call} instead of "
        f"the outcome of the backend's fenced call; the write is unconfirmed",
        layer=layer_name(layer))


def expect_existed(layer: Any, existed: Any) -> bool:
    """Return ``existed`` if it is a bool (plain_delete's answer), else raise."""
    if type(existed) is bool:
        return existed
    raise exception.UnconfirmedWrite(
        f"layer {layer_name(layer)} returned {type(existed).__name__} from plain_delete "
        f"instead of whether the key existed", layer=layer_name(layer))


class LeaseProxy(ProxyBackend):
    """A dogpile ``ProxyBackend`` that carries kvs's explicit write path.

    Subclass it instead of ``ProxyBackend`` for any proxy of a kvs store.
    Override :meth:`encode_value`/:meth:`decode_value` to transform values,
    or the write calls of :data:`WRITE_CALLS` to observe them.
    """

    proxied: Any
    _below_carries = True

    # -- value hooks ---------------------------------------------------------

    def encode_value(self, key: str, value: bytes, ttl: float | None) -> bytes:
        """Transform serialized bytes on their way to the backend (default: none).

        ``ttl`` is the write's TTL (``None``: no expiry), for transforms that
        bind it, as the security proxy does.
        """
        return value

    def decode_value(self, key: str, stored: bytes) -> bytes:
        """Undo :meth:`encode_value` on bytes read from the backend (default: none)."""
        return stored

    # -- reads -----------------------------------------------------------------

    def get_serialized(self, key: str) -> Any:
        stored = self.proxied.get_serialized(key)
        if stored is NO_VALUE or stored is None:
            return stored
        return self.decode_value(key, stored)

    def get_serialized_multi(self, keys: Iterable[str]) -> Any:
        keys = list(keys)
        stored = self.proxied.get_serialized_multi(keys)
        return [item if item is NO_VALUE or item is None else self.decode_value(key, item)
                for key, item in zip(keys, stored)]

    # -- kvs writes: token, TTL and outcome are explicit ------------------------

    def plain_set(self, key: str, value: bytes, ttl: float | None) -> None:
        self.proxied.plain_set(key, self.encode_value(key, value, ttl), ttl)

    def plain_set_multi(self, mapping: Mapping[str, bytes], ttl: float | None) -> None:
        self.proxied.plain_set_multi(
            {key: self.encode_value(key, value, ttl) for key, value in mapping.items()}, ttl)

    def plain_delete(self, key: str) -> bool:
        return expect_existed(self.proxied, self.proxied.plain_delete(key))

    def fenced_set(self, key: str, value: bytes, token: str, ttl: float | None) -> Fenced:
        outcome = self.proxied.fenced_set(key, self.encode_value(key, value, ttl), token, ttl)
        return expect_outcome(self.proxied, outcome, "fenced_set")

    def fenced_delete(self, key: str, token: str) -> Fenced:
        return expect_outcome(self.proxied, self.proxied.fenced_delete(key, token),
                              "fenced_delete")

    # -- dogpile's writes, routed into the kvs calls ----------------------------

    def wrap(self, backend: Any) -> Any:
        """dogpile's hook: point this layer at the one below it."""
        proxy = super().wrap(backend)
        # Below a plain ProxyBackend the kvs calls cannot go on, so dogpile's
        # calls stay dogpile calls there (the store refuses locked writes on
        # such a chain before they reach this layer).
        self._below_carries = all(callable(getattr(backend, call, None))
                                  for call in WRITE_CALLS)
        return proxy

    def set_serialized(self, key: str, value: bytes) -> None:
        if self._below_carries:
            self.plain_set(key, value, None)
        else:
            self.proxied.set_serialized(key, self.encode_value(key, value, None))

    def set_serialized_multi(self, mapping: Mapping[str, bytes]) -> None:
        if self._below_carries:
            self.plain_set_multi(mapping, None)
        else:
            self.proxied.set_serialized_multi(
                {key: self.encode_value(key, value, None) for key, value in mapping.items()})

    def delete(self, key: str) -> None:
        if self._below_carries:
            self.plain_delete(key)
        else:
            self.proxied.delete(key)

    def delete_multi(self, keys: Sequence[str]) -> None:  # type: ignore[override]
        self.proxied.delete_multi(keys)


def check_lease_proxy(proxy: LeaseProxy) -> None:
    """Refuse a LeaseProxy that overrides a dogpile write but not the kvs call behind it.

    Such a proxy means to see (or change) every write, but kvs writes would
    bypass its override: fail at configure time rather than at the first
    locked write.
    """
    cls = type(proxy)
    for dogpile_call, kvs_call in _ROUTED.items():
        overrides_dogpile = getattr(cls, dogpile_call) is not getattr(LeaseProxy, dogpile_call)
        overrides_kvs = getattr(cls, kvs_call) is not getattr(LeaseProxy, kvs_call)
        if overrides_dogpile and not overrides_kvs:
            raise exception.ConfigurationError(
                f"proxy {layer_name(proxy)} overrides {dogpile_call} but not {kvs_call}: "
                f"the store's writes go through {kvs_call} (and fenced_set/fenced_delete "
                f"for locked writes); override those instead", option="proxies",
                layer=layer_name(proxy))
