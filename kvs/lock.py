"""KeyValueStoreLock: a per-key write lease with a token and a fence.

A lease of ``lock_timeout`` T seconds is taken on the backend for ``T + w``
seconds, while the holder itself considers it valid for only ``T - w``
seconds, where the safety window ``w = min(1 s, T / 4)``.  This is Keystone's
``LOCK_WINDOW`` idea made to work for sub-second timeouts: the backend's lease
always outlives the holder's view of it, so a holder that still believes it
owns the lease really does, even with a slow reply in between.  A holder whose
view has run out gets :class:`~kvs.exception.LockTimeout` before writing; a
holder whose lease was taken over anyway (forced break, paused process) is
stopped by the backend's fenced write and gets
:class:`~kvs.exception.LeaseLost`.

All client-side time is ``time.monotonic()``.

A lock is in exactly one :class:`LockState`: ``IDLE`` (never acquired),
``HELD``, ``LOST`` (the backend refused a fenced write or an extend: every
later write raises :class:`~kvs.exception.LeaseLost`) or ``RELEASED``.  The
lock changes its own state; the store only asks it to run a fenced write
(:meth:`KeyValueStoreLock.fenced`) and reads the outcome.

Thread-safety: a ``KeyValueStoreLock`` is used by one thread at a time (like
a file object).  Share one between threads only under your own lock.  Stores
and backends are thread-safe.
"""

from __future__ import annotations

import enum
import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from dogpile.cache.api import NO_VALUE, NoValue

from kvs import durations, exception
from kvs.backends.base import Fenced, LeaseBackend, LeaseInfo

LOG = logging.getLogger(__name__)

#: The largest safety window, as in Keystone's ``LOCK_WINDOW``.
MAX_LOCK_WINDOW = 1.0

#: Seconds a ``lock_timeout = 0`` lease lives on the backend until its grant is
#: confirmed (then it never expires).  Bounds how long a lease whose grant
#: replies were all lost can stay without an owner.
PROVISIONAL_LEASE = 10.0


def safety_window(lock_timeout: float) -> float:
    """Seconds between the holder's expiry and the backend's (each side of T)."""
    return min(MAX_LOCK_WINDOW, lock_timeout / 4.0)


# Tokens: 64 random bits drawn once per process, then a counter.  Unique
# across processes, restarts and forks (a child draws new bits) without a
# system call per acquisition, which costs more than a memory-backend lease.
# The random bits are kept as the high half of an int: the hex of the 16 bytes
# of (bits | counter) is the same 32 digits as prefix + "%016x" of the counter,
# at two thirds of the cost of formatting the two (a tenth of a memory lease).
_token_prefix = os.urandom(8).hex()
_token_bits = int(_token_prefix, 16) << 64
_token_counter = itertools.count(1)


def new_token() -> str:
    """A token no other acquisition anywhere has: 32 hex digits, as uuid4().hex."""
    return (_token_bits | next(_token_counter)).to_bytes(16, "big").hex()


def _new_token_source_in_child() -> None:
    global _token_prefix, _token_bits, _token_counter
    _token_prefix = os.urandom(8).hex()
    _token_bits = int(_token_prefix, 16) << 64
    _token_counter = itertools.count(1)


os.register_at_fork(after_in_child=_new_token_source_in_child)


class LockState(enum.Enum):
    """Where a lock is in its life."""

    IDLE = "idle"
    HELD = "held"
    #: The backend refused a fenced write or an extend; release() is local only.
    LOST = "lost"
    RELEASED = "released"


# An enum member is looked up through its class on every access (about 70 ns):
# the hot paths use these names instead.
_IDLE, _HELD, _LOST, _RELEASED = LockState.IDLE, LockState.HELD, LockState.LOST, LockState.RELEASED


class Leases(Protocol):
    """The lease half of the backend contract, as the lock uses it."""

    def acquire_lease(self, key: str, token: str, ttl: float | None) -> int | None: ...
    def release_lease(self, key: str, token: str) -> bool: ...
    def extend_lease(self, key: str, token: str, ttl: float) -> bool: ...
    def persist_lease(self, key: str, token: str) -> bool: ...
    def lease_info(self, key: str) -> LeaseInfo | None: ...
    def wait_for_release(self, key: str, timeout: float) -> None: ...


