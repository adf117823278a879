"""redis-py connections kept by kvs between commands, instead of by the pool.

redis-py 8 checks a connection out of its pool and back in for every command:
a lock, a poll for unread data, four observability counters and an event
dispatch; about 50 µs of a 110 µs GET on loopback here.  kvs's hot commands
(GET, SET, the lease scripts) instead take a connection from a plain list
(:class:`ConnectionCache`) and put it back when their reply is read.  They
still run through redis-py's own ``Connection``: its socket, parser,
handshake, TLS and health checks.  Only the checkout is skipped.  Its poll
for unread data runs only on a connection that sat idle for over 50 ms (one
the server may have closed meanwhile); kvs keeps busy ones in step itself: a
command that fails, or does not read all its replies, disconnects its
connection and gives it back to the pool, whose next checkout reconnects it
(and, on Sentinel, finds the current master).

A connection first comes from the client's pool, and stays with the cache
from then on, so the cache holds as many connections as kvs ever ran
commands at once (a connection blocked in BLPOP is out of the list meanwhile).
The pool counts them as in use: kvs uses the cache only with an unbounded
pool, and only with redis-py's retries off (``Retry`` is not applied here).
After a fork, the child never touches its parent's connections: it starts
an empty list.

Thread-safety: ``list.pop()`` and ``list.append()`` are atomic, so a cache is
shared by all threads; a connection is used by one thread at a time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

_hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # pragma: no cover - hiredis comes with redis[hiredis]
    _hiredis_pack = None

#: A connection idle for longer is checked before it is used again (see _take).
IDLE_CHECK_S = 0.05

#: Bumped in a forked child: connections cached before the fork are the parent's.
_generation = [0]


def _after_fork_in_child() -> None:
    _generation[0] += 1


os.register_at_fork(after_in_child=_after_fork_in_child)


class ConnectionCache:
    """Free connections of one redis-py client: ``run(*command)``, ``run_many(*commands)``."""

    def __init__(self, client: Any) -> None:
        import redis.exceptions

        self._client = client
        #: (connection, time.monotonic() when it was put back)
        self._free: list[tuple[Any, float]] = []
        self._generation = _generation[0]
        self._broken = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
        # hiredis encodes text as strict UTF-8, redis-py as the client says.
        settings = getattr(client.connection_pool, "connection_kwargs", {})
        encoding = str(settings.get("encoding", "utf-8")).lower().replace("_", "-")
        utf8 = encoding in ("utf-8", "utf8") and settings.get("encoding_errors",
                                                              "strict") == "strict"
        self._hiredis_pack = _hiredis_pack if utf8 else None

    def _take(self) -> Any:
        if self._generation != _generation[0]:
            self._free, self._generation = [], _generation[0]
        try:
            connection, since = self._free.pop()
        except IndexError:
            return self._client.connection_pool.get_connection()
        if time.monotonic() - since > IDLE_CHECK_S:
            # What the pool checks at every checkout, only for a connection that
            # sat idle: the server may have closed it meanwhile (its ``timeout``,
            # a restart), and a command sent on it then fails although it never
            # ran.  Back-to-back commands skip the poll.
            try:
                stale = connection.can_read()
            except self._broken:
                stale = True
            if stale:
                connection.disconnect()
                pool = self._client.connection_pool
                pool.release(connection)
                return pool.get_connection()  # reconnects (Sentinel: to the master)
        return connection

    def _put(self, connection: Any) -> None:
        self._free.append((connection, time.monotonic()))

    def run(self, *command: Any) -> Any:
        """Send one command and read its raw reply (no response callback)."""
        connection = self._take()
        try:
            connection.send_packed_command(_pack(self._hiredis_pack, connection, command))
            reply = connection.read_response()
        except BaseException as exc:
            if _is_error_reply(exc):
                self._put(connection)  # still in step with the server
            else:
                self._give_back(connection)
            raise
        self._put(connection)
        return reply

    def run_many(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send ``commands`` in one write and read every reply, in order.

        Any error, an error reply (for example NOSCRIPT) included, is raised
        at once and disconnects the connection: the replies still to come (a
        BLPOP still blocking) would otherwise be read as the next command's.
        """
        connection = self._take()
        try:
            fast = self._hiredis_pack
            # One buffer: send_packed_command makes a sendall per item, and the
            # point of sending these together is one write (one segment, one
            # read on the server).
            connection.send_packed_command([b"".join(
                part for command in commands for part in _pack(fast, connection, command))])
            replies = [connection.read_response() for _ in commands]
        except BaseException:
            self._give_back(connection)
            raise
        self._put(connection)
        return replies

    def _give_back(self, connection: Any) -> None:
        """A connection that failed, or whose replies were not all read: disconnected,
        back to the pool, whose checkout reconnects it (a Sentinel pool asks the
        sentinels for the master again then; a bare reconnect would not)."""
        connection.disconnect()
        if self._generation == _generation[0]:
            self._client.connection_pool.release(connection)


def _pack(fast: Callable[[tuple[Any, ...]], bytes] | None, connection: Any,
          command: tuple[Any, ...]) -> Any:
    """``command`` in the wire format.

    hiredis (``fast``, when the client's encoding is strict UTF-8) packs kvs's
    arguments (str, bytes, int, float) as redis-py's own packer does (UTF-8,
    ``repr`` of numbers), in a sixth of its time: redis-py first runs its
    encoder over every argument, 15 of them for a lease script.  A memoryview
    goes to redis-py's packer, as redis-py itself does (hiredis would send a
    strided view's underlying bytes); anything hiredis refuses (a bool, a
    bytearray) too, which converts it or raises its own DataError.
    """
    if fast is not None and memoryview not in map(type, command):
        try:
            return [fast(command)]  # a list: send_packed_command iterates it
        except TypeError:
            pass
    return connection.pack_command(*command)


def _is_error_reply(exc: BaseException) -> bool:
    import redis.exceptions

    return isinstance(exc, redis.exceptions.ResponseError)
