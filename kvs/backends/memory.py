"""``kvs.memory``: an in-process backend with leases, fences and TTLs.

Everything lives in dicts guarded by one condition variable, so every call is
atomic with respect to the other threads of the process.  Values are stored as
the serialized bytes the region hands over, which is what isolates callers from
each other: mutating a returned object can never change the store.

Data is per backend instance (so per configured store) and per process.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence

from dogpile.cache.api import NO_VALUE, NoValue

from kvs.backends.base import Fenced, LeaseBackend, LeaseInfo

_NOBODY = (None, None)
#: Prefix of update_value's own lease tokens as lease_info shows them.  In the
#: lease table they are ints (next() of a counter costs a fifth of formatting
#: one), and so never equal to a get_lock token, which is a str.
_UPDATE = "update-"
# An enum member is looked up through the class on every access (about 70 ns,
# a tenth of a whole lease grant here): the hot paths use these names instead.
_WRITTEN, _LEASE_LOST = Fenced.WRITTEN, Fenced.LEASE_LOST

_instances: weakref.WeakSet[MemoryBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for backend in list(_instances):
        backend._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


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
        # The hot paths take the bare lock (a Condition's "with" is Python code).
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting = 0  # threads in wait_for_release
        self._update_tokens = itertools.count()
        self._data: dict[str, tuple[bytes, float | None]] = {}
        #: key -> (token, deadline); update_value's tokens are ints (see _UPDATE).
        self._leases: dict[str, tuple[str | int, float | None]] = {}
        self._fences: dict[str, int] = {}
        _instances.add(self)

    def _after_fork_in_child(self) -> None:
        """A forked child's copy: its own lock, without the parent threads' updates.

        Another thread of the parent may have held the lock at fork (the child
        would wait for it forever) or sat inside update_value (its lease
        would never be released in the child).
        """
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._waiting = 0
        for key, lease in list(self._leases.items()):
            if type(lease[0]) is int:  # update_value's own lease
                del self._leases[key]

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
        with self._lock:
            return self._read(key, time.monotonic())

    def get_serialized_multi(self, keys: Sequence[str]) -> list[bytes | NoValue]:  # type: ignore[override]
        # Under the lock: a concurrent set_multi is seen whole or not at all.
        with self._lock:
            now = time.monotonic()
            return [self._read(key, now) for key in keys]

    def plain_set(self, key: str, value: bytes, ttl: float | None) -> None:
        limit = self.max_value_size  # check_size, inlined: this is the hot path
        if limit is not None and len(value) > limit:
            self.check_size(key, value)
        with self._lock:
            self._data[key] = (value, _deadline(ttl))

    def plain_set_multi(self, mapping: Mapping[str, bytes], ttl: float | None) -> None:
        self.check_sizes(mapping)
        deadline = _deadline(ttl)
        with self._lock:
            for key, value in mapping.items():
                self._data[key] = (value, deadline)

    def plain_delete(self, key: str) -> bool:
        with self._lock:
            if self._read(key, time.monotonic()) is NO_VALUE:
                return False
            del self._data[key]
            return True

    def delete_multi(self, keys: Sequence[str]) -> None:  # type: ignore[override]
        with self._lock:
            for key in keys:
                self._data.pop(key, None)

    # -- leases -------------------------------------------------------------

    def _holder(self, key: str, now: float) -> str | int | None:
        lease = self._leases.get(key)
        if lease is None:
            return None
        if not _alive(lease[1], now):
            del self._leases[key]
            return None
        return lease[0]

    # The hot paths below take the lock with acquire() and release() in a
    # try/finally rather than "with": a with statement costs as much again
    # (about 1,100 instructions, a twentieth of a locked write).

    def acquire_lease(self, key: str, token: str, ttl: float | None) -> int | None:
        lock = self._lock
        lock.acquire()
        try:
            leases = self._leases
            lease = leases.get(key)
            if lease is not None:
                holder = self._holder(key, time.monotonic())
                if holder is not None and holder != token:
                    return None
                if holder == token:
                    # A retry of an acquire whose reply was lost: same lease, same fence.
                    leases[key] = (token, _deadline(ttl))
                    return self._fences[key]
            fences = self._fences
            fence = fences.get(key, 0) + 1  # every grant advances the fence
            fences[key] = fence
            leases[key] = (token, None if ttl is None else time.monotonic() + ttl)
            return fence
        finally:
            lock.release()

    def release_lease(self, key: str, token: str) -> bool:
        lock = self._lock
        lock.acquire()
        try:
            leases = self._leases
            lease = leases.get(key)  # _holder, inlined: every lock is released here
            if lease is None or lease[0] != token:
                return False
            del leases[key]
            if self._waiting:  # _wake, inlined
                self._changed.notify_all()
            # An expired lease is gone either way, but it was not ours to release.
            return lease[1] is None or lease[1] > time.monotonic()
        finally:
            lock.release()

    def extend_lease(self, key: str, token: str, ttl: float) -> bool:
        with self._lock:
            if self._holder(key, time.monotonic()) != token:
                return False
            deadline = self._leases[key][1]
            if deadline is not None:
                self._leases[key] = (token, deadline + ttl)
            return True

    def persist_lease(self, key: str, token: str) -> bool:
        with self._lock:
            if self._holder(key, time.monotonic()) != token:
                return False
            self._leases[key] = (token, None)
            return True

    def fenced_set(self, key: str, value: bytes, token: str, ttl: float | None) -> Fenced:
        limit = self.max_value_size  # check_size, inlined: every locked write comes here
        if limit is not None and len(value) > limit:
            self.check_size(key, value)
        lock = self._lock
        lock.acquire()
        try:
            lease = self._leases.get(key)  # _holder, inlined: every locked write comes here
            now = time.monotonic()
            if lease is None or lease[0] != token or (lease[1] is not None and lease[1] <= now):
                self._holder(key, now)  # drops the lease if it expired
                return _LEASE_LOST
            self._data[key] = (value, None if ttl is None else now + ttl)
            return _WRITTEN
        finally:
            lock.release()

    def fenced_delete(self, key: str, token: str) -> Fenced:
        with self._lock:
            now = time.monotonic()
            if self._holder(key, now) != token:
                return Fenced.LEASE_LOST
            if self._read(key, now) is NO_VALUE:
                return Fenced.MISSING
            del self._data[key]
            return Fenced.WRITTEN

    def lease_info(self, key: str) -> LeaseInfo | None:
        with self._lock:
            now = time.monotonic()
            holder = self._holder(key, now)
            if holder is None:
                return None
            deadline = self._leases[key][1]
            remaining = None if deadline is None else max(0.0, deadline - now)
            token = holder if type(holder) is str else f"{_UPDATE}{holder}"
            return LeaseInfo(token=token, fence=self._fences[key], remaining=remaining)

    def break_lease(self, key: str) -> bool:
        with self._lock:
            broken = self._leases.pop(key, None) is not None
            self._wake()
            return broken

    def wait_for_release(self, key: str, timeout: float) -> None:
        # Woken by release_lease/break_lease; an expiry wakes nobody, so the
        # wait is capped and the caller retries.
        with self._lock:
            lease = self._leases.get(key)
            if lease is None:
                return
            limit = timeout
            if lease[1] is not None:
                limit = min(limit, max(0.0, lease[1] - time.monotonic()))
            self._waiting += 1
            try:
                self._changed.wait(limit)
            finally:
                self._waiting -= 1

    updates_in_one_step = True

    def update_value(self, key: str, change: Callable[[bytes | NoValue], bytes],
                     ttl: float | None, lease_ttl: float | None) -> Fenced | None:
        """An in-process lease for the length of ``change``: a dict entry under the lock.

        ``change`` runs outside the lock, so it may use the store (other keys);
        the entry keeps other holders (and other update() calls) off this key.
        """
        token = next(self._update_tokens)  # an int: never a get_lock token (a str)
        leases = self._leases
        lock = self._lock
        # _holder, _deadline and _read written out: this is every update().
        lock.acquire()
        try:
            now = time.monotonic()
            lease = leases.get(key)
            if lease is not None and (lease[1] is None or lease[1] > now):
                return None
            fences = self._fences
            fences[key] = fences.get(key, 0) + 1
            leases[key] = (token, None if lease_ttl is None else now + lease_ttl)
            entry = self._data.get(key)
            stored = entry[0] if entry is not None and (
                entry[1] is None or entry[1] > now) else NO_VALUE
        finally:
            lock.release()
        try:
            value = change(stored)
            limit = self.max_value_size
            if limit is not None and len(value) > limit:
                self.check_size(key, value)
        except BaseException:
            with self._lock:
                if leases.get(key, _NOBODY)[0] == token:
                    del leases[key]
                    self._wake()
            raise
        lock = self._lock  # a fork during change() replaced it
        lock.acquire()
        try:
            lease = leases.get(key)
            now = time.monotonic()
            if lease is None or lease[0] != token or (
                    lease[1] is not None and lease[1] <= now):
                return _LEASE_LOST  # broken (or, past lease_ttl, expired) meanwhile
            self._data[key] = (value, None if ttl is None else now + ttl)
            del leases[key]
            if self._waiting:
                self._changed.notify_all()
        finally:
            lock.release()
        return _WRITTEN

    def _wake(self) -> None:
        """Wake the waiters of wait_for_release (under the lock)."""
        if self._waiting:
            self._changed.notify_all()

    def ping(self) -> None:
        return None
