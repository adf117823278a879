"""``kvs.memcached``: one or many memcached servers, through pymemcache.

What memcached can promise, and what it cannot
----------------------------------------------

* **Leases are efficiency-grade, not correctness-grade.**  A lease is an item
  created with ``add``, so only one holder gets it while it exists; release and
  extend are owner-checked (``gets``/meta-get, then a CAS-conditional meta delete
  or ``cas``), so a holder never frees or stretches somebody else's lease.  But
  memcached may *evict* a lease under memory pressure, and forgets everything
  on restart: another client can then take the lease while the first still
  believes it holds it.
* **A fenced write is check-then-write, not one atomic step.**  ``fenced_set``
  reads the lease (token and remaining time), refuses unless the caller's
  token holds it with at least ``lease_safety_margin`` seconds to spare, and
  only then writes.  The margin covers the time between the check and the
  write; nothing covers an eviction or a takeover in between.  What is
  guaranteed: a holder whose lease was evicted, expired or broken *before* its
  write or release learns so (``LEASE_LOST``, or ``False`` from
  ``release_lease``) instead of silently overwriting.
* **Fence numbers** come from an ``incr`` counter stored beside the lease.  A
  counter that is missing (first lock of the key, or evicted, or the server
  restarted) is created with ``add``, seeded with the current Unix time in
  microseconds, so fences keep increasing across an eviction or a restart as
  long as the clients' clocks are not further apart than the counter's age.
* **Time is whole seconds** on the server's own coarse clock, so an item given
  ``n`` seconds lives between ``n - 1`` and ``n``.  Every TTL is therefore
  rounded up and given one more second: a value written with ``ttl=T`` lives at
  least ``T`` and at most ``ceil(T) + 1`` seconds, never less.  Leases get the
  safety margin on top.  TTLs beyond 30 days are sent as absolute Unix times
  (memcached's rule), which then depend on the server's wall clock.
* **Keys** are always memcached-safe whatever the store sends: a key longer
  than 247 bytes, or with anything but printable ASCII, or starting with the
  reserved ``~``, is replaced by ``~h:`` plus its BLAKE2b hash.  Internal keys
  (``~l:`` lease, ``~f:`` fence) live on the same server as their data key.
* **Values** are the store's bytes, stored as they are (flags 0, no pickle).
  A value above the server's item size limit raises ``ValueTooLarge`` *before*
  anything is sent; memcached itself would delete the old value on a failed
  oversized ``set``.
* **Several servers**: a key, its lease and its fence are placed on one server
  by rendezvous hashing (pymemcache's ``RendezvousHash``, the hasher
  ``HashClient`` uses).  A server that is down fails only the calls for its own
  keys, with ``BackendUnavailable`` naming ``host:port``; its keys are never
  moved to another server (which would hand out a second lease on the same
  key), and it is used again as soon as it answers.
* ``set_multi`` is not atomic: memcached has no multi-key transaction.

Every lease and lock command waits for the server's reply: with pymemcache's
default ``noreply`` an ``add`` always "succeeds", which would turn every lease
into a no-op.

The data calls (``get``, ``get_multi``, ``set``, ``set_multi``) write their
commands themselves on the socket of pymemcache's ``Client`` (which still
connects, with TLS and timeouts), and parse the replies strictly by length:
pymemcache's generic code for them costs as much as the round trip.  They
wait for every reply too, and retry and translate errors as the other calls.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import itertools
import math
import operator
import os
import re
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from dogpile.cache.api import NO_VALUE, NoValue

from kvs import exception
from kvs.backends.base import ArgumentSpec, Fenced, LeaseBackend, LeaseInfo, require_client
from kvs.errors import Translating

try:
    from pymemcache.client.base import Client, PooledClient, normalize_server_spec
    from pymemcache.client.rendezvous import RendezvousHash
    from pymemcache.client.retrying import RetryingClient
    from pymemcache.exceptions import (
        MemcacheClientError,
        MemcacheError,
        MemcacheIllegalInputError,
        MemcacheServerError,
        MemcacheUnexpectedCloseError,
        MemcacheUnknownCommandError,
        MemcacheUnknownError,
    )
except ImportError:  # pymemcache is optional: MemcachedBackend() refuses, naming the extra
    class _NoPymemcache(Exception):
        """Stands in for pymemcache's names, so that this module still imports."""

    Client = PooledClient = RendezvousHash = RetryingClient = object  # type: ignore[misc,assignment]
    normalize_server_spec = None  # type: ignore[assignment]
    MemcacheError = MemcacheIllegalInputError = MemcacheServerError = _NoPymemcache  # type: ignore[misc,assignment]
    MemcacheUnexpectedCloseError = MemcacheUnknownError = _NoPymemcache  # type: ignore[misc,assignment]
    MemcacheClientError = MemcacheUnknownCommandError = _NoPymemcache  # type: ignore[misc,assignment]

#: memcached's relative-TTL ceiling: larger expiry values are read as Unix times.
THIRTY_DAYS = 30 * 24 * 3600

#: Item bytes memcached spends besides key and value (header, CAS, CRLF).
#: Measured as 59 on memcached 1.6.18 (x86-64, CAS on); rounded up for slack.
ITEM_OVERHEAD = 64

#: memcached's own key limit.
MAX_KEY_LENGTH = 250

#: Values up to this size fit any server (the smallest ``-I`` is 1 KiB), so
#: they skip the server limit lookup.
ALWAYS_FITS = 1024 - ITEM_OVERHEAD - MAX_KEY_LENGTH

# Data keys are kept verbatim only if they are printable ASCII without spaces,
# do not start with "~" (reserved for the internal keys below), and leave room
# for a three-byte internal prefix within memcached's 250 bytes.
_VERBATIM_KEY = re.compile(r"[!-}][!-~]{0,246}")  # 247 bytes: 250 less the prefix
_HASHED_PREFIX = "~h:"
_LEASE_PREFIX = "~l:"
_FENCE_PREFIX = "~f:"
#: Extend-credit entries kept before ended leases' entries are swept.
_CREDIT_PRUNE_FROM = 256

