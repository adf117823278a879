"""How a store reaches its backend: one data path, chosen once at configure time.

The store mangles keys and serializes values; its path moves the resulting
bytes down and back up.  Every path has the same small set of calls, on
mangled keys and serialized bytes:

=======================================  ==========================================
``get(key)`` / ``get_multi(keys)``       stored bytes, ``NO_VALUE`` when missing
``set(key, data, ttl)``                  plain write
``set_multi(mapping, ttl)``              plain writes, atomic where the backend allows
``delete(key) -> bool``                  plain delete; whether the key existed
``delete_multi(keys)``                   plain deletes
``fenced_set(key, data, token, ttl)``    write only under the lease ``token``: Fenced
``fenced_delete(key, token)``            delete only under the lease ``token``: Fenced
=======================================  ==========================================

and ``leases`` (the lease calls a :class:`~kvs.lock.KeyValueStoreLock` uses)
and ``backend`` (the kvs backend when the store may call it directly, for
``update()``'s combined round trips; ``None`` when proxies must see every call).

:class:`LeasePath`
    Every layer answers kvs's write calls: a kvs backend, alone or behind
    :class:`~kvs.proxy.LeaseProxy` layers.  Every call goes down explicitly,
    token and TTL as arguments, outcome as the return value: this is the
    fenced path.  (A stock backend gets the same path through
    :class:`StockWrites`, its innermost layer, whose checks are not fenced.)
:class:`DogpilePath`
    A kvs backend behind at least one plain dogpile ``ProxyBackend``.  Reads
    and plain writes use dogpile's calls.  A locked write or a per-call TTL
    cannot be carried through that proxy, so it raises
    :class:`~kvs.exception.UnsupportedProxy` naming it, before anything is
    sent (fail closed).

A stock dogpile backend behind a plain ``ProxyBackend`` takes a
:class:`LeasePath` too, over one more :class:`StockWrites` put on top of the
chain: the plain proxy cannot carry kvs's calls, but the stock backend cannot
fence them anyway, so the client-side lease check happens before the chain
(*not fenced*, as :mod:`kvs.stock` explains).

A path holds no per-call state and is shared by every thread of the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dogpile.cache.api import NO_VALUE, NoValue
from dogpile.cache.proxy import ProxyBackend
from dogpile.cache.region import CacheRegion

from kvs import exception
from kvs.backends.base import Fenced, LeaseBackend
from kvs.lock import Leases
from kvs.proxy import WRITE_CALLS, LeaseProxy, expect_existed, expect_outcome, layer_name
from kvs.stock import StockLeases


def chain_of(top: Any) -> list[Any]:
    """The layers from ``top`` (the region's outermost backend) down to the backend."""
    layers = [top]
    while hasattr(layers[-1], "proxied"):
        layers.append(layers[-1].proxied)
    return layers


def carries_writes(layer: Any) -> bool:
    """True when ``layer`` answers every kvs write call (kvs backend or LeaseProxy)."""
    return isinstance(layer, (LeaseBackend, LeaseProxy, StockWrites)) or all(
        callable(getattr(layer, call, None)) for call in WRITE_CALLS)


class LeasePath:
    """A kvs backend reached through lease-aware layers only (or none)."""

    def __init__(self, top: Any, leases: Leases, backend: LeaseBackend | None) -> None:
        self.top = top
        self.leases = leases
        #: The kvs backend itself when nothing sits in between (update()'s
        #: combined round trips), else None.
        self.backend = backend
        # Bound methods of the top layer: no extra call on the hot path.
        self.get: Callable[[str], bytes | NoValue] = top.get_serialized
        self.get_multi: Callable[[Sequence[str]], list[bytes | NoValue]] = \
            top.get_serialized_multi
        self.set: Callable[[str, bytes, float | None], None] = top.plain_set
        self.set_multi: Callable[[Mapping[str, bytes], float | None], None] = \
            top.plain_set_multi
        self.delete_multi: Callable[[Sequence[str]], None] = top.delete_multi
        if backend is not None:
            # No layer in between: the backend's own answers need no check.
            self.delete = backend.plain_delete  # type: ignore[method-assign]
            self.fenced_set = backend.fenced_set  # type: ignore[method-assign]
            self.fenced_delete = backend.fenced_delete  # type: ignore[method-assign]

    def check_fenced_write(self, ttl: float | None) -> None:
        """Raise now if a locked write with ``ttl`` could not be carried (here: always can)."""

    def delete(self, key: str) -> bool:
        return expect_existed(self.top, self.top.plain_delete(key))

    def fenced_set(self, key: str, value: bytes, token: str, ttl: float | None) -> Fenced:
        return expect_outcome(self.top, self.top.fenced_set(key, value, token, ttl), "fenced_set")

    def fenced_delete(self, key: str, token: str) -> Fenced:
        return expect_outcome(self.top, self.top.fenced_delete(key, token), "fenced_delete")


class DogpilePath:
    """dogpile's calls on the region's outermost layer; no per-call TTL, no fencing."""

    def __init__(self, top: Any, leases: Leases, blocker: Any) -> None:
        self.top = top
        self.leases: Leases = leases
        self.backend: LeaseBackend | None = None
        #: The layer that cannot carry kvs's write calls, named in errors.
        self.blocker = blocker
        self.get = top.get_serialized
        self.get_multi = top.get_serialized_multi
        self.delete_multi = top.delete_multi

    def _refuse(self, what: str) -> exception.KVSError:
        name = layer_name(self.blocker)
        return exception.UnsupportedProxy(
            f"proxy {name} is a plain dogpile ProxyBackend and cannot carry {what} to the "
            f"backend; nothing was written (make it a kvs.proxy.LeaseProxy)", layer=name)

    def _check_ttl(self, ttl: float | None) -> None:
        if ttl is not None:
            raise self._refuse("a per-call ttl")

    def check_fenced_write(self, ttl: float | None) -> None:
        """Raise UnsupportedProxy now: no locked write can pass the plain proxy."""
        raise self._refuse("a locked write")

    def set(self, key: str, data: bytes, ttl: float | None) -> None:
        self._check_ttl(ttl)
        self.top.set_serialized(key, data)

    def set_multi(self, mapping: Mapping[str, bytes], ttl: float | None) -> None:
        self._check_ttl(ttl)
        self.top.set_serialized_multi(mapping)

    def delete(self, key: str) -> bool:
        # dogpile's delete() does not say whether the key existed: read first.
        # Not atomic: two concurrent deletes may both report that it existed.
        existed = self.top.get_serialized(key) is not NO_VALUE
        self.top.delete(key)
        return existed

    def fenced_set(self, key: str, data: bytes, token: str, ttl: float | None) -> Fenced:
        raise self._refuse("a locked write")

    def fenced_delete(self, key: str, token: str) -> Fenced:
        raise self._refuse("a locked delete")


def no_ttl_on_stock(backend_name: str) -> exception.KVSError:
    return exception.ConfigurationError(
        f"backend {backend_name} cannot expire individual keys", option="ttl")


class StockWrites(ProxyBackend):
    """Innermost layer over a stock dogpile backend: kvs's write calls in dogpile's terms.

    Lets :class:`~kvs.proxy.LeaseProxy` layers work over a stock backend.
    Its "fenced" calls check this process's lease table
    (:class:`~kvs.stock.StockLeases`) and then write: they are *not* fenced
    by the backend, which is what :mod:`kvs.stock` documents.
    """

    proxied: Any

    def __init__(self, leases: StockLeases, backend_name: str) -> None:
        super().__init__()
        self._stock = leases
        self._backend_name = backend_name

    def _check_ttl(self, ttl: float | None) -> None:
        if ttl is not None:
            raise no_ttl_on_stock(self._backend_name)

    def plain_set(self, key: str, value: bytes, ttl: float | None) -> None:
        self._check_ttl(ttl)
        self.proxied.set_serialized(key, value)

    def plain_set_multi(self, mapping: Mapping[str, bytes], ttl: float | None) -> None:
        self._check_ttl(ttl)
        self.proxied.set_serialized_multi(mapping)

    def plain_delete(self, key: str) -> bool:
        # Stock backends do not say whether the key existed: read first.
        existed = self.proxied.get_serialized(key) is not NO_VALUE
        self.proxied.delete(key)
        return existed

    def fenced_set(self, key: str, value: bytes, token: str, ttl: float | None) -> Fenced:
        self._check_ttl(ttl)
        if not self._stock.holds(key, token):
            return Fenced.LEASE_LOST
        self.proxied.set_serialized(key, value)
        return Fenced.WRITTEN

    def fenced_delete(self, key: str, token: str) -> Fenced:
        if not self._stock.holds(key, token):
            return Fenced.LEASE_LOST
        return Fenced.WRITTEN if self.plain_delete(key) else Fenced.MISSING


DataPath = LeasePath | DogpilePath


def choose(region: CacheRegion, backend_name: str, stock: StockLeases | None) -> DataPath:
    """The path for a configured region (its proxies already wrapped).

    ``stock`` is the lease table of a stock backend (whose innermost layer is
    then :class:`StockWrites`), ``None`` for a kvs backend.
    """
    top = region.backend
    layers = chain_of(top)
    blocker = next((layer for layer in layers[:-1] if not carries_writes(layer)), None)
    if stock is not None:
        if blocker is not None:
            # Checked and translated into dogpile's calls above the chain.
            top = StockWrites(stock, backend_name).wrap(top)
        return LeasePath(top, stock, None)
    actual = layers[-1]
    assert isinstance(actual, LeaseBackend)
    if blocker is not None:
        return DogpilePath(top, actual, blocker)
    return LeasePath(top, actual, actual if top is actual else None)