class KeyValueStoreLock:
    """A write lease on one key of one store.  Not acquired until ``acquire()``.

    Use it as a context manager, and pass it to ``store.set(..., lock=)`` or
    ``store.delete(..., lock=)``.  Reads are never blocked.  Not re-entrant:
    acquiring an active lock raises ``RuntimeError``.
    """

    # Slots: a lock is made for every locked write, and slots make it cheaper.
    __slots__ = (
        "_grants",
        "_leases",
        "_max_duration",
        "_state",
        "_valid_until",
        "enabled",
        "fence",
        "key",
        "lease_key",
        "lock_timeout",
        "lock_wait_timeout",
        "max_attempts",
        "store",
        "token",
    )

    def __init__(self, leases: Leases, key: str, lease_key: str, lock_timeout: float,
                 lock_wait_timeout: float, enabled: bool = True, store: str | None = None,
                 max_duration: Callable[[], float] = lambda: durations.MAX_SECONDS,
                 max_attempts: int | None = None) -> None:
        self._leases = leases
        #: The user's key this lock guards.
        self.key = key
        #: The mangled backend key the lease belongs to.
        self.lease_key = lease_key
        #: Seconds the lease lasts; 0 means it never expires.
        self.lock_timeout = lock_timeout
        self.lock_wait_timeout = lock_wait_timeout
        #: False when the store was configured with ``locking=False``.
        self.enabled = enabled
        self.store = store
        self._max_duration = max_duration
        #: Tries acquire() makes at most (Keystone's max_lock_attempts); None:
        #: as many as fit in lock_wait_timeout.
        self.max_attempts = max_attempts
        #: The backend queues waiters and grants at release (see _wait_for_grant).
        self._grants = bool(getattr(leases, "grants_on_release", False)) and max_attempts is None
        #: Unique per acquisition; None before the first acquire.
        self.token: str | None = None
        #: Strictly increasing per key and store across acquisitions; None before.
        self.fence: int | None = None
        self._state = _IDLE
        self._valid_until: float | None = None

    # -- state --------------------------------------------------------------

    @property
    def state(self) -> LockState:
        return self._state

    @property
    def active(self) -> bool:
        """True from acquire() until release(), lost or not."""
        return self._state is _HELD or self._state is _LOST

    def issued_by(self, leases: object) -> bool:
        """True if this lock takes its leases from ``leases`` (the store's own)."""
        return self._leases is leases

    @property
    def expired(self) -> bool:
        """True once the holder's view of the lease has run out."""
        if not self.active or self._valid_until is None:
            return False
        return time.monotonic() >= self._valid_until

    @property
    def remaining(self) -> float | None:
        """Seconds left in the holder's view; None when the lease never expires."""
        if self._valid_until is None:
            return None
        return max(0.0, self._valid_until - time.monotonic())

    def _backend_ttl(self) -> float:
        if self.lock_timeout == 0:
            # Never expires, once confirmed: see _confirm_permanent.
            return PROVISIONAL_LEASE
        return self.lock_timeout + safety_window(self.lock_timeout)

    def _start(self, fence: int, started: float) -> None:
        self.fence = fence
        self._state = LockState.HELD
        if self.lock_timeout == 0:
            self._valid_until = None
        else:
            self._valid_until = started + self.lock_timeout - safety_window(self.lock_timeout)

    # -- operations ---------------------------------------------------------

    def acquire(self) -> KeyValueStoreLock:
        """Take the lease, waiting up to ``lock_wait_timeout`` seconds.

        Raises :class:`~kvs.exception.LockAcquireTimeout` when the wait runs out.
        """
        state = self._state
        if state is _HELD or state is _LOST or not self.enabled or self.lock_timeout == 0 \
                or self._grants:
            self._acquire(self._attempt)
            return self
        # The hot path, _acquire written out for a free lease with a timeout.
        # new_token(), written out.
        self.token = token = (_token_bits | next(_token_counter)).to_bytes(16, "big").hex()
        timeout = self.lock_timeout
        window = MAX_LOCK_WINDOW if timeout >= 4 * MAX_LOCK_WINDOW else timeout / 4.0
        started = time.monotonic()
        try:
            fence = self._leases.acquire_lease(self.lease_key, token, timeout + window)
        except exception.BackendUnavailable:
            fence = self._retry(self._attempt)
        if fence is None:
            self._acquire(self._attempt, first_token=token)  # wait for the holder, then retry
            return self
        self.fence = fence
        self._state = _HELD
        self._valid_until = started + timeout - window
        return self

    def _attempt(self) -> int | None:
        assert self.token is not None
        return self._leases.acquire_lease(self.lease_key, self.token, self._backend_ttl())

    def acquire_and_get(self, backend: LeaseBackend) -> bytes | NoValue:
        """``acquire()`` and read the key's stored bytes in one backend round trip.

        Used by ``KeyValueStore.update`` when nothing (no proxy) needs to see
        the read.
        """
        stored: bytes | NoValue = NO_VALUE

        def attempt() -> int | None:
            nonlocal stored
            assert self.token is not None
            fence, stored = backend.acquire_lease_and_get(
                self.lease_key, self.token, self._backend_ttl())
            return fence

        def granted(value: bytes | NoValue) -> None:
            nonlocal stored
            stored = value

        self._acquire(attempt, on_grant=granted)
        return stored

    def _acquire(self, attempt: Callable[[], int | None], first_token: str | None = None,
                 on_grant: Callable[[bytes | NoValue], None] | None = None) -> None:
        """Take the lease.  ``first_token``: acquire() already tried with it and found it held.

        On a backend that hands the lease over at release (``grants_on_release``:
        Redis standalone and Sentinel), a waiter queues and is granted the lease
        and the key's value by the release itself; ``on_grant`` receives that
        value.  Elsewhere it waits for a release and tries again.
        """
        if first_token is None:
            if self._state is _HELD or self._state is _LOST:
                raise RuntimeError(
                    f"lock on key {self.key!r} is already acquired (not re-entrant)")
            self.token = new_token()
            if not self.enabled:
                self._start(0, time.monotonic())
                return
        deadline = time.monotonic() + self.lock_wait_timeout
        tried = first_token is not None
        attempts = int(tried)
        leases: Any = self._leases
        if self._grants:
            # The queue call takes a free lease at once, so it is also the first try.
            self._wait_for_grant(leases, deadline, on_grant)
            return
        while True:
            if not tried:
                started = time.monotonic()
                attempts += 1
                fence = self._attempt_with_retry(attempt)
                if fence is not None and (self.lock_timeout != 0 or self._confirm_permanent()):
                    self._start(fence, started)
                    return
            tried = False
            if self.max_attempts is not None and attempts >= self.max_attempts:
                raise exception.LockAcquireTimeout(
                    f"could not lock key {self.key!r} in store {self.store!r} in "
                    f"{attempts} attempt{'s' if attempts != 1 else ''} (max_lock_attempts)",
                    key=self.key, store=self.store)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise exception.LockAcquireTimeout(
                    f"could not lock key {self.key!r} in store {self.store!r} within "
                    f"{self.lock_wait_timeout} s", key=self.key, store=self.store)
            self._leases.wait_for_release(self.lease_key, remaining)

    def _wait_for_grant(self, leases: Any, deadline: float,
                        on_grant: Callable[[bytes | NoValue], None] | None) -> None:
        """Queue for the lease until a release grants it (with the value) or the wait ends.

        Lost replies: a queue call whose reply was lost may have granted the
        lease (or a grant's wake-up may have been lost); the next queue call
        with the same token finds it ours and says so.  If that fails too, the
        lease is given back and the queue left (best effort) before the error
        is raised.  Giving up at ``lock_wait_timeout`` leaves the queue; if the
        lease was granted meanwhile, it is taken rather than left without owner.
        """
        assert self.token is not None
        token, key = self.token, self.lease_key
        first = True  # the first call is also the first try, even with no wait at all
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 and not first:
                waited = time.monotonic()
                grant = self._leave_queue(leases)
                if grant is None:
                    raise exception.LockAcquireTimeout(
                        f"could not lock key {self.key!r} in store {self.store!r} within "
                        f"{self.lock_wait_timeout} s", key=self.key, store=self.store)
            else:
                waited = time.monotonic()
                read, was_first, first = on_grant is not None, first, False
                try:
                    grant = leases.wait_for_grant(key, token, self._backend_ttl(),
                                                  max(0.0, remaining), read, was_first)
                except exception.BackendUnavailable:
                    try:
                        grant = leases.wait_for_grant(key, token, self._backend_ttl(), 0.0,
                                                      read)
                    except exception.BackendUnavailable:
                        self._give_back()
                        self._leave_queue(leases, best_effort=True)
                        raise
            if grant is None:
                continue
            fence, value = grant
            if self.lock_timeout == 0 and not self._confirm_permanent():
                continue  # lost before it was made permanent: queue again
            # The grant happened after ``waited``: the holder's view starts there.
            self._start(fence, waited)
            if on_grant is not None:
                on_grant(value)
            return

    def _leave_queue(self, leases: Any,
                     best_effort: bool = False) -> tuple[int, bytes | NoValue] | None:
        """Leave the key's queue; the grant if the lease was handed over meanwhile."""
        assert self.token is not None
        try:
            grant: tuple[int, bytes | NoValue] | None = leases.cancel_grant(
                self.lease_key, self.token, self._backend_ttl())
        except exception.BackendUnavailable:
            if best_effort:
                return None
            self._give_back()  # it may have been granted: never leave it ownerless
            raise
        if grant is not None and best_effort:
            self._give_back()  # granted after all: still nobody's, give it back
            return None
        return grant

    def _attempt_with_retry(self, attempt: Callable[[], int | None]) -> int | None:
        """One acquire attempt that survives a lost reply.

        The backend may have granted the lease before the reply was lost.
        Retrying with the same token either confirms it or finds it free or
        taken; if the retry fails too, the lease is given back (best effort) so
        that it is never left without an owner for longer than its TTL.
        """
        try:
            return attempt()
        except exception.BackendUnavailable:
            return self._retry(attempt)

    def _retry(self, attempt: Callable[[], int | None]) -> int | None:
        """The second and last attempt; if it fails too, give the lease back."""
        try:
            return attempt()
        except exception.BackendUnavailable:
            self._give_back()
            raise

    def _confirm_permanent(self) -> bool:
        """Second step of a ``lock_timeout = 0`` acquire: drop the provisional TTL.

        The grant carried a TTL of :data:`PROVISIONAL_LEASE` seconds, so if its
        replies were lost and the give-back failed too, the lease still ends
        by itself.  False if the lease was lost meanwhile (the caller tries
        again); if the confirmation cannot reach the backend, the lease is
        given back (best effort) and BackendUnavailable raised.
        """
        assert self.token is not None
        for attempt in (1, 2):
            try:
                return self._leases.persist_lease(self.lease_key, self.token)
            except exception.BackendUnavailable:
                if attempt == 2:
                    self._give_back()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _give_back(self) -> None:
        assert self.token is not None
        try:
            self._leases.release_lease(self.lease_key, self.token)
        except exception.KVSError:
            pass  # unreachable: the lease ends with its TTL

    def release(self, _exc_type: object = None, _exc: object = None,
                _traceback: object = None) -> None:
        """Give the lease back.  Never releases a lease another holder now owns.

        Releasing a lease whose time ran out logs a warning and returns.  (It
        is ``__exit__`` too, which passes the exception, if any: ignored.  The
        three arguments are named, not ``*args``: a tuple per release costs.)
        """
        state = self._state
        if state is not _HELD:
            if state is _LOST:
                self._state = _RELEASED
            return
        if not self.enabled:
            self._state = _RELEASED
            return
        token: str = self.token  # type: ignore[assignment]  # set while HELD
        valid_until = self._valid_until
        late = valid_until is not None and time.monotonic() >= valid_until
        # Stays held if this raises, so release() can be retried: it is a
        # compare-and-delete, safe to repeat.
        released = self._leases.release_lease(self.lease_key, token)
        self._state = _RELEASED
        if late:
            LOG.warning("lock on key %r in store %r released after its timeout (%s s)",
                        self.key, self.store, self.lock_timeout)
        elif not released:
            LOG.warning("lock on key %r in store %r was lost before release",
                        self.key, self.store)

    def extend(self, seconds: float) -> None:
        """Add ``seconds`` to the lease, if it is still ours.

        Raises :class:`~kvs.exception.LockTimeout` if the lease already ran out
        or was taken over.
        """
        seconds = durations.seconds("extend(seconds)", seconds, self._max_duration(), zero=False)
        self.check(for_key=self.key)
        if not self.enabled or self._valid_until is None:
            return
        assert self.token is not None
        if not self._leases.extend_lease(self.lease_key, self.token, seconds):
            self._state = LockState.LOST
            raise exception.LeaseLost(
                f"lease on key {self.key!r} in store {self.store!r} was lost; cannot extend",
                key=self.key, store=self.store)
        self._valid_until += seconds

    def check(self, for_key: str) -> None:
        """Validate this lock for a write to ``for_key`` (Keystone's checks)."""
        if for_key != self.key:
            raise ValueError(f"lock is for key {self.key!r}, not {for_key!r}")
        state = self._state
        if state is not _HELD:
            if state is _LOST:
                raise exception.LeaseLost(
                    f"lease on key {self.key!r} in store {self.store!r} was lost",
                    key=self.key, store=self.store)
            raise ValueError(f"lock on key {self.key!r} is not active; acquire it first")
        if self._valid_until is not None and time.monotonic() >= self._valid_until:
            raise exception.LockTimeout(
                f"lock timeout occurred for key {self.key!r} in store {self.store!r}",
                key=self.key, store=self.store)

    def fenced(self, for_key: str, write: Callable[[str], Fenced]) -> Fenced:
        """Run ``write(token)``, one fenced write under this lease, and take its outcome.

        The lease is checked first (``LockTimeout``/``LeaseLost`` before
        anything is sent).  If the backend answers ``LEASE_LOST`` the lock
        becomes ``LOST`` and :class:`~kvs.exception.LeaseLost` is raised:
        nothing was written.  Otherwise the outcome (``WRITTEN``, or
        ``MISSING`` for a delete) is returned.
        """
        outcome = write(self.write_token(for_key))
        if outcome is Fenced.LEASE_LOST:
            self.lose()
        return outcome

    def write_token(self, for_key: str) -> str:
        """The token for one fenced write to ``for_key``, once :meth:`check` passes.

        The caller sends the write with it and calls :meth:`lose` if the
        backend answers ``LEASE_LOST`` (this is :meth:`fenced` written out).
        """
        valid_until = self._valid_until
        if for_key == self.key and self._state is _HELD and (
                valid_until is None or time.monotonic() < valid_until):
            return self.token  # type: ignore[return-value]  # set while HELD
        self.check(for_key=for_key)  # raises: the same checks, each with its message
        raise AssertionError("unreachable")  # pragma: no cover

    def lose(self) -> NoReturn:
        """The backend refused a fenced write: the lock is LOST; raise LeaseLost."""
        self._state = LockState.LOST
        raise exception.LeaseLost(
            f"lease on key {self.key!r} in store {self.store!r} expired or was taken "
            f"over; nothing was written", key=self.key, store=self.store)

    def fenced_and_release(self, write: Callable[[str], Fenced]) -> Fenced:
        """:meth:`fenced` for a write that also gives the lease back (``update()``)."""
        outcome = self.fenced(self.key, write)
        self._state = LockState.RELEASED
        return outcome

    # -- context manager ----------------------------------------------------

    # The methods themselves (no frame in between): ``with`` is the usual way in.
    __enter__ = acquire
    __exit__ = release

    def __repr__(self) -> str:
        return f"<KeyValueStoreLock key={self.key!r} {self._state.value} fence={self.fence}>"