# Errors that mean "the connection broke before we got an answer": worth one
# more try on a fresh connection (a server restart leaves stale sockets), and
# counting towards marking the server down.  Timeouts are not retried: the
# request may still be running on a slow server.
_RETRYABLE = (ConnectionError, MemcacheUnexpectedCloseError, ssl.SSLEOFError,
              ssl.SSLZeroReturnError)
_CONNECTION_ERRORS = (OSError, MemcacheUnexpectedCloseError)
_META_END = b"MN\r\n"
#: Bytes asked of the socket per ``recv`` on the hot path (pymemcache asks 4 KiB).
RECV_SIZE = 65536
#: Routes (store key -> wire key and server) remembered, as many as the
#: store's mangler remembers keys; when full, the oldest quarter goes.
_ROUTES_KEPT = 16384


def memcached_key(key: str) -> str:
    """The memcached-safe form of a (mangled) store key.

    Safe keys pass unchanged; anything else is hashed, so two different keys
    never share an item and no key can reach the reserved ``~`` namespace.
    """
    if len(key) <= 250:
        return _short_memcached_key(key)
    return _safe_form(key)


def _safe_form(key: str) -> str:
    if _VERBATIM_KEY.fullmatch(key):
        return key
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=20)
    return _HASHED_PREFIX + digest.hexdigest()


# The regex check costs about as much as a loopback round trip's client-side
# work; services use the same keys again and again, and short keys are cheap
# to remember.
_short_memcached_key = functools.lru_cache(maxsize=16384)(_safe_form)


def expire_time(seconds: float | None) -> int:
    """memcached expiry for an item that must live at least ``seconds``.

    ``None`` means no expiry (0).  Sub-second values round up, never to 0; one
    second is added because the server's clock ticks in whole seconds; beyond
    30 days the value becomes an absolute Unix time, as memcached requires.
    """
    if seconds is None:
        return 0
    whole = max(1, math.ceil(seconds)) + 1
    return _wire_expiry(whole)


def _wire_expiry(whole: int) -> int:
    if whole > THIRTY_DAYS:
        return int(time.time()) + whole
    return whole


@dataclasses.dataclass(frozen=True)
class MetaReply:
    """One parsed meta-protocol reply: ``HD``/``VA``/``EN``/``NF``/``EX``/``NS``."""

    code: bytes
    flags: dict[bytes, bytes]
    value: bytes | None = None

    def int_flag(self, name: bytes) -> int:
        return int(self.flags[name])


def parse_meta_replies(raw: bytes) -> list[MetaReply]:
    """Split the bytes before ``MN`` into replies (values are length-prefixed)."""
    replies = []
    pos = 0
    while pos < len(raw):
        end = raw.find(b"\r\n", pos)
        if end < 0:
            raise MemcacheUnknownError(raw[pos:pos + 32])
        parts = raw[pos:end].split()
        pos = end + 2
        if not parts:
            raise MemcacheUnknownError(b"empty reply line")
        code, value = parts[0], None
        if code == b"VA":
            size = int(parts[1])
            value = raw[pos:pos + size]
            pos += size + 2
            flags = parts[2:]
        elif code in (b"HD", b"EN", b"NF", b"EX", b"NS"):
            flags = parts[1:]
        else:
            raise MemcacheUnknownError(b" ".join(parts)[:64])
        replies.append(MetaReply(code, {flag[:1]: flag[1:] for flag in flags}, value))
    return replies


# -- the hot path's wire format ---------------------------------------------
#
# get, get_multi, set and set_multi are the calls a service makes all the
# time; pymemcache's generic code for them (key checks, a dict per call, a
# readline per reply line, 4 KiB reads, RetryingClient's lambda per call)
# costs as much client time as the round trip itself.  kvs's keys are
# already memcached-safe (memcached_key) and its values already bytes, so
# these four calls are written here, on the socket of pymemcache's own
# Client: connecting, TLS, timeouts and TCP_NODELAY stay pymemcache's.
# The replies are parsed strictly by length: anything unexpected raises and
# the connection is closed, so no stray reply is ever read by the next call.


def _error_reply(line: bytes, command: bytes) -> MemcacheError:
    """The pymemcache error for a reply line that is not the expected answer."""
    if line.startswith(b"ERROR"):
        return MemcacheUnknownCommandError(command)
    if line.startswith(b"CLIENT_ERROR"):
        return MemcacheClientError(line[line.find(b" ") + 1:])
    if line.startswith(b"SERVER_ERROR"):
        return MemcacheServerError(line[line.find(b" ") + 1:])
    return MemcacheUnknownError(line[:32])


#: The header of one item of a ``get`` reply: key, flags, length (and a CAS).
_VALUE_LINE = re.compile(rb"VALUE (\S+) \d+ (\d+)(?: \d+)?\r\n")


def _scan_values(data: bytes, found: dict[bytes, bytes]) -> int:
    """Parse a ``get`` reply from the start of ``data`` into ``found``.

    Returns -1 once ``END`` closed the reply (which must be the last bytes),
    else how far the complete ``VALUE`` items reach (more must be read).
    """
    pos = 0
    header = _VALUE_LINE.match
    while True:
        item = header(data, pos)
        if item is None:
            end = data.find(b"\r\n", pos)
            if end < 0:
                return pos
            if end - pos == 3 and data.startswith(b"END", pos):
                if end + 2 != len(data):
                    raise MemcacheUnknownError(b"bytes after END")
                return -1
            if data.startswith(b"VALUE", pos):
                raise MemcacheUnknownError(data[pos:end][:32])
            raise _error_reply(data[pos:end], b"get")
        key, size = item.groups()
        start = item.end()
        stop = start + int(size)
        if len(data) < stop + 2:
            return pos
        if data[stop:stop + 2] != b"\r\n":
            raise MemcacheUnknownError(b"value not followed by CRLF")
        found[key] = data[start:stop]
        pos = stop + 2


