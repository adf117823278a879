"""A near cache for the Redis backends: hot values in process memory, kept coherent
by Redis's server-assisted invalidation (``CLIENT TRACKING``, broadcast mode).

Why not redis-py's own client-side cache
----------------------------------------
redis-py (5.1 and newer) caches through ``cache_config`` on a RESP3 pool, but
it refuses servers older than Redis 7.4 (Debian's is 7.0), and it serves a hit
through the connection pool plus a poll of the socket for pending
invalidations, several microseconds, where a hit here is a dictionary lookup.
So kvs keeps its own small cache and uses only what Redis 6.0 already offers.

How it stays coherent
---------------------
A background thread holds two connections of its own: a pub/sub connection
subscribed to ``__redis__:invalidate``, and a tracker connection that ran
``CLIENT TRACKING ON REDIRECT <pub/sub id> BCAST PREFIX <store prefix>``.
From then on Redis publishes the name of every key under the prefix that any
client modifies (or that expires or is evicted), and the thread drops those
names from the cache.  The thread pings both connections every
:data:`HEARTBEAT` seconds; the cache serves hits only while the last round of
pings answered less than :data:`LIVENESS` seconds ago.  When either
connection fails, the cache is flushed and bypassed until both are back and
tracking is on again (a reconnect can have missed invalidations).

A read that misses goes to the server and may fill the cache, but only if no
invalidation at all was processed while it ran (the ``epoch``): otherwise an
invalidation of a write that raced the read could arrive before the fill and
leave a stale copy behind.

Staleness bound: a hit can be older than the newest write by the time its
invalidation takes to reach this process and be processed: well under a
millisecond on loopback (tests/functional/test_near_cache.py measures it),
and never longer than :data:`LIVENESS` seconds, because a thread that stops
hearing from the server stops serving hits.

Thread-safe: one lock guards the dictionary; the thread and every reader
take it for a few dictionary operations only.  Fork-safe: a child starts a
thread of its own on first use and starts with an empty cache.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

LOG = logging.getLogger(__name__)

#: Seconds between two rounds of pings on the thread's connections.
HEARTBEAT = 0.1
#: Hits are served only this long after the last answered round of pings.
LIVENESS = 0.5
#: Pause between two attempts to reconnect.
RECONNECT_PAUSE = 0.1

_CHANNEL = b"__redis__:invalidate"


class NearCache:
    """At most ``size`` values by Redis key name, LRU, coherent through invalidation.

    ``connect()`` returns a new redis-py client (one connection each time it is
    called) for the thread's two connections.
    """

    def __init__(self, size: int, prefix: str, connect: Callable[[], Any]) -> None:
        self.size = size
        self.prefix = prefix
        self._connect = connect
        self._lock = threading.Lock()
        #: Values by Redis key name (str: reads outnumber invalidations, so names
        #: are decoded once per invalidation instead of encoded once per read).
        self._values: OrderedDict[str, bytes] = OrderedDict()
        #: Bumped by every invalidation processed (and by every flush).
        self.epoch = 0
        self._live_until = 0.0
        self._pid = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: Invalidation messages processed (for tests).
        self.invalidations = 0
        self._subscribed = threading.Event()

    # -- readers ---------------------------------------------------------------

    def get(self, name: str) -> bytes | None:
        """The cached value of ``name``, or None (missing, or the cache is not live)."""
        if time.monotonic() >= self._live_until or self._pid != os.getpid():
            self._ensure_thread()
            return None
        with self._lock:
            value = self._values.get(name)
            if value is not None:
                self._values.move_to_end(name)
            return value

    def get_many(self, names: list[str]) -> list[bytes | None]:
        """:meth:`get` for several names under one lock."""
        if time.monotonic() >= self._live_until or self._pid != os.getpid():
            self._ensure_thread()
            return [None] * len(names)
        found: list[bytes | None] = []
        with self._lock:
            values = self._values
            for name in names:
                value = values.get(name)
                if value is not None:
                    values.move_to_end(name)
                found.append(value)
        return found

    def live(self) -> bool:
        return time.monotonic() < self._live_until and self._pid == os.getpid()

    def put(self, name: str, value: bytes, epoch: int) -> None:
        """Keep ``value``, read from the server when the epoch was ``epoch``, unless an
        invalidation was processed since (or the cache is not live)."""
        self.put_many([(name, value)], epoch)

    def put_many(self, items: list[tuple[str, bytes]], epoch: int) -> None:
        """:meth:`put` for several values under one lock."""
        if not self.live():
            return
        with self._lock:
            if self.epoch != epoch:
                return
            values = self._values
            for name, value in items:
                values[name] = value
                values.move_to_end(name)
            while len(values) > self.size:
                values.popitem(last=False)

    def invalidate(self, names: Iterable[str]) -> None:
        """Drop ``names`` (this process wrote them; Redis will say so too)."""
        with self._lock:
            self.epoch += 1
            for name in names:
                self._values.pop(name, None)

    def flush(self) -> None:
        with self._lock:
            self.epoch += 1
            self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    # -- the invalidation thread -------------------------------------------------

    def _ensure_thread(self) -> None:
        pid = os.getpid()
        if self._pid == pid and self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._pid == pid and self._thread is not None and self._thread.is_alive():
                return
            if self._pid != pid:  # a forked child: nothing of the parent's is valid
                self._values.clear()
                self.epoch += 1
                self._live_until = 0.0
                self._stop = threading.Event()
            self._pid = pid
            self._thread = threading.Thread(target=self._run, name="kvs-near-cache",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            pubsub = tracker = None
            try:
                pubsub, tracker = self._subscribe()
                self._listen(pubsub, tracker, stop)
            except Exception as exc:  # any failure: flush, bypass, reconnect
                self._live_until = 0.0
                self.flush()
                LOG.debug("near cache for prefix %r: invalidations lost (%s); reconnecting",
                          self.prefix, type(exc).__name__)
            finally:
                for closing in (pubsub, tracker):
                    try:
                        if closing is not None:
                            closing.close()
                    except Exception:  # a dead connection may fail to close, and that is fine
                        pass
            stop.wait(RECONNECT_PAUSE)

    def _subscribe(self) -> tuple[Any, Any]:
        client = self._connect()
        # redis-py with hiredis turns messages of __redis__:invalidate into
        # "invalidate" pushes even on RESP2, handed to the parser's invalidation
        # handler (as redis-py's own client-side cache receives them), and other
        # pushes (the subscribe confirmation) to push_handler_func, instead of
        # returning them from get_message(); the pure-Python parser returns them.
        # Every path is handled.
        pubsub = client.pubsub(push_handler_func=self._on_push)
        pubsub.execute_command("CLIENT", "ID")
        client_id = pubsub.parse_response(block=True, timeout=2.0)
        parser: Any = getattr(pubsub.connection, "_parser", None)
        set_handler = getattr(parser, "set_invalidation_push_handler", None)
        if callable(set_handler):
            set_handler(self._on_push)
        self._subscribed.clear()
        pubsub.subscribe(_CHANNEL)
        self._expect_subscribed(pubsub)
        tracker = self._connect()
        tracker.execute_command("CLIENT", "TRACKING", "ON", "REDIRECT", int(client_id),
                                "BCAST", "PREFIX", self.prefix)
        # Anything cached before tracking was on may be stale: start empty.
        self.flush()
        return pubsub, tracker

    def _expect_subscribed(self, pubsub: Any) -> None:
        """Wait for the subscribe confirmation (from get_message or the push path)."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if self._subscribed.is_set() or (message is not None
                                             and message["type"] == "subscribe"):
                return
        raise TimeoutError("no subscribe confirmation")

    def _listen(self, pubsub: Any, tracker: Any, stop: threading.Event) -> None:
        next_ping = 0.0
        answered = True
        while not stop.is_set():
            now = time.monotonic()
            if now >= next_ping:
                if not answered:
                    raise TimeoutError("heartbeat unanswered")
                tracker.ping()  # raises on a dead tracker connection
                if self._broken_redirect(tracker):
                    raise ConnectionError("the invalidation connection was replaced")
                pubsub.ping()
                answered = False
                next_ping = now + HEARTBEAT
            message = pubsub.get_message(timeout=max(0.0, next_ping - time.monotonic()))
            if message is None:
                continue
            kind = message["type"]
            if kind == "pong":
                answered = True
                self._live_until = time.monotonic() + LIVENESS
            elif kind == "message" and message["channel"] == _CHANNEL:
                self._invalidated(message["data"])

    def _on_push(self, response: Any) -> None:
        """A message that came through the parser's push path (see _subscribe)."""
        kind = response[0] if response else b""
        if isinstance(kind, str):
            kind = kind.encode()
        if kind == b"message" and len(response) >= 3:
            channel = response[1] if isinstance(response[1], bytes) else str(response[1]).encode()
            if channel == _CHANNEL:
                self._invalidated(response[2])
        elif kind == b"invalidate" and len(response) >= 2:
            self._invalidated(response[1])
        elif kind == b"subscribe":
            self._subscribed.set()

    _trackinginfo = True

    def _broken_redirect(self, tracker: Any) -> bool:
        """Whether Redis says our redirect target is gone (CLIENT TRACKINGINFO, 6.2+):
        a pub/sub connection that reconnected by itself would otherwise miss every
        invalidation silently."""
        if not self._trackinginfo:
            return False
        try:
            reply = tracker.execute_command("CLIENT", "TRACKINGINFO")
        except Exception as exc:
            if "unknown" in str(exc).lower():  # Redis 6.0: no TRACKINGINFO
                self._trackinginfo = False
                return False
            raise
        if isinstance(reply, dict):
            flags = reply.get(b"flags") or reply.get("flags") or []
        else:
            fields = dict(zip(reply[::2], reply[1::2]))
            flags = fields.get(b"flags") or fields.get("flags") or []
        return any(flag in (b"broken_redirect", "broken_redirect") for flag in flags)

    def _invalidated(self, data: Any) -> None:
        self.invalidations += 1
        if data is None:  # FLUSHALL / FLUSHDB: everything
            self.flush()
            return
        if isinstance(data, (bytes, str)):
            data = [data]
        self.invalidate(name.decode("utf-8", "surrogateescape") if isinstance(name, bytes)
                        else str(name) for name in data)
