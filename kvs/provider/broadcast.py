"""Change broadcasts: the decision rule, local subscribers, and the shared event log.

An event is a plain dict::

    {"store": "prices", "endpoint": "peaches", "value_raw": 0.75, "value_cal": 1.5,
     "timestamp": "2024-05-01T12:00:00.000000+00:00", "reason": "change"}

(``value_cal`` only when the endpoint is calibrated; ``reason`` is one of
``first``, ``interval``, ``change``, ``on_set``.)  Each event goes

1. to the subscribers of this process, synchronously, each one shielded from
   the others: a subscriber that raises is logged and skipped;
2. to the store's **event log**, a ring buffer of keys in the store itself plus
   a sequence counter, so :class:`Watcher` in any process sharing the store
   sees it, whatever the backend;
3. to the endpoint's ``alert_channel`` through Redis pub/sub as JSON, when the
   store's backend offers a ``publish`` call (see :func:`channel_publisher`).

Failures of steps 2 and 3 are logged; they never fail the ``set`` or the
sample that produced the event.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

from kvs import exception
from kvs.core import KeyValueStore

LOG = logging.getLogger(__name__)

REASONS = ("first", "interval", "change", "on_set")

#: Keys of the event log inside the store (endpoint names cannot contain ':').
EVENT_SEQUENCE_KEY = "_provider:events:seq"
EVENT_SLOT_PREFIX = "_provider:events:"


# -- the decision rule ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Baseline:
    """The last broadcast value of an endpoint and when it went out (epoch seconds)."""

    value: Any
    time: float


@dataclasses.dataclass(frozen=True)
class BroadcastPolicy:
    """When a scheduled sample is worth broadcasting.

    ``max_interval`` 0 disables the interval rule; a change threshold of
    ``None`` disables that threshold (it does *not* mean 0, which would be
    "any change at all").
    """

    max_interval: float = 0.0
    max_absolute_change: float | None = None
    max_fractional_change: float | None = None

    @property
    def watches_changes(self) -> bool:
        return self.max_absolute_change is not None or self.max_fractional_change is not None

    def decide(self, previous: Baseline | None, value: Any, now: float) -> str | None:
        """The reason to broadcast ``value`` at ``now``, or ``None`` to drop it."""
        return decide(self, previous, value, now)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def relative_change(old: float, new: float) -> float:
    """Symmetric relative change ``2|new-old| / (|new|+|old|)``, in [0, 2].

    Safe at 0: 0 to 0 is no change, 0 to anything else is the maximum, 2.
    Unlike dripline's ``|Δ|/prev`` it is symmetric and sign-safe (-2 to -4 is
    as large a change as 2 to 4).
    """
    scale = abs(old) + abs(new)
    if scale == 0:
        return 0.0
    return 2.0 * abs(new - old) / scale


def same_value(old: Any, new: Any) -> bool:
    """Equality for non-numeric samples: types must match too (True is not 1), nan == nan."""
    if _is_number(old) and _is_number(new):
        if isinstance(old, float) and isinstance(new, float) and math.isnan(old):
            return math.isnan(new)
        return bool(old == new)
    return type(old) is type(new) and bool(old == new)


def decide(policy: BroadcastPolicy, previous: Baseline | None, value: Any,
           now: float) -> str | None:
    """Pure broadcast decision for one sample.

    In order: ``first`` when nothing was broadcast yet; ``interval`` when
    ``max_interval`` > 0 and more than that many seconds passed since the last
    broadcast; ``change`` when a change threshold is set and the sample moved
    by more than it from the last broadcast value.  A non-numeric (or
    non-finite) sample that differs from the baseline exceeds any threshold.
    """
    if previous is None:
        return "first"
    if policy.max_interval > 0 and now - previous.time > policy.max_interval:
        return "interval"
    if not policy.watches_changes:
        return None
    old = previous.value
    if _finite(old) and _finite(value):
        delta = abs(value - old)
        if policy.max_absolute_change is not None and delta > policy.max_absolute_change:
            return "change"
        if (policy.max_fractional_change is not None
                and relative_change(old, value) > policy.max_fractional_change):
            return "change"
        return None
    return None if same_value(old, value) else "change"


# -- events --------------------------------------------------------------------

def utc_timestamp(now: float | None = None) -> str:
    """ISO 8601 UTC with microseconds, e.g. ``2024-05-01T12:00:00.000000+00:00``."""
    moment = datetime.datetime.fromtimestamp(time.time() if now is None else now,
                                             tz=datetime.timezone.utc)
    return moment.isoformat(timespec="microseconds")


def make_event(store: str, endpoint: str, reading: dict[str, Any], reason: str,
               now: float | None = None) -> dict[str, Any]:
    """An event dict from a ``get()`` reading."""
    if reason not in REASONS:
        raise ValueError(f"unknown broadcast reason {reason!r}")
    event: dict[str, Any] = {"store": store, "endpoint": endpoint,
                             "value_raw": reading.get("value_raw")}
    if "value_cal" in reading:
        event["value_cal"] = reading["value_cal"]
    event["timestamp"] = utc_timestamp(now)
    event["reason"] = reason
    return event


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return repr(value)


def event_json(event: dict[str, Any]) -> str:
    """The JSON text published on a channel (bytes become text, others their repr)."""
    return json.dumps(event, default=_json_default, sort_keys=True)


# -- local subscribers ---------------------------------------------------------

Callback = Callable[[dict[str, Any]], Any]


class Subscription:
    """Handle of one subscriber; ``close()`` stops delivery (idempotent)."""

    def __init__(self, subscribers: Subscribers, callback: Callback) -> None:
        self._subscribers = subscribers
        self.callback = callback

    @property
    def active(self) -> bool:
        return self in self._subscribers._list

    def close(self) -> None:
        self._subscribers._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Subscribers:
    """Callbacks of this process, each called with a copy of every event."""

    def __init__(self) -> None:
        self._list: list[Subscription] = []
        self._guard = threading.Lock()

    def add(self, callback: Callback) -> Subscription:
        if not callable(callback):
            raise TypeError("a subscriber must be callable")
        handle = Subscription(self, callback)
        with self._guard:
            self._list.append(handle)
        return handle

    def _remove(self, handle: Subscription) -> None:
        with self._guard:
            if handle in self._list:
                self._list.remove(handle)

    def __len__(self) -> int:
        return len(self._list)

    def deliver(self, event: dict[str, Any]) -> None:
        with self._guard:
            handles = list(self._list)
        for handle in handles:
            try:
                # A copy each, so one subscriber mutating its event cannot
                # change what the next one sees.
                handle.callback(dict(event))
            except Exception:
                LOG.exception("subscriber %r failed on an event of %s.%s; ignored",
                              handle.callback, event.get("store"), event.get("endpoint"))


# -- the shared event log ------------------------------------------------------

class EventLog:
    """Events kept in the store itself, readable from any process.

    ``_provider:events:seq`` counts events; event ``n`` lives in slot
    ``n % size``, tagged with ``n``.  The writer holds the counter's lease
    while it writes the slot and only then advances the counter, so a reader
    that sees the counter at ``n`` always finds events up to ``n`` written.
    A ring needs no TTLs, so this works on every backend, stock ones included.
    """

    def __init__(self, store: KeyValueStore, size: int = 1000) -> None:
        if size < 1:
            raise ValueError("event log size must be >= 1")
        self.store = store
        self.size = size

    def slot_key(self, sequence: int) -> str:
        return f"{EVENT_SLOT_PREFIX}{sequence % self.size}"

    def last_sequence(self) -> int:
        """The number of the newest event (0 before the first)."""
        try:
            return int(self.store.get(EVENT_SEQUENCE_KEY))
        except exception.NotFound:
            return 0

    def append(self, event: dict[str, Any]) -> int:
        """Add ``event``; return its sequence number."""
        with self.store.get_lock(EVENT_SEQUENCE_KEY) as lock:
            sequence = self.last_sequence() + 1
            self.store.set(self.slot_key(sequence), {"seq": sequence, "event": event})
            self.store.set(EVENT_SEQUENCE_KEY, sequence, lock=lock)
        return sequence

    def read(self, sequence: int) -> dict[str, Any] | None:
        """Event ``sequence``, or ``None`` when its slot was already reused."""
        try:
            entry = self.store.get(self.slot_key(sequence))
        except exception.NotFound:
            return None
        if not isinstance(entry, dict) or entry.get("seq") != sequence:
            return None
        event = entry.get("event")
        return event if isinstance(event, dict) else None


class Watcher:
    """Iterator over the events appended to an :class:`EventLog` after it was made.

    Polls the counter every ``poll_interval`` seconds.  Stops (``StopIteration``)
    when ``stop_event`` is set, when ``timeout`` seconds pass without an event
    (``None``: wait forever), or after :meth:`close`.  ``names`` filters by
    endpoint.  Missed events (a reader more than the log size behind) are
    logged and counted in :attr:`missed`.
    """

    def __init__(self, log: EventLog, names: Collection[str] | None = None,
                 stop_event: threading.Event | None = None, poll_interval: float = 0.1,
                 timeout: float | None = None) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0")
        self._log = log
        self._names = None if names is None else frozenset(names)
        self._stop = stop_event if stop_event is not None else threading.Event()
        self._poll = poll_interval
        self._timeout = timeout
        self._next = log.last_sequence() + 1
        self.missed = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def close(self) -> None:
        self._stop.set()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __next__(self) -> dict[str, Any]:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while not self._stop.is_set():
            try:
                event = self._poll_once()
            except exception.BackendUnavailable as error:
                LOG.warning("watching store %r: %s; retrying", self._log.store.name, error)
                event = None
            if event is not None:
                return event
            wait = self._poll
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            self._stop.wait(wait)
        raise StopIteration

    def _poll_once(self) -> dict[str, Any] | None:
        last = self._log.last_sequence()
        while self._next <= last:
            sequence = self._next
            self._next += 1
            event = self._log.read(sequence)
            if event is None:
                self.missed += 1
                LOG.warning("watching store %r: event %d was overwritten before it was "
                            "read", self._log.store.name, sequence)
                continue
            if self._names is None or event.get("endpoint") in self._names:
                return event
        return None


# -- channels (Redis pub/sub) --------------------------------------------------

Publisher = Callable[[str, str], Any]


def channel_publisher(store: KeyValueStore) -> Publisher | None:
    """A ``publish(channel, text)`` for the store's backend, or ``None``.

    A backend offers pub/sub by having a ``publish(channel, message)`` method
    (the kvs Redis backends), or a redis-py client as ``writer_client`` or
    ``client`` (dogpile's stock Redis backends).
    """
    try:
        backend = store.region.actual_backend
    except Exception:  # an unconfigured region raises; nothing to publish to
        return None
    publish = getattr(backend, "publish", None)
    if callable(publish):
        return publish  # type: ignore[no-any-return]
    for attribute in ("writer_client", "client"):
        client = getattr(backend, attribute, None)
        if client is not None and callable(getattr(client, "publish", None)):
            return client.publish  # type: ignore[no-any-return]
    return None