def _split_values(data: bytes) -> dict[bytes, bytes] | None:
    """A whole ``get`` reply parsed in a few C loops, if no value holds a CRLF; else None.

    Split at every CRLF, a reply whose values hold none alternates header
    and value and ends with ``END``.  It is taken only if every header is
    ``VALUE key flags length`` and every value is exactly its length long:
    then each item ends where the header says, just as _scan_values would
    read it.  A value holding a CRLF, or a reply cut short, fails the
    lengths, and _scan_values, the reference, reads it instead.
    """
    parts = data.split(b"\r\n")
    if len(parts) % 2 or parts[-2] != b"END" or parts[-1]:
        return None
    headers = parts[0:-2:2]
    if not headers:
        return {}
    values = parts[1:-2:2]
    fields = b" ".join(headers).split(b" ")
    if len(fields) != 4 * len(headers) or fields[0::4] != [b"VALUE"] * len(headers):
        return None
    try:
        lengths = list(map(int, fields[3::4]))
    except ValueError:
        return None
    if lengths != list(map(len, values)):
        return None
    return dict(zip(fields[1::4], values))


def _read_values(sock: Any, count: int, first: bytes | None = None) -> dict[bytes, bytes]:
    """Receive one ``get`` reply (``first``: its first read, if done): the values by wire key."""
    found: dict[bytes, bytes] = {}
    chunks: list[bytes] = []
    split = True  # tried once: it fails again and again on values full of CRLFs
    more = sock.recv(RECV_SIZE) if first is None else first
    while True:
        if not more:
            raise MemcacheUnexpectedCloseError()
        chunks.append(more)
        # Every reply line ends in CRLF: only then can the reply be complete.
        if more.endswith(b"\r\n") or (more == b"\n" and len(chunks) > 1
                                        and chunks[-2].endswith(b"\r")):
            data = more if len(chunks) == 1 else b"".join(chunks)
            if split and data.endswith(b"END\r\n"):
                split = False
                rest = _split_values(data)
                if rest is not None:
                    found.update(rest)
                    return found
            reached = _scan_values(data, found)
            if reached < 0:
                return found
            # The complete items are in found: keep the rest for the next try.
            chunks = [data[reached:]] if reached < len(data) else []
        more = sock.recv(RECV_SIZE)


def _read_value(sock: Any, wire_key: bytes) -> bytes | None:
    """Receive the reply of a one-key ``get``: its value, or None."""
    data = sock.recv(RECV_SIZE)
    if data == b"END\r\n":
        return None
    # The common case, the whole reply in one read, checked as _scan_values does.
    end = data.find(b"\r\n")
    if end > 0 and data.startswith(b"VALUE "):
        parts = data[6:end].split()
        if len(parts) >= 3 and parts[2].isdigit():
            stop = end + 2 + int(parts[2])
            if len(data) == stop + 7 and data.endswith(b"\r\nEND\r\n") \
                    and parts[0] == wire_key:
                return data[end + 2:stop]
    # Anything else (a reply in several reads, an error line): the general reader.
    return _read_values(sock, 1, data).get(wire_key)


def _read_stored(sock: Any, count: int) -> int:
    """Receive the replies of ``count`` pipelined ``set`` commands: how many were not stored."""
    data = sock.recv(RECV_SIZE)
    if count == 1 and data == b"STORED\r\n":
        return 0
    if not data:
        raise MemcacheUnexpectedCloseError()
    chunks = [data]
    while not (data.endswith(b"\r\n") and data.count(b"\r\n") >= count):
        more = sock.recv(RECV_SIZE)
        if not more:
            raise MemcacheUnexpectedCloseError()
        chunks.append(more)
        data = b"".join(chunks)
    lines = data.split(b"\r\n")
    if len(lines) != count + 1:
        raise MemcacheUnknownError(b"more replies than commands")
    refused = 0
    for line in lines[:count]:
        if line == b"NOT_STORED":
            refused += 1
        elif line != b"STORED":
            raise _error_reply(line, b"set")
    return refused


_first = operator.itemgetter(0)


