"""Scheduled logging: one sampler thread per declared store, elected by a lease.

The thread keeps a heap of ``(next_due, endpoint)`` and calls ``sample(name)``
for each endpoint when it falls due, every ``schedule_interval`` seconds.  An
exception inside a sample is logged and the loop goes on.

On a backend shared between processes only one process samples a store at a
time: the thread must hold the lease on ``_provider:sampler`` (through
:class:`LeaderLease`) before it samples.  Followers try to take it every
heartbeat, so when the leader dies another process takes over once its lease
runs out (``lease_seconds`` plus the lock's safety window).  With
``locking=False`` leases are no-ops and every process samples.

``stop()`` sets the thread's stop event, joins it, and gives the lease back.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from kvs import exception
from kvs.core import KeyValueStore
from kvs.lock import KeyValueStoreLock

LOG = logging.getLogger(__name__)

SAMPLER_LEASE_KEY = "_provider:sampler"
#: Longest sleep between leadership checks.
MAX_HEARTBEAT = 1.0


class LeaderLease:
    """A renewable lease electing the one sampler of a store."""

    def __init__(self, store: KeyValueStore, lease_seconds: float) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        self.store = store
        self.lease_seconds = lease_seconds
        self._lock: KeyValueStoreLock | None = None
        self._renewed = 0.0

    @property
    def held(self) -> bool:
        return self._lock is not None and self._lock.active and not self._lock.expired

    def hold(self) -> bool:
        """Take or renew the lease without waiting; say whether we lead now."""
        if self._lock is not None and self._lock.active:
            now = time.monotonic()
            try:
                # extend() adds to the deadline: adding the time since the last
                # renewal keeps it lease_seconds ahead of now.
                self._lock.extend(max(now - self._renewed, 1e-3))
                self._renewed = now
                return True
            except exception.LockTimeout:
                LOG.warning("sampler of store %r lost its lease; re-electing", self.store.name)
                self.release()
        lock = self.store.get_lock(SAMPLER_LEASE_KEY)
        lock.lock_timeout = self.lease_seconds
        lock.lock_wait_timeout = 0.0  # one attempt: followers retry on their heartbeat
        try:
            lock.acquire()
        except exception.LockAcquireTimeout:
            return False
        self._lock = lock
        self._renewed = time.monotonic()
        LOG.info("this process now samples store %r (fence %s)", self.store.name, lock.fence)
        return True

    def release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            try:
                lock.release()
            except Exception:
                LOG.warning("could not release the sampler lease of store %r",
                            self.store.name, exc_info=True)


class Sampler:
    """Runs ``sample(name)`` for each active endpoint on its own interval."""

    def __init__(self, store_name: str, intervals: Mapping[str, float],
                 sample: Callable[[str], object], election: LeaderLease | None = None) -> None:
        self.store_name = store_name
        self._intervals = dict(intervals)
        self._sample = sample
        self._election = election
        self._active: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._guard = threading.Lock()
        self.leading = False

    @property
    def active(self) -> frozenset[str]:
        return frozenset(self._active)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, names: Iterable[str]) -> None:
        """Add ``names`` to the sampled endpoints and (re)start the thread."""
        names = set(names)
        for name in names:
            if self._intervals.get(name, 0) <= 0:
                raise ValueError(f"endpoint {name!r} has no positive schedule_interval")
        with self._guard:
            wanted = self._active | names
            self._stop_thread()
            self._active = wanted
            if wanted:
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop, frozenset(wanted)),
                    name=f"kvs-sampler-{self.store_name}", daemon=True)
                self._thread.start()

    def stop(self, names: Iterable[str] | None = None) -> None:
        """Stop sampling ``names`` (default: all); the thread ends when none is left."""
        with self._guard:
            remaining = set() if names is None else self._active - set(names)
            self._stop_thread()
            self._active = remaining
            if remaining:
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop, frozenset(remaining)),
                    name=f"kvs-sampler-{self.store_name}", daemon=True)
                self._thread.start()

    def _stop_thread(self) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        if thread is not threading.current_thread():
            thread.join(timeout=30)
            if thread.is_alive():
                LOG.error("sampler thread of store %r did not stop within 30 s",
                          self.store_name)
        self._thread = None

    def _heartbeat(self, names: frozenset[str]) -> float:
        return min([MAX_HEARTBEAT] + [self._intervals[name] for name in names])

    def _run(self, stop: threading.Event, names: frozenset[str]) -> None:
        heartbeat = self._heartbeat(names)
        start = time.monotonic()
        due = [(start, name) for name in sorted(names)]
        heapq.heapify(due)
        try:
            while not stop.is_set():
                if not self._lead():
                    stop.wait(heartbeat)
                    continue
                now = time.monotonic()
                while due and due[0][0] <= now and not stop.is_set():
                    when, name = heapq.heappop(due)
                    self._sample_safely(name)
                    interval = self._intervals[name]
                    # Skip missed ticks rather than firing a burst to catch up.
                    upcoming = when + interval
                    if upcoming <= time.monotonic():
                        upcoming = time.monotonic() + interval
                    heapq.heappush(due, (upcoming, name))
                wait = due[0][0] - time.monotonic() if due else heartbeat
                stop.wait(max(0.0, min(wait, heartbeat)))
        finally:
            self.leading = False
            if self._election is not None:
                self._election.release()

    def _lead(self) -> bool:
        if self._election is None:
            self.leading = True
            return True
        try:
            self.leading = self._election.hold()
        except Exception:
            LOG.exception("sampler election of store %r failed; retrying", self.store_name)
            self.leading = False
        return self.leading

    def _sample_safely(self, name: str) -> None:
        try:
            self._sample(name)
        except Exception:
            LOG.exception("scheduled sample of %s.%s failed; the sampler goes on",
                          self.store_name, name)
