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

import logging
import threading
import time
from typing import Any

from dogpile.cache.api import CacheMutex
from dogpile.cache.region import CacheRegion

from kvs import exception
from kvs.backends.base import LeaseInfo
from kvs.backends.memory import MemoryBackend
from kvs.errors import translated

LOG = logging.getLogger(__name__)

_FENCE_PREFIX = "\x00kvs-fence\x00"


class StockLeases:
    """The lease calls of the contract, emulated for a stock backend."""

    def __init__(self, region: CacheRegion) -> None:
        self._region = region
        self._local = MemoryBackend({})
        self._mutexes: dict[tuple[str, str], CacheMutex] = {}
        self._guard = threading.Lock()

    def _distributed_mutex(self, key: str) -> CacheMutex | None:
        mutex: Any = self._region.backend.get_mutex(key)
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
            fence_key = _FENCE_PREFIX + key
            current = self._region.get(fence_key)
            fence = (current if isinstance(current, int) else 0) + 1
            self._region.set(fence_key, fence)
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

    def extend_lease(self, key: str, token: str, ttl: float) -> bool:
        with self._guard:
            mutex = self._mutexes.get((key, token))
        if mutex is not None and hasattr(mutex, "extend"):
            try:
                mutex.extend(ttl)
            except Exception:
                return False
        return self._local.extend_lease(key, token, ttl)

    def persist_lease(self, key: str, token: str) -> bool:
        return self._local.persist_lease(key, token)

    def holds(self, key: str, token: str) -> bool:
        info = self._local.lease_info(key)
        return info is not None and info.token == token

    def lease_info(self, key: str) -> LeaseInfo | None:
        return self._local.lease_info(key)

    def break_lease(self, key: str) -> bool:
        return self._local.break_lease(key)

    def wait_for_release(self, key: str, timeout: float) -> None:
        if self._local.lease_info(key) is None:
            # Held by another process through the backend mutex: nothing
            # wakes us, so poll.
            time.sleep(max(0.0, min(timeout, 0.01)))
        else:
            self._local.wait_for_release(key, timeout)