class IdempotentRetryingClient(RetryingClient):
    """pymemcache's ``RetryingClient``, resending only what is safe to send twice.

    A resent ``delete``, ``cas`` or meta command (``md`` conditional delete)
    whose first copy was applied answers "not found" or "exists": kvs would
    then report a delete that happened as ``NotFound``, or an extend that
    happened as a lost lease.  Those calls are sent once; a lost reply is
    ``BackendUnavailable`` (the truth: unknown), and the lease logic above
    retries where it can tell its own earlier success apart (acquire).
    """

    _SEND_ONCE = frozenset({"delete", "delete_many", "delete_multi", "cas", "raw_command"})

    def _retry(self, name: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        if name in self._SEND_ONCE:
            return func(*args, **kwargs)
        return super()._retry(name, func, *args, **kwargs)


class BoundedPool:
    """A ``PooledClient`` whose callers wait for a free connection.

    pymemcache's pool raises ``RuntimeError`` as soon as ``max_pool_size``
    connections are busy; a store shared by more threads than that should
    queue instead, for up to ``wait`` seconds.
    """

    def __init__(self, pool: Any, size: int, wait: float, name: str) -> None:
        self._pool = pool
        self._slots = threading.BoundedSemaphore(size)
        self._wait = wait
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        method = getattr(self._pool, attribute)
        if not callable(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self._slots.acquire(timeout=self._wait):
                raise exception.BackendUnavailable(
                    f"every pooled connection to memcached server {self._name} stayed busy "
                    f"for {self._wait} s", host=self._name)
            try:
                return method(*args, **kwargs)
            finally:
                self._slots.release()

        return call


#: Every Server, so that a forked child can give each one fresh connections.
_servers: weakref.WeakSet[Server] = weakref.WeakSet()


#: Every backend, so that a forked child gets fresh bookkeeping locks.
_backends: weakref.WeakSet[MemcachedBackend] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for server in list(_servers):
        server._new_clients()
    # Another thread may have held a guard at fork(): the child would wait
    # for it forever.  Its extend credit belongs to the parent's leases.
    for backend in list(_backends):
        backend._credit_guard = threading.Lock()
        backend._extend_credit = {}


os.register_at_fork(after_in_child=_after_fork_in_child)


class Server:
    """One memcached server: its name for messages and its pymemcache client(s).

    Without pooling each thread gets its own ``Client`` (pymemcache clients are
    not thread-safe); with pooling the threads share one ``PooledClient``.
    """

    def __init__(self, spec: str, options: Mapping[str, Any],
                 tls_context: ssl.SSLContext | None) -> None:
        try:
            self.address: tuple[str, int] | str = normalize_server_spec(spec)
        except (ValueError, TypeError):
            raise exception.ConfigurationError(
                f"memcached server {spec!r} is not host:port, [ipv6]:port or a socket path",
                option="servers") from None
        if isinstance(self.address, tuple):
            host, port = self.address
            self.name = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        else:
            self.name = f"unix:{self.address}"
        self._options = options
        self._tls_context = tls_context
        #: Sends of one hot-path call: the first, then one per retry.
        self._attempts: int = 1 + options["retry_attempts"]
        self._retry_delay: float = options["retry_delay"]
        self._new_clients()
        _servers.add(self)
        #: Monotonic time until which calls fail fast (``dead_timeout``).
        self.down_until = 0.0
        self.down_reason = ""
        self._item_size_max: int | None = None
        #: ``with server.errors:`` around every call to this server.
        self.errors = Translating(self.failure)

    def _new_clients(self) -> None:
        """Forget every client: each thread (or the pool) connects afresh on next use.

        Called at construction and in a forked child, whose inherited sockets
        are the parent's: sharing them would cross replies between processes.
        The inherited client objects are dropped, not closed, so no shutdown
        reaches the parent's connections.
        """
        self._local = threading.local()
        self._pool: Any = None
        if self._options["use_pooling"]:
            options = self._options
            pool: Any = self._wrap(PooledClient(
                self.address, max_pool_size=options["max_pool_size"], **self._client_kwargs()))
            if options["max_pool_size"]:
                pool = BoundedPool(pool, options["max_pool_size"], options["timeout"], self.name)
            self._pool = pool

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "connect_timeout": self._options["connect_timeout"],
            "timeout": self._options["timeout"],
            "no_delay": True,
            # The pymemcache trap: its default noreply makes add() always True.
            "default_noreply": False,
            "tls_context": self._tls_context,
        }

    def _wrap(self, client: Any) -> Any:
        attempts = self._options["retry_attempts"]
        if not attempts:
            return client
        return IdempotentRetryingClient(client, attempts=attempts + 1,
                              retry_delay=self._options["retry_delay"],
                              retry_for=list(_RETRYABLE))

    def _refuse_if_down(self) -> None:
        if self.down_until and time.monotonic() < self.down_until:
            raise exception.BackendUnavailable(
                f"memcached server {self.name} is marked down for "
                f"{self._options['dead_timeout']} s after: {self.down_reason}", host=self.name)

    def client(self) -> Any:
        """This thread's client; raises at once while the server is marked down."""
        if self.down_until:
            self._refuse_if_down()
        if self._pool is not None:
            return self._pool
        try:
            return self._local.client
        except AttributeError:
            self._own_client()
            return self._local.client

    def _own_client(self) -> Any:
        """This thread's pymemcache ``Client`` itself (made on first use), without pooling.

        ``client()`` hands out the same ``Client`` behind the retrying wrapper:
        both use its one socket, and every exchange either reads its whole
        reply or closes the socket, so they never read each other's replies.
        """
        try:
            return self._local.raw
        except AttributeError:
            raw = Client(self.address, **self._client_kwargs())
            self._local.client = self._wrap(raw)
            self._local.raw = raw
            return raw

    # -- the hot path (see "the hot path's wire format" above) ------------------

    def _exchange(self, command: bytes, read: Callable[[Any, Any], Any], arg: Any) -> Any:
        """Send ``command`` on this thread's connection; ``read(sock, arg)`` its reply.

        What the retrying wrapper does for the other calls: a broken
        connection (_RETRYABLE) is closed and the command sent again on a
        fresh one, ``retry_attempts`` times, ``retry_delay`` apart; a timeout
        is not retried.  Errors are translated by :meth:`failure`, naming
        this server.  Only for commands that are safe to send twice.
        """
        if self.down_until:
            self._refuse_if_down()
        try:
            client = self._local.raw
        except AttributeError:
            client = self._own_client()
        attempt = 1
        while True:
            try:
                sock = client.sock
                if sock is None:
                    client._connect()
                    sock = client.sock
                sock.sendall(command)
                return read(sock, arg)
            except BaseException as exc:
                # Half a reply may be left on the socket: never read it again.
                client.close()
                if attempt < self._attempts and isinstance(exc, _RETRYABLE):
                    attempt += 1
                    time.sleep(self._retry_delay)
                    continue
                if not isinstance(exc, Exception):
                    raise
                replacement = self.failure(exc)
                if replacement is None:
                    raise
                raise replacement from exc

    def get(self, wire_key: bytes) -> bytes | NoValue:
        """The value of ``wire_key`` (a memcached-safe key), or NO_VALUE."""
        if self._pool is not None:
            with self.errors:
                value = self.client().get(wire_key)
            return NO_VALUE if value is None else value  # type: ignore[no-any-return]
        value = self._exchange(b"get " + wire_key + b"\r\n", _read_value, wire_key)
        return NO_VALUE if value is None else value  # type: ignore[no-any-return]

    def get_many(self, wire_keys: list[bytes]) -> dict[bytes, bytes]:
        """The values found of ``wire_keys``, by wire key, in one ``get``."""
        if self._pool is not None:
            with self.errors:
                return self.client().get_many(wire_keys)  # type: ignore[no-any-return]
        return self._exchange(b"get " + b" ".join(wire_keys) + b"\r\n",  # type: ignore[no-any-return]
                              _read_values, len(wire_keys))

    def set(self, wire_key: bytes, value: bytes, expire: int) -> None:
        """``set``, waiting for the reply (never noreply)."""
        if self._pool is not None:
            with self.errors:
                stored = self.client().set(wire_key, value, expire, noreply=False)
        else:
            stored = not self._exchange(
                b"set %b 0 %d %d\r\n%b\r\n" % (wire_key, expire, len(value), value),
                _read_stored, 1)
        if not stored:
            raise exception.BackendUnavailable(
                f"memcached server {self.name} did not store the value", host=self.name)

    def set_many(self, values: Mapping[bytes, bytes], expire: int) -> int:
        """``set`` of every item, pipelined; how many the server did not store."""
        if self._pool is not None:
            with self.errors:
                return len(self.client().set_many(dict(values), expire, noreply=False))
        return self._exchange(b"".join(  # type: ignore[no-any-return]
            [b"set %b 0 %d %d\r\n%b\r\n" % (key, expire, len(value), value)
             for key, value in values.items()]), _read_stored, len(values))

    def failure(self, exc: Exception) -> exception.KVSError | None:
        """Translate a pymemcache or socket error into a kvs error naming this server.

        This server's translation (see :mod:`kvs.errors`), applied by
        ``with server.errors:``; anything else passes through (None).
        """
        if not isinstance(exc, (OSError, MemcacheError)) or isinstance(exc, exception.KVSError):
            return None
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, MemcacheIllegalInputError):
            # Keys are made safe and values are bytes, so this is a kvs bug.
            return exception.KVSError(f"pymemcache refused a request for {self.name}: {detail}",
                                      host=self.name)
        if isinstance(exc, MemcacheServerError) and b"too large" in _as_bytes(exc):
            return exception.ValueTooLarge(
                f"memcached server {self.name} refused a value as too large", host=self.name)
        if isinstance(exc, _CONNECTION_ERRORS):
            # The server may come back with other settings (item size limit).
            self._item_size_max = None
            if self._options["dead_timeout"]:
                self.down_until = time.monotonic() + self._options["dead_timeout"]
                self.down_reason = detail
        return exception.BackendUnavailable(
            f"memcached server {self.name} is unavailable: {detail}", host=self.name)

    def item_size_max(self) -> int:
        """The server's item size limit (``-I``), asked once and remembered."""
        if self._item_size_max is None:
            settings = self.client().stats("settings")
            self._item_size_max = int(settings[b"item_size_max"])
        return self._item_size_max

    def close(self) -> None:
        client = self._pool if self._pool is not None else getattr(self._local, "client", None)
        if client is not None:
            client.close()


