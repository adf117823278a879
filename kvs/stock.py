"""Leases for stock dogpile.cache backends, which do not keep the lease contract.

A stock backend (``dogpile.cache.memory``, ``dogpile.cache.redis``...) gets:

* a process-local lease table (kvs.memory's), giving tokens, TTLs and fences
  between the threads of this process;
* plus, when the backend offers one through ``get_mutex`` (for example
  ``dogpile.cache.redis`` with ``distributed_lock=True``), its distributed
  mutex, taken without blocking, for exclusion between processes.  The fence
  counter then lives in the cache itself and is advanced while holding it.

Writes are checked against the client's clock and this process's table only:
**they are not fenced**.  A holder paused past the backend mutex's own timeout
can still overwrite the next holder's value.  ``KeyValueStore.configure``
logs a warning saying so.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from typing import Any

from dogpile.cache.api import CacheMutex
from dogpile.cache.region import CacheRegion

from kvs import exception
from kvs.backends.base import LeaseInfo
from kvs.backends.memory import MemoryBackend
from kvs.errors import translated
from kvs.lock import safety_window

LOG = logging.getLogger(__name__)

#: The fence counter of lease key K is cache key ``kvs-fence:<sha1(K)>``: a
#: key every backend accepts, whatever K holds (with enable_key_mangler =
#: false it may hold spaces, which memcached refuses).
_FENCE_PREFIX = "kvs-fence:"


def fence_key(key: str) -> str:
    return _FENCE_PREFIX + hashlib.sha1(key.encode("utf-8"), usedforsecurity=False).hexdigest()


def stock_lock_arguments(backend_cls: type, lock_timeout: float,
                         args: dict[str, Any]) -> None:
    """Default a stock backend to a distributed mutex that expires with the lease.

    As Keystone did: ``distributed_lock = True`` where the backend has one
    (dogpile's Redis and memcached families), with the backend's own
    ``lock_timeout`` derived from the lease's, so a holder that overruns or
    is killed never locks the key for longer than its lease (plus a second).
    Explicit arguments win.
    """
    from dogpile.cache.backends.memcached import GenericMemcachedBackend
    from dogpile.cache.backends.redis import RedisBackend

    if not issubclass(backend_cls, (RedisBackend, GenericMemcachedBackend)):
        return
    args.setdefault("distributed_lock", True)
    if not args["distributed_lock"]:
        return
    if lock_timeout > 0:
        args.setdefault("lock_timeout",
                        math.ceil(lock_timeout + safety_window(lock_timeout)) + 1)
    if issubclass(backend_cls, RedisBackend):
        # One lease per token, released by the thread that took it or not.
        args.setdefault("thread_local_lock", False)


def _extend_mutex(mutex: Any, seconds: float, remaining: float) -> bool:
    """Add ``seconds`` to a dogpile backend mutex we hold (``remaining``: its new total)."""
    from dogpile.cache.backends.memcached import MemcachedLock

    inner = getattr(mutex, "mutex", None)  # dogpile's wrapper of a redis-py Lock
    if inner is not None and callable(getattr(inner, "extend", None)):
        try:
            return bool(inner.extend(seconds))
        except Exception as exc:  # LockNotOwnedError: it expired, or was broken
            if type(exc).__module__.startswith("redis"):
                return False
            raise
    if isinstance(mutex, MemcachedLock):
        return bool(mutex.client_fn().touch(mutex.key, math.ceil(remaining) + 1))
    raise exception.ConfigurationError(
        f"extend() needs a backend mutex that can be extended; "
        f"{type(mutex).__name__} cannot", option="backend")


def _break_mutex(mutex: Any) -> bool:
    """Delete a dogpile backend mutex whoever holds it; say whether it was held."""
    from dogpile.cache.backends.memcached import MemcachedLock

    inner = getattr(mutex, "mutex", None)  # dogpile's wrapper of a redis-py Lock
    if inner is not None and hasattr(inner, "redis") and hasattr(inner, "name"):
        return bool(inner.redis.delete(inner.name))
    if isinstance(mutex, MemcachedLock):
        held = mutex.locked()
        mutex.release()  # an unconditional delete of the lock item
        return held
    return False


class StockLeases:
    """The lease calls of the contract, emulated for a stock backend."""

    def __init__(self, region: CacheRegion, mutex_timeout: float | None = None) -> None:
        self._region = region
        #: Seconds the backend's distributed mutex lives (None: no expiry, or none).
        self.mutex_timeout = mutex_timeout
        self._local = MemoryBackend({})
        self._mutexes: dict[tuple[str, str], CacheMutex] = {}
        self._guard = threading.Lock()

    def _distributed_mutex(self, key: str) -> CacheMutex | None:
        # Hashed, like the fence key: dogpile's memcached lock would send the
        # raw key, which memcached refuses when it holds spaces.
        name = "kvs-lease:" + hashlib.sha1(key.encode("utf-8"), usedforsecurity=False).hexdigest()
        mutex: Any = self._region.backend.get_mutex(name)
        return mutex

    def translate_error(self, exc: Exception, operation: str,
                        args: tuple[Any, ...]) -> BaseException | None:
        """Any failure of the stock backend while leasing is BackendUnavailable."""
        if isinstance(exc, exception.KVSError):
            return None
        return exception.BackendUnavailable(
            f"backend {type(self._region.actual_backend).__name__} failed while taking the "
            f"lease on {args[0]!r}: {type(exc).__name__}")

    @translated
    def acquire_lease(self, key: str, token: str, ttl: float | None) -> int | None:
        if self.mutex_timeout is not None and (ttl is None or ttl > self.mutex_timeout):
            # The backend mutex would end first: another process could take
            # the key while this holder still believes it holds it.
            raise exception.ConfigurationError(
                f"a lock_timeout longer than the store's ({self.mutex_timeout:g} s backend "
                f"mutex) on a stock backend; configure the store with the longer one",
                option="lock_timeout")
        local_fence = self._local.acquire_lease(key, token, ttl)
        if local_fence is None:
            return None
        mutex = None
        try:
            mutex = self._distributed_mutex(key)
            if mutex is None:
                return local_fence
            if not mutex.acquire(False):
                mutex = None
                self._local.release_lease(key, token)
                return None
            # Holding the distributed mutex: read-increment-write of the shared
            # fence counter cannot race with another holder.
            counter = fence_key(key)
            current = self._region.get(counter)
            fence = (current if isinstance(current, int) else 0) + 1
            self._region.set(counter, fence)
        except BaseException:
            # Undo both halves: never leave a lease nobody owns.
            if mutex is not None:
                self._release_mutex(key, mutex)
            self._local.release_lease(key, token)
            raise
        with self._guard:
            self._mutexes[(key, token)] = mutex
        return fence

    def _release_mutex(self, key: str, mutex: CacheMutex) -> None:
        try:
            mutex.release()
        except Exception as exc:  # e.g. redis-py LockNotOwnedError after expiry
            LOG.warning("releasing the backend mutex for %r failed: %s",
                        key, type(exc).__name__)

    def release_lease(self, key: str, token: str) -> bool:
        with self._guard:
            mutex = self._mutexes.pop((key, token), None)
        # Only a holder still current in this process touches the backend
        # mutex: some (dogpile's memcached lock) delete it without an owner check.
        released = self._local.release_lease(key, token)
        if released and mutex is not None:
            self._release_mutex(key, mutex)
        return released

    @translated
    def extend_lease(self, key: str, token: str, ttl: float) -> bool:
        """Extend the local lease and the backend mutex together, or neither."""
        with self._guard:
            mutex = self._mutexes.get((key, token))
        info = self._local.lease_info(key)
        if info is None or info.token != token:
            return False
        if mutex is not None:
            remaining = (info.remaining or 0.0) + ttl
            if not _extend_mutex(mutex, ttl, remaining):
                return False
        return self._local.extend_lease(key, token, ttl)

    def persist_lease(self, key: str, token: str) -> bool:
        return self._local.persist_lease(key, token)

    def holds(self, key: str, token: str) -> bool:
        info = self._local.lease_info(key)
        return info is not None and info.token == token

    def lease_info(self, key: str) -> LeaseInfo | None:
        return self._local.lease_info(key)

    @translated
    def break_lease(self, key: str) -> bool:
        """Drop the lease here and the backend's mutex, whichever process holds it."""
        broken = self._local.break_lease(key)
        with self._guard:
            for entry in [entry for entry in self._mutexes if entry[0] == key]:
                del self._mutexes[entry]
        mutex = self._distributed_mutex(key)
        if mutex is not None and _break_mutex(mutex):
            broken = True
        return broken

    def wait_for_release(self, key: str, timeout: float) -> None:
        if self._local.lease_info(key) is None:
            # Held by another process through the backend mutex: nothing
            # wakes us, so poll.
            time.sleep(max(0.0, min(timeout, 0.01)))
        else:
            self._local.wait_for_release(key, timeout)
