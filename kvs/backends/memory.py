"""``kvs.memory``: an in-process backend with leases, fences and TTLs.

Everything lives in dicts guarded by one condition variable, so every call is
atomic with respect to the other threads of the process.  Values are stored as
the serialized bytes the region hands over, which is what isolates callers from
each other: mutating a returned object can never change the store.

Data is per backend instance (so per configured store) and per process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence

from dogpile.cache.api import NO_VALUE, NoValue

from kvs.backends.base import Fenced, LeaseBackend, LeaseInfo


def _deadline(ttl: float | None) -> float | None:
    return None if ttl is None else time.monotonic() + ttl


def _alive(deadline: float | None, now: float) -> bool:
    return deadline is None or deadline > now


class MemoryBackend(LeaseBackend):
    """In-process backend.  Arguments: ``max_value_size`` (bytes)."""

    name = "kvs.memory"
    arguments = dict(LeaseBackend.arguments)

    def __init__(self, arguments: Mapping[str, object]) -> None:
        super().__init__(arguments)
        self._changed = threading.Condition(threading.Lock())
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._leases: dict[str, tuple[str, float | None]] = {}
        self._fences: dict[str, int] = {}

    # -- data ---------------------------------------------------------------

    def _read(self, key: str, now: float) -> bytes | NoValue:
        entry = self._data.get(key)
        if entry is None:
            return NO_VALUE
        if not _alive(entry[1], now):
            del self._data[key]
            return NO_VALUE
        return entry[0]

    def get_serialized(self, key: str) -> bytes | NoValue:  # type: ignore[override]
        # Lock-free: one dict lookup is atomic, and entries are replaced, never
        # mutated.  Only dropping an expired entry takes the lock.
        entry = self._data.get(key)
        if entry is None:
            return NO_VALUE
        if entry[1] is None or entry[1] > time.monotonic():
            return entry[0]
        with self._changed:
            return self._read(key, time.monotonic())

    def get_serialized_multi(self, keys: Sequence[str]) -> list[bytes | NoValue]:  # type: ignore[override]
        # Under the lock: a concurrent set_multi is seen whole or not at all.
        with self._changed:
            now = time.monotonic()
            return [self._read(key, now) for key in keys]

    def plain_set(self, key: str, value: bytes, ttl: float | None) -> None:
        limit = self.max_value_size  # check_size, inlined: this is the hot path
        if limit is not None and len(value) > limit:
            self.check_size(key, value)
        with self._changed:
            self._data[key] = (value, _deadline(ttl))

    def plain_set_multi(self, mapping: Mapping[str, bytes], ttl: float | None) -> None:
        self.check_sizes(mapping)
        deadline = _deadline(ttl)
        with self._changed:
            for key, value in mapping.items():
                self._data[key] = (value, deadline)

    def plain_delete(self, key: str) -> bool:
        with self._changed:
            if self._read(key, time.monotonic()) is NO_VALUE:
                return False
            del self._data[key]
            return True

    def delete_multi(self, keys: Sequence[str]) -> None:  # type: ignore[override]
        with self._changed:
            for key in keys:
                self._data.pop(key, None)

    # -- leases -------------------------------------------------------------

    def _holder(self, key: str, now: float) -> str | None:
        lease = self._leases.get(key)
        if lease is None:
            return None
        if not _alive(lease[1], now):
            del self._leases[key]
            return None
        return lease[0]

    def acquire_lease(self, key: str, token: str, ttl: float | None) -> int | None:
        with self._changed:
            holder = self._holder(key, time.monotonic())
            if holder is not None and holder != token:
                return None
            if holder == token:
                # A retry of an acquire whose reply was lost: same lease, same fence.
                self._leases[key] = (token, _deadline(ttl))
                return self._fences[key]
            fence = self._fences.get(key, 0) + 1
            self._fences[key] = fence
            self._leases[key] = (token, _deadline(ttl))
            return fence

    def release_lease(self, key: str, token: str) -> bool:
        with self._changed:
            if self._holder(key, time.monotonic()) != token:
                return False
            del self._leases[key]
            self._changed.notify_all()
            return True

    def extend_lease(self, key: str, token: str, ttl: float) -> bool:
        with self._changed:
            if self._holder(key, time.monotonic()) != token:
                return False
            deadline = self._leases[key][1]
            if deadline is not None:
                self._leases[key] = (token, deadline + ttl)
            return True

    def persist_lease(self, key: str, token: str) -> bool:
        with self._changed:
            if self._holder(key, time.monotonic()) != token:
                return False
            self._leases[key] = (token, None)
            return True

    def fenced_set(self, key: str, value: bytes, token: str, ttl: float | None) -> Fenced:
        self.check_size(key, value)
        with self._changed:
            if self._holder(key, time.monotonic()) != token:
                return Fenced.LEASE_LOST
            self._data[key] = (value, _deadline(ttl))
            return Fenced.WRITTEN

    def fenced_delete(self, key: str, token: str) -> Fenced:
        with self._changed:
            now = time.monotonic()
            if self._holder(key, now) != token:
                return Fenced.LEASE_LOST
            if self._read(key, now) is NO_VALUE:
                return Fenced.MISSING
            del self._data[key]
            return Fenced.WRITTEN

    def lease_info(self, key: str) -> LeaseInfo | None:
        with self._changed:
            now = time.monotonic()
            holder = self._holder(key, now)
            if holder is None:
                return None
            deadline = self._leases[key][1]
            remaining = None if deadline is None else max(0.0, deadline - now)
            return LeaseInfo(token=holder, fence=self._fences[key], remaining=remaining)

    def break_lease(self, key: str) -> bool:
        with self._changed:
            broken = self._leases.pop(key, None) is not None
            self._changed.notify_all()
            return broken

    def wait_for_release(self, key: str, timeout: float) -> None:
        # Woken by release_lease/break_lease; an expiry wakes nobody, so the
        # wait is capped and the caller retries.
        with self._changed:
            lease = self._leases.get(key)
            if lease is None:
                return
            limit = timeout
            if lease[1] is not None:
                limit = min(limit, max(0.0, lease[1] - time.monotonic()))
            self._changed.wait(limit)

    def ping(self) -> None:
        return None