def _as_bytes(exc: BaseException) -> bytes:
    arg = exc.args[0] if exc.args else b""
    return arg if isinstance(arg, bytes) else str(arg).encode("utf-8", "replace")


class MemcachedBackend(LeaseBackend):
    """kvs backend over one or many memcached servers (see the module docstring)."""

    name = "kvs.memcached"
    arguments = {
        **LeaseBackend.arguments,
        "servers": ArgumentSpec("list", default=["127.0.0.1:11211"]),
        "connect_timeout": ArgumentSpec("float", default=1.0, minimum=0.001),
        "timeout": ArgumentSpec("float", default=1.0, minimum=0.001),
        "tls_enabled": ArgumentSpec("bool", default=False),
        "tls_ca_certs": ArgumentSpec("str"),
        "tls_certfile": ArgumentSpec("str"),
        "tls_keyfile": ArgumentSpec("str"),
        "retry_attempts": ArgumentSpec("int", default=1, minimum=0),
        "retry_delay": ArgumentSpec("float", default=0.05, minimum=0),
        "dead_timeout": ArgumentSpec("float", default=0.0, minimum=0),
        "use_pooling": ArgumentSpec("bool", default=False),
        "max_pool_size": ArgumentSpec("int", minimum=1),
        "memcached_expire_time": ArgumentSpec("int", default=0, minimum=0),
        "lease_safety_margin": ArgumentSpec("float", default=0.5, minimum=0),
        # Keystone's arguments of openstack.kvs.Memcached:
        "url": ArgumentSpec("list"),  # Keystone's name for servers
        "memcached_backend": ArgumentSpec("str", default="pymemcache"),
        "no_expiry_keys": ArgumentSpec("list", default=[]),
        "max_lock_attempts": ArgumentSpec("int", minimum=1),
    }

    #: ``memcached_backend`` choices: whether each uses a connection pool.
    #: kvs.memcached always talks through pymemcache (its leases need the
    #: meta protocol, sent with pymemcache's ``raw_command``); ``memcached``
    #: and ``pooled_memcached`` are Keystone's names, accepted for its configs.
    MEMCACHED_BACKENDS = {"pymemcache": False, "memcached": False, "pooled_memcached": True}

    #: No fixed limit: each server's own item size limit (``-I``) is read from
    #: it before the first large write; ``max_value_size`` can lower it.
    backend_value_limit = None

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        require_client(self.name, "pymemcache", "memcached", "pymemcache")
        keys = arguments.get("no_expiry_keys")
        if isinstance(keys, (set, frozenset)):  # Keystone's callers passed a set
            arguments = {**arguments, "no_expiry_keys": sorted(keys)}
        super().__init__(arguments)
        options = self.options
        self._keystone_arguments(options, arguments)
        if not options["servers"]:
            raise exception.ConfigurationError(
                "backend kvs.memcached needs at least one server", option="servers")
        tls_context = self._tls_context(options)
        self.servers = [Server(spec, options, tls_context) for spec in options["servers"]]
        names = [server.name for server in self.servers]
        if len(set(names)) != len(names):
            raise exception.ConfigurationError(
                f"memcached servers listed twice: {exception.names(names)}", option="servers")
        self._by_name = {server.name: server for server in self.servers}
        ring = RendezvousHash(nodes=list(names))
        # pymemcache's murmur3 is pure Python: hashing every node for every key
        # costs more than a loopback round trip, so remember the answers.  The
        # server list never changes (a down server keeps its keys).
        self._node = functools.lru_cache(maxsize=65536)(ring.get_node)
        #: Store key -> (wire key, server) for the hot calls (see _new_route).
        self._routes: dict[str, tuple[bytes, Server]] = {}
        self._margin: float = options["lease_safety_margin"]
        # Leases carry the margin as whole seconds on top of their TTL, so a
        # holder still inside its lease always passes the fenced-write check.
        self._lease_padding = math.ceil(self._margin)
        # Seconds, turned into a wire expiry on every write: beyond 30 days it
        # is an absolute time, which must be computed when the write happens.
        self._default_expire_seconds: int = options["memcached_expire_time"]
        # Sub-second extensions not yet sent to the server, per (key, token):
        # memcached counts whole seconds, and rounding each extend up would
        # make a lease renewed ten times a second grow ten seconds a second.
        # Each entry also keeps when its lease ends at the latest, so credit of
        # a lease that ended without a release (lost, expired, holder gone) is
        # dropped instead of piling up.
        self._extend_credit: dict[tuple[str, str], tuple[float, float]] = {}
        self._credit_guard = threading.Lock()
        _backends.add(self)

    def _keystone_arguments(self, options: dict[str, Any], given: Mapping[str, Any]) -> None:
        """Apply ``url``, ``memcached_backend``, ``no_expiry_keys``, ``max_lock_attempts``."""
        if options["url"] is not None:
            if "servers" in given:
                raise exception.ConfigurationError(
                    "give backend argument servers or url (Keystone's name for it), not both",
                    option="url")
            options["servers"] = options["url"]
        choice = options["memcached_backend"]
        if choice not in self.MEMCACHED_BACKENDS:
            raise exception.ConfigurationError(
                f"memcached_backend {choice!r} is not supported; valid choices: "
                f"{exception.names(self.MEMCACHED_BACKENDS)} (kvs.memcached talks to "
                f"memcached through pymemcache: its leases need the meta protocol)",
                option="memcached_backend")
        if self.MEMCACHED_BACKENDS[choice]:
            if "use_pooling" in given and not options["use_pooling"]:
                raise exception.ConfigurationError(
                    f"memcached_backend {choice!r} means use_pooling = true; "
                    f"use_pooling = false contradicts it", option="use_pooling")
            options["use_pooling"] = True
        #: The ``memcached_backend`` chosen.
        self.memcached_backend: str = choice
        #: acquire() gives up after this many tries (None: lock_wait_timeout alone).
        self.max_lock_attempts: int | None = options["max_lock_attempts"]
        #: Keys (as the user gives them) written without expiry, whatever the TTL.
        self.raw_no_expiry_keys: frozenset[str] = frozenset(options["no_expiry_keys"])
        #: The same keys as this backend sees them (after the key mangler).
        self.no_expiry_hashed_keys: frozenset[str] = self.raw_no_expiry_keys
        self._key_mangler: Callable[[str], str] | None = None

    @property  # type: ignore[override]
    def key_mangler(self) -> Callable[[str], str] | None:
        """The store's mangler (set by the store); it turns no_expiry_keys into backend keys."""
        return self._key_mangler

    @key_mangler.setter
    def key_mangler(self, mangler: Callable[[str], str] | None) -> None:
        if mangler is not None and not callable(mangler):
            raise exception.ConfigurationError(
                f"key_mangler must be callable or None, not {type(mangler).__name__}",
                option="key_mangler")
        raw = self.raw_no_expiry_keys
        self.no_expiry_hashed_keys = (frozenset(mangler(key) for key in raw)
                                      if mangler is not None else raw)
        self._key_mangler = mangler

    @staticmethod
    def _tls_context(options: Mapping[str, Any]) -> ssl.SSLContext | None:
        paths = ("tls_ca_certs", "tls_certfile", "tls_keyfile")
        if not options["tls_enabled"] and not any(options[name] for name in paths):
            return None
        if options["tls_keyfile"] and not options["tls_certfile"]:
            raise exception.ConfigurationError(
                "tls_keyfile needs tls_certfile", option="tls_keyfile")
        try:
            context = ssl.create_default_context(cafile=options["tls_ca_certs"])
        except (OSError, ssl.SSLError):
            raise exception.ConfigurationError(
                "cannot load the CA certificates named by tls_ca_certs",
                option="tls_ca_certs") from None
        if options["tls_certfile"]:
            try:
                context.load_cert_chain(options["tls_certfile"], options["tls_keyfile"])
            except (OSError, ssl.SSLError):
                raise exception.ConfigurationError(
                    "cannot load the client certificate named by tls_certfile/tls_keyfile",
                    option="tls_certfile") from None
        return context

    # -- routing and helpers ------------------------------------------------

    def server_for(self, key: str) -> Server:
        """The server holding ``key`` (a store key), its lease and its fence."""
        return self._route(key)[1]

    @staticmethod
    def item_keys(key: str) -> tuple[str, str, str]:
        """memcached item names of ``key``'s value, lease and fence counter."""
        safe = memcached_key(key)
        return safe, _LEASE_PREFIX + safe, _FENCE_PREFIX + safe

    def _route(self, key: str) -> tuple[str, Server]:
        safe = memcached_key(key)
        if len(self.servers) == 1:
            return safe, self.servers[0]
        return safe, self._by_name[self._node(safe)]

    def _group(self, keys: Sequence[str]) -> dict[Server, list[str]]:
        groups: dict[Server, list[str]] = collections.defaultdict(list)
        for key in keys:
            safe, server = self._route(key)
            groups[server].append(safe)
        return groups

    def _data_expire(self, ttl: float | None, key: str | None = None) -> int:
        """The expiry of a value written with ``ttl`` (``key``: its store key)."""
        if key is not None and key in self.no_expiry_hashed_keys:
            return 0  # listed in no_expiry_keys: never expires, whatever the TTL
        if ttl is not None:
            return expire_time(ttl)
        return _wire_expiry(self._default_expire_seconds) if self._default_expire_seconds else 0

    def _lease_expire(self, ttl: float | None) -> int:
        if ttl is None:
            return 0
        return _wire_expiry(max(1, math.ceil(ttl)) + 1 + self._lease_padding)

    @staticmethod
    def _meta(client: Any, *commands: bytes) -> list[MetaReply]:
        """Send meta commands in one round trip, terminated by a no-op.

        ``mn`` makes the end of the replies unambiguous, so pymemcache's
        ``raw_command`` reads exactly this exchange and no more.
        """
        raw = client.raw_command(b"\r\n".join((*commands, b"mn")), _META_END)
        replies = parse_meta_replies(raw)
        if len(replies) != len(commands):
            raise MemcacheUnknownError(b"meta reply count mismatch")
        return replies

    def _read_lease(self, client: Any, safe: str) -> MetaReply | None:
        """The lease item on ``safe``: value, CAS and remaining TTL, or None."""
        (reply,) = self._meta(client, b"mg %s v c t" % (_LEASE_PREFIX + safe).encode())
        return reply if reply.code == b"VA" else None

    def _own_lease(self, client: Any, safe: str, token: bytes) -> MetaReply | None:
        """The lease item on ``safe`` if ``token`` holds it (its CAS and TTL), else None."""
        lease = self._read_lease(client, safe)
        return lease if lease is not None and lease.value == token else None

    def _holds(self, lease: MetaReply | None, token: bytes) -> bool:
        """Whether ``token`` holds ``lease`` with the safety margin still ahead.

        ``t`` counts whole seconds to expiry from the server's current tick, so
        the real time left is more than ``t - 1``.
        """
        if lease is None or lease.value != token:
            return False
        remaining = lease.int_flag(b"t")
        return remaining < 0 or remaining - 1 >= self._margin

    def _next_fence(self, client: Any, safe: str) -> int:
        fence_key = _FENCE_PREFIX + safe
        for _attempt in range(3):
            value = client.incr(fence_key, 1, noreply=False)
            if value is not None:
                return int(value)
            # No counter yet (or evicted, or the server restarted): seed it
            # with the time in microseconds, above any fence handed out before.
            seed = time.time_ns() // 1000
            if client.add(fence_key, str(seed).encode(), 0, noreply=False):
                return seed
        raise MemcacheUnknownError(b"fence counter keeps disappearing")

    # -- data ---------------------------------------------------------------

    @classmethod
    def max_duration(cls) -> float:
        """Past 30 days memcached reads an expiry as a Unix time, a signed 32-bit
        number on the server: nothing may end after January 2038 (a later one
        would expire at once).  A minute of margin covers rounding and the
        lease's safety window."""
        return float(2**31 - 1 - int(time.time()) - 60)

    def check_size(self, key: str, value: bytes) -> None:
        super().check_size(key, value)
        if len(value) <= ALWAYS_FITS:
            return
        safe, server = self._route(key)
        with server.errors:
            limit = server.item_size_max() - ITEM_OVERHEAD - len(safe)
        if len(value) > limit:
            raise exception.ValueTooLarge(
                f"value for key {key!r} is {len(value)} bytes, above the {limit} bytes "
                f"memcached server {server.name} can hold", key=key, size=len(value),
                host=server.name)

    # The hot calls: one remembered route per key, then Server's own wire code.

    def _new_route(self, key: str) -> tuple[bytes, Server]:
        """``key``'s wire key and server, remembered for the next call."""
        # memcached_key without its cache: the routes are the cache here.
        safe = _safe_form(key)
        server = (self.servers[0] if len(self.servers) == 1
                  else self._by_name[self._node(safe)])
        route = (safe.encode("ascii"), server)  # safe keys are printable ASCII
        if len(key) <= MAX_KEY_LENGTH:  # long keys are rare: not worth the memory
            routes = self._routes
            if len(routes) >= _ROUTES_KEPT:
                try:
                    for old in list(itertools.islice(routes, _ROUTES_KEPT // 4)):
                        routes.pop(old, None)
                except RuntimeError:  # another thread changed the dict meanwhile
                    routes.clear()
            routes[key] = route
        return route

    def _wire_groups(self, keys: Sequence[str]
                     ) -> tuple[list[bytes], list[tuple[Server, list[bytes]]]]:
        """Every key's wire key, and the wire keys of each server."""
        routes, new_route = self._routes, self._new_route
        wires: list[bytes] = []
        groups: dict[Server, list[bytes]] = {}
        for key in keys:
            route = routes.get(key) or new_route(key)
            wires.append(route[0])
            batch = groups.get(route[1])
            if batch is None:
                groups[route[1]] = [route[0]]
            else:
                batch.append(route[0])
        return wires, list(groups.items())

    def get_serialized(self, key: str) -> bytes | NoValue:  # type: ignore[override]
        wire, server = self._routes.get(key) or self._new_route(key)
        return server.get(wire)

    def get_serialized_multi(self, keys: Sequence[str]) -> list[bytes | NoValue]:  # type: ignore[override]
        if not keys:
            return []
        if len(self.servers) == 1:  # no grouping; the loops in C where they can be
            cached = list(map(self._routes.get, keys))
            routes = ([route or self._new_route(key) for key, route in zip(keys, cached)]
                      if None in cached else cast("list[tuple[bytes, Server]]", cached))
            wires: list[bytes] = list(map(_first, routes))
            found = self.servers[0].get_many(wires)
            return list(map(found.get, wires, itertools.repeat(NO_VALUE)))
        wires, groups = self._wire_groups(keys)
        if len(groups) == 1:
            found = groups[0][0].get_many(groups[0][1])
        else:
            found = {}
            for server, batch in groups:
                found.update(server.get_many(batch))
        return [found.get(wire, NO_VALUE) for wire in wires]

    def plain_set(self, key: str, value: bytes, ttl: float | None) -> None:
        # check_size written out for the values that fit any server.
        limit = self.max_value_size
        if len(value) > ALWAYS_FITS or (limit is not None and len(value) > limit):
            self.check_size(key, value)
        wire, server = self._routes.get(key) or self._new_route(key)
        if ttl is None and not self._default_expire_seconds:
            expire = 0
        else:
            expire = self._data_expire(ttl, key)
        server.set(wire, value, expire)

    def plain_set_multi(self, mapping: Mapping[str, bytes], ttl: float | None) -> None:
        self.check_sizes(mapping)
        expire = self._data_expire(ttl)
        lasting = self.no_expiry_hashed_keys
        routes, new_route = self._routes, self._new_route
        groups: dict[tuple[Server, int], dict[bytes, bytes]] = collections.defaultdict(dict)
        for key, value in mapping.items():
            wire, server = routes.get(key) or new_route(key)
            groups[(server, 0 if key in lasting else expire)][wire] = value
        for (server, expire), batch in groups.items():
            failed = server.set_many(batch, expire)
            if failed:
                raise exception.BackendUnavailable(
                    f"memcached server {server.name} did not store {failed} of "
                    f"{len(batch)} values", host=server.name)

    def plain_delete(self, key: str) -> bool:
        safe, server = self._route(key)
        with server.errors:
            return bool(server.client().delete(safe, noreply=False))

    def delete_multi(self, keys: Sequence[str]) -> None:  # type: ignore[override]
        for server, batch in self._group(keys).items():
            with server.errors:
                server.client().delete_many(batch, noreply=False)

    # -- leases -------------------------------------------------------------

    def acquire_lease(self, key: str, token: str, ttl: float | None) -> int | None:
        safe, server = self._route(key)
        lease_key = _LEASE_PREFIX + safe
        wanted = token.encode()
        expire = self._lease_expire(ttl)
        with server.errors:
            client = server.client()
            if client.add(lease_key, wanted, expire, noreply=False):
                return self._next_fence(client, safe)
            # Taken: by another holder, or by us if this is a retry of an
            # acquire whose reply was lost.  Only the latter is a success.
            lease = self._own_lease(client, safe, wanted)
            if lease is None:
                return None
            if not client.cas(lease_key, wanted, lease.flags[b"c"], expire, noreply=False):
                return None
            # The lost reply may have come before the fence ``incr`` ran, so
            # the counter may still show the previous holder's fence: draw a
            # new one (a skipped number is harmless, a repeated one is not).
            return self._next_fence(client, safe)

    def release_lease(self, key: str, token: str) -> bool:
        safe, server = self._route(key)
        self._forget_credit(safe, token)
        with server.errors:
            client = server.client()
            lease = self._own_lease(client, safe, token.encode())
            if lease is None:
                return False
            # Conditional on the CAS just read: if the lease changed hands
            # meanwhile, memcached answers EX and deletes nothing.
            (reply,) = self._meta(
                client, b"md %s C%s" % ((_LEASE_PREFIX + safe).encode(), lease.flags[b"c"]))
            return reply.code == b"HD"

    def _forget_credit(self, safe: str, token: str) -> None:
        with self._credit_guard:
            self._extend_credit.pop((safe, token), None)

    def _prune_credit(self) -> None:
        """Drop credit of leases that have ended (call with the guard held)."""
        if len(self._extend_credit) <= _CREDIT_PRUNE_FROM:
            return
        now = time.monotonic()
        for entry, (_owed, ends) in list(self._extend_credit.items()):
            if ends < now:
                del self._extend_credit[entry]

    def extend_lease(self, key: str, token: str, ttl: float) -> bool:
        safe, server = self._route(key)
        wanted = token.encode()
        with server.errors:
            client = server.client()
            lease = self._own_lease(client, safe, wanted)
            if lease is None:
                self._forget_credit(safe, token)
                return False
            remaining = lease.int_flag(b"t")
            if remaining < 0:
                return True  # never expires: nothing to add
            with self._credit_guard:
                owed, _ends = self._extend_credit.pop((safe, token), (0.0, 0.0))
                credit = owed + ttl
                whole = math.floor(credit)
                if credit - whole > 0:
                    ends = time.monotonic() + remaining + whole + 1
                    self._extend_credit[(safe, token)] = (credit - whole, ends)
                    self._prune_credit()
            if whole == 0:
                # Less than a second owed: the lease's padding (one second
                # plus the safety margin) covers it until the next extend.
                return True
            expire = _wire_expiry(remaining + whole)
            return client.cas(_LEASE_PREFIX + safe, wanted, lease.flags[b"c"], expire,
                              noreply=False) is True

    def persist_lease(self, key: str, token: str) -> bool:
        safe, server = self._route(key)
        wanted = token.encode()
        with server.errors:
            client = server.client()
            lease = self._own_lease(client, safe, wanted)
            if lease is None:
                return False
            # cas: only the lease we just read, not one granted since.
            return client.cas(_LEASE_PREFIX + safe, wanted, lease.flags[b"c"], 0,
                              noreply=False) is True

    def fenced_set(self, key: str, value: bytes, token: str, ttl: float | None) -> Fenced:
        # Check, then write: two steps memcached cannot join (module docstring).
        self.check_size(key, value)
        safe, server = self._route(key)
        with server.errors:
            client = server.client()
            if not self._holds(self._read_lease(client, safe), token.encode()):
                self._forget_credit(safe, token)
                return Fenced.LEASE_LOST
            client.set(safe, value, self._data_expire(ttl, key), noreply=False)
            return Fenced.WRITTEN

    def fenced_delete(self, key: str, token: str) -> Fenced:
        safe, server = self._route(key)
        with server.errors:
            client = server.client()
            if not self._holds(self._read_lease(client, safe), token.encode()):
                self._forget_credit(safe, token)
                return Fenced.LEASE_LOST
            if client.delete(safe, noreply=False):
                return Fenced.WRITTEN
            return Fenced.MISSING

    def lease_info(self, key: str) -> LeaseInfo | None:
        safe, server = self._route(key)
        with server.errors:
            lease, fence = self._meta(
                server.client(), b"mg %s v t" % (_LEASE_PREFIX + safe).encode(),
                b"mg %s v" % (_FENCE_PREFIX + safe).encode())
        if lease.code != b"VA" or lease.value is None:
            return None
        left = lease.int_flag(b"t")
        # Report the lease as asked for: without the clock and margin padding.
        remaining = None if left < 0 else float(max(0, left - 1 - self._lease_padding))
        return LeaseInfo(
            token=lease.value.decode("utf-8", "replace"),
            fence=int(fence.value) if fence.code == b"VA" and fence.value else 0,
            remaining=remaining)

    def break_lease(self, key: str) -> bool:
        safe, server = self._route(key)
        with self._credit_guard:
            for entry in [entry for entry in self._extend_credit if entry[0] == safe]:
                del self._extend_credit[entry]
        with server.errors:
            return bool(server.client().delete(_LEASE_PREFIX + safe, noreply=False))

    def wait_for_release(self, key: str, timeout: float) -> None:
        # memcached cannot notify anyone: poll, backing off from 5 ms to 100 ms.
        safe, server = self._route(key)
        lease_get = b"mg %s" % (_LEASE_PREFIX + safe).encode()
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            with server.errors:
                (reply,) = self._meta(server.client(), lease_get)
            left = deadline - time.monotonic()
            if reply.code != b"HD" or left <= 0:
                return
            time.sleep(min(delay, left))
            delay = min(delay * 2, 0.1)

    # -- health -------------------------------------------------------------

    def ping(self) -> None:
        for server in self.servers:
            with server.errors:
                server.client().version()

    def close(self) -> None:
        """Close this thread's connections (all of them, with pooling)."""
        for server in self.servers:
            server.close()
