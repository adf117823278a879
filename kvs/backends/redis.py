"""``kvs.redis``: fenced leases on one Redis server (standalone, TLS, ACL, unix socket).

How it is built
---------------
Composition, not inheritance.  The backend is a
:class:`~kvs.backends.base.LeaseBackend`; it asks dogpile.cache's own
``dogpile.cache.redis`` backend (``RedisSentinelBackend`` for
:mod:`kvs.backends.redis_sentinel`, ``RedisClusterBackend`` for
:mod:`kvs.backends.redis_cluster`) to build the redis-py client from the
connection arguments, and then keeps only that client.  Inheriting from
dogpile's class as well would drag in its ``get_mutex``, its pickle
serializer, its ``redis_expiration_time`` and its own ``set_serialized``,
all of which the lease contract replaces; composition reuses exactly the part
that fits (connection handling) and nothing else.

Keys on the server
------------------
For every kvs key ``K`` (the store's mangled key):

=====================  =============================================
``K``                  the value (dogpile wire-format bytes, as-is), named
                       as ``dogpile.cache.redis`` names it; ``{T}`` on
                       Redis Cluster, or with ``hash_tags = true``
``{T}:lease``          the lease: the holder's token, with a PX TTL
``{T}:fence``          the fence counter (increments on every grant)
``{T}:signal``         a short-lived list that wakes waiters (BLPOP)
``{T}:done``           markers that let a resent write recognise its first run
=====================  =============================================

``T`` is ``K`` with ``%``, ``{`` and ``}`` percent-escaped, so it never
contains a brace: Redis Cluster hashes exactly ``T`` for all of a key's names
(one slot, so every script stays atomic).  The names are injective: no two
kvs keys, and no value and lease, ever share a name.  A value is named ``K``
itself unless ``K`` is empty or starts with ``{`` or ``%``; such a value is
named ``%`` plus ``K`` escaped (see :func:`value_name`), so a value name never
starts with ``{`` and never meets a lease's.

So a plain ``dogpile.cache.redis`` region with the store's key mangler and
serializer reads and writes kvs's values on standalone Redis and Sentinel.
On a cluster a value must share its lease's slot, so it keeps the hash tag;
``hash_tags = true`` keeps that layout elsewhere too (it was the layout of
every Redis backend before version 0.2, so data written then needs it).

Leases are Lua scripts (class attributes below), run with EVALSHA and reloaded
on ``NOSCRIPT`` by redis-py, so they survive ``SCRIPT FLUSH`` and restarts.
"""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from dogpile.cache.api import NO_VALUE, NoValue

from kvs import exception
from kvs.backends.base import (
    OPERATION_WORDS,
    ArgumentSpec,
    Fenced,
    LeaseBackend,
    LeaseInfo,
    require_client,
)
from kvs.backends.near_cache import NearCache
from kvs.backends.redis_connections import ConnectionCache
from kvs.errors import translated


def hash_tag(key: str) -> str:
    """``{T}``: the brace-free, injective hash tag of a mangled key."""
    if key and "%" not in key and "{" not in key and "}" not in key:
        return "{" + key + "}"  # the common case (hashed keys), without three replaces
    tag = key.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")
    # "{}" would make Redis hash the whole name; "%00" cannot come from escaping.
    return "{" + (tag or "%00") + "}"


def value_name(key: str) -> str:
    """The name of ``key``'s value without hash tags: the key itself, as
    ``dogpile.cache.redis`` names it, unless that could meet a lease's name."""
    if key and key[0] != "{" and key[0] != "%":
        return key
    return "%" + key.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class ClientArgument(ArgumentSpec):
    """The Python-only ``client`` argument: an already-built redis-py client.

    Tests use it to run ``kvs.redis`` on ``fakeredis.FakeRedis`` (with Lua).
    It cannot come from an ini file.
    """

    def __init__(self) -> None:
        super().__init__("str", default=None)

    def parse(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str) or not callable(getattr(value, "register_script", None)):
            raise exception.ConfigurationError(
                f"backend argument {name!r} must be a redis-py client object (Python only)",
                option=name)
        return value


#: Connection arguments shared by the three Redis backends.
CONNECTION_ARGUMENTS: dict[str, ArgumentSpec] = {
    "username": ArgumentSpec("str"),
    "password": ArgumentSpec("str", secret=True),
    "ssl": ArgumentSpec("bool"),
    "ssl_ca_certs": ArgumentSpec("str"),
    "ssl_certfile": ArgumentSpec("str"),
    "ssl_keyfile": ArgumentSpec("str"),
    "ssl_cert_reqs": ArgumentSpec("str", choices=("none", "optional", "required")),
    "ssl_check_hostname": ArgumentSpec("bool"),
    "socket_timeout": ArgumentSpec("float", default=1.0, minimum=0.001),
    "socket_connect_timeout": ArgumentSpec("float", default=1.0, minimum=0.001),
    "max_connections": ArgumentSpec("int", minimum=1),
    "health_check_interval": ArgumentSpec("float", default=0.0, minimum=0),
    "retries": ArgumentSpec("int", default=0, minimum=0),
}

#: The near cache (kvs.backends.near_cache): standalone and Sentinel.  The store
#: sets near_cache_prefix to its key prefix.
NEAR_CACHE_ARGUMENTS: dict[str, ArgumentSpec] = {
    "near_cache": ArgumentSpec("bool", default=False),
    "near_cache_size": ArgumentSpec("int", default=10_000, minimum=1),
    "near_cache_prefix": ArgumentSpec("str", default=""),
}

#: WAIT after data writes (standalone and Sentinel; WAIT has no place in a cluster script).
REPLICATION_ARGUMENTS: dict[str, ArgumentSpec] = {
    "wait_replicas": ArgumentSpec("int", default=0, minimum=0),
    "wait_timeout": ArgumentSpec("float", default=0.5, minimum=0.001),
}

_SSL_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
              "ssl_check_hostname")


def milliseconds(seconds: float) -> int:
    """Seconds to whole milliseconds for PX/PEXPIRE, never 0 (0 would be an error)."""
    return max(1, round(seconds * 1000))


_SSL_CERT_REQS = ("none", "optional", "required")

#: The oldest Redis kvs runs on: 6.0 (fractional BLPOP timeouts; scripts that
#: call TIME before writing need 5.0).
MIN_REDIS_VERSION = (6, 0)

#: What an error message calls each backend method (see OPERATION_WORDS).
_OPERATION_WORDS = {**OPERATION_WORDS, "_connect": "connect", "wait_for_grant": "lock",
                    "cancel_grant": "lock"}


def check_url(url: str) -> None:
    """Parse ``url`` as redis-py will, at configure time; ConfigurationError if it cannot.

    The message names the part that is wrong, never the URL (it may hold a
    password).
    """
    from redis.connection import parse_url

    parts = urllib.parse.urlsplit(url)
    path = parts.path.lstrip("/")
    if parts.scheme != "unix" and path and not path.isdigit():
        raise exception.ConfigurationError(
            "the database in backend argument 'url' must be a number (redis://host:port/0)",
            option="url")
    try:
        parsed = parse_url(url)
    except (ValueError, TypeError) as exc:
        quoted = re.search(r"'([a-z_]+)'", str(exc))
        what = f"query parameter {quoted.group(1)!r}" if quoted else "host or port"
        raise exception.ConfigurationError(
            f"backend argument 'url' has an invalid {what}", option="url") from None
    cert_reqs = parsed.get("ssl_cert_reqs")
    if cert_reqs is not None and str(cert_reqs).lower() not in _SSL_CERT_REQS:
        raise exception.ConfigurationError(
            f"query parameter 'ssl_cert_reqs' of backend argument 'url' must be one of "
            f"{', '.join(_SSL_CERT_REQS)}", option="url")


class RedisBackend(LeaseBackend):
    """``kvs.redis``: one Redis server.  See ``doc/backends/redis.md`` for the arguments."""

    name = "kvs.redis"
    backend_value_limit = 512 * 1024 * 1024  # Redis's largest string

    arguments: ClassVar[dict[str, ArgumentSpec]] = {
        **LeaseBackend.arguments,
        **CONNECTION_ARGUMENTS,
        **REPLICATION_ARGUMENTS,
        # A URL may carry a password: never shown, whatever its type.
        "url": ArgumentSpec("str", secret=True),
        "host": ArgumentSpec("str"),
        "port": ArgumentSpec("int", minimum=1),
        "db": ArgumentSpec("int", minimum=0),
        "client": ClientArgument(),
        # Name values {T}, as Redis Cluster needs (and every backend did before 0.2).
        "hash_tags": ArgumentSpec("bool", default=False),
        **NEAR_CACHE_ARGUMENTS,
    }

    #: Whether ``max_connections`` can be honoured with a pool that queues.
    queues_for_connections: ClassVar[bool] = True

    #: Whether the hot commands may skip redis-py's pool checkout (see
    #: :mod:`kvs.backends.redis_connections`): only on a client kvs built
    #: itself, with redis-py's retries off and an unbounded pool.
    caches_connections: ClassVar[bool] = True

    #: Lifetime of a wake-up signal nobody popped: long enough to cover the gap
    #: between a waiter's failed acquire and its BLPOP, short enough to leave
    #: no litter.
    SIGNAL_TTL_MS = 1000

    # -- Lua scripts (KEYS and ARGV are listed in each comment) -------------

    # Each script is one whole text.  Lease keys share the data key's hash
    # tag, so every script touches a single slot (Cluster-safe).

    #: The grant step of every script that hands out a lease (a Lua function,
    #: prepended to each): a new fence, max(counter, server clock in
    #: microseconds) + 1, unless ``retake`` (the token already holds the lease:
    #: same fence), then the lease for ``ttl`` ms (0: never expires).  ``now``:
    #: the reply of a TIME the caller already made (TIME costs a script about
    #: 4 us, as much as the rest of a grant), else nil.  Returns the fence.
    GRANT = """
local function grant(lease, fence_key, token, ttl, retake, now)
  local fence
  if retake then fence = tonumber(redis.call('GET', fence_key)) end
  if not fence then
    now = now or redis.call('TIME')
    local clock = now[1] .. string.format('%06d', tonumber(now[2]))
    local counter = tonumber(redis.call('GET', fence_key))
    if not counter or counter < tonumber(clock) then
      redis.call('SET', fence_key, clock)
    end
    fence = redis.call('INCR', fence_key)
  end
  if ttl > 0 then
    redis.call('SET', lease, token, 'PX', ttl)
  else
    redis.call('SET', lease, token)
  end
  return fence
end
"""

    #: Take the lease.
    #: KEYS[1] lease, KEYS[2] fence counter.  ARGV[1] token, ARGV[2] ttl ms (0: never expires).
    #: Returns the fence number, or nil when another token holds the lease.
    #: Guarantee: taken when free, or re-taken when it already holds this token
    #: (the retry of a request whose reply was lost: same fence, fresh TTL), so
    #: a lost reply never leaves an ownerless lease.  A new grant's fence is
    #: max(counter, server clock in microseconds) + 1, so it never goes back,
    #: even when the counter is missing (first use, eviction, restart without
    #: persistence) or old (restored from an RDB snapshot or an AOF that lost
    #: its last second): no script runs in under a microsecond, so the counter
    #: never leads the clock by more than a restart takes.  (Lua numbers are
    #: doubles, exact up to 2^53 us, the year 2255.)
    ACQUIRE = GRANT + """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return false end
return grant(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), holder)
"""

    #: Take the lease (exactly as ACQUIRE) and read the value in the same
    #: atomic step: update()'s first round trip.
    #: KEYS[1] lease, KEYS[2] fence counter, KEYS[3] data.
    #: ARGV[1] token, ARGV[2] ttl ms (0: never expires).
    #: Returns {fence, value or nil}, or nil when another token holds the
    #: lease (nothing is read then).
    ACQUIRE_AND_GET = GRANT + """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return false end
local fence = grant(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), holder)
return {fence, redis.call('GET', KEYS[3])}
"""

    # Hand-off.  A waiter that finds the key leased queues itself (ENQUEUE):
    # its token goes on the key's queue list and into the waiters hash with
    # "<deadline ms>:<lease ttl ms>", and it blocks on its own grant list
    # ``{T}:queue:<token>``.  Every release (RELEASE, FENCED_SET_AND_RELEASE,
    # BREAK) then grants the lease straight to the longest-queued live waiter,
    # exactly as ACQUIRE would (new fence, the waiter's TTL), and pushes
    # "<fence>:v:<value>" (or "<fence>:n:" for no value) onto its grant list:
    # the waiter wakes up holding the lease and the value, so a hand-off costs
    # one round trip.  A waiter's entry lives only until its deadline (it
    # re-queues each time it blocks again), so a waiter that died or gave up
    # is skipped within a second; one that gives up cancels (CANCEL), and if
    # it was granted meanwhile it takes the grant instead of leaving it
    # ownerless.  No live waiter: the signal list wakes pollers as before.

    #: The grant step shared by every release (a Lua function, prepended to
    #: each releasing script).  queue = KEYS of the queue list; the grant list
    #: of a waiter is queue .. ':' .. token (same hash tag, so same slot; only
    #: the Redis backends that wait by ENQUEUE ever fill a queue, so a cluster,
    #: whose scripts must name every key, never reaches that line).
    HAND_OVER = GRANT + """
local function hand_over(lease, fence_key, data, signal, waiters, queue, signal_ttl, value)
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  for _ = 1, 16 do
    local waiter = redis.call('LPOP', queue)
    if not waiter then break end
    local entry = redis.call('HGET', waiters, waiter)
    if entry then
      redis.call('HDEL', waiters, waiter)
      local sep = string.find(entry, ':', 1, true)
      local ttl = tonumber(string.sub(entry, sep + 1))
      if tonumber(string.sub(entry, 1, sep - 1)) > ms then
        local fence = string.format('%.0f', grant(lease, fence_key, waiter, ttl, false, now))
        if value == nil then value = redis.call('GET', data) end
        local grant = queue .. ':' .. waiter
        if value then
          redis.call('RPUSH', grant, fence .. ':v:' .. value)
        else
          redis.call('RPUSH', grant, fence .. ':n:')
        end
        if ttl > 0 then
          redis.call('PEXPIRE', grant, ttl)
        else
          redis.call('PEXPIRE', grant, 60000)
        end
        return
      end
    end
  end
  if redis.call('LLEN', signal) == 0 then
    redis.call('RPUSH', signal, '1')
    redis.call('PEXPIRE', signal, signal_ttl)
  end
end
"""

    #: Take the lease now if it is free (or already this token's: a grant
    #: whose reply was lost, or a hand-off the waiter missed; its TTL then
    #: restarts now, so the waiter's view of it is never longer than the
    #: server's), else queue.
    #: KEYS[1] lease, KEYS[2] fence counter, KEYS[3] data, KEYS[4] waiters hash,
    #: KEYS[5] queue list, KEYS[6] this waiter's grant list.
    #: ARGV[1] token, ARGV[2] lease ttl ms (0: never expires), ARGV[3] ms the
    #: queue entry stays valid, ARGV[4] '1' to read the value when taken,
    #: ARGV[5] '1' when a BLPOP on the grant list follows in the same write
    #: (see wait_for_grant): a lease taken at once then also leaves one
    #: element there, so that BLPOP returns at once.
    #: Returns {fence, value or nil} when taken, else {0, lease PTTL}.
    #: The lock calls this first for a key whose last acquire here had to
    #: queue (sent with the BLPOP, see _enqueue_and_block), so a contended
    #: acquire costs no failed ACQUIRE; other keys try ACQUIRE first, and come
    #: here (a round trip more, once) only when that finds the key leased.
    ENQUEUE = GRANT + """
local holder = redis.call('GET', KEYS[1])
if not holder or holder == ARGV[1] then
  local fence = grant(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), holder)
  if redis.call('HDEL', KEYS[4], ARGV[1]) == 1 then redis.call('LREM', KEYS[5], 0, ARGV[1]) end
  redis.call('DEL', KEYS[6])
  if ARGV[5] == '1' then
    redis.call('RPUSH', KEYS[6], 't')
    redis.call('PEXPIRE', KEYS[6], 60000)
  end
  if ARGV[4] == '1' then return {fence, redis.call('GET', KEYS[3])} end
  return {fence}
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local window = tonumber(ARGV[3])
local entry = string.format('%.0f', ms + window) .. ':' .. ARGV[2]
if redis.call('HSET', KEYS[4], ARGV[1], entry) == 1 then
  redis.call('RPUSH', KEYS[5], ARGV[1])
end
redis.call('PEXPIRE', KEYS[4], window * 4)
redis.call('PEXPIRE', KEYS[5], window * 4)
return {0, redis.call('PTTL', KEYS[1])}
"""

    #: A queued waiter gives up: leave the queue; if the lease was handed to
    #: it meanwhile, report the grant (the waiter then holds it, with its TTL
    #: restarted now, so the waiter's own view of it is never longer than the
    #: server's).
    #: KEYS as ENQUEUE.  ARGV[1] token, ARGV[2] lease ttl ms (0: never expires).
    #: Returns {fence, value or nil} when the lease is this token's, else nil.
    CANCEL = """
if redis.call('HDEL', KEYS[4], ARGV[1]) == 1 then redis.call('LREM', KEYS[5], 0, ARGV[1]) end
redis.call('DEL', KEYS[6])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  local ttl = tonumber(ARGV[2])
  if ttl > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  else
    redis.call('SET', KEYS[1], ARGV[1])
  end
  return {tonumber(redis.call('GET', KEYS[2])), redis.call('GET', KEYS[3])}
end
return false
"""

    # Retried requests.  With ``retries`` > 0 redis-py resends a request
    # whose reply was lost, and a second run of a write that already landed
    # would report the wrong outcome (the lease is gone, the key deleted).
    # So the scripts below take a request id (ARGV, '' when retries are off)
    # and leave it in the key's "done" marker (KEYS: done) for DONE_TTL_MS;
    # a run that finds its own id there answers what the first run answered.
    # One marker per key: if another write to the same key lands between a
    # request and its resend, the resend no longer finds its id and reports
    # LeaseLost or NotFound; that errs on the safe side (fails closed).

    #: Compare-and-delete, then hand the lease to the next queued waiter (or
    #: wake one poller).
    #: KEYS[1] lease, KEYS[2] signal list, KEYS[3] done marker, KEYS[4] fence
    #: counter, KEYS[5] data, KEYS[6] waiters hash, KEYS[7] queue list.
    #: ARGV[1] token, ARGV[2] signal ttl ms, ARGV[3] request id ('': none), ARGV[4] done ttl ms.
    #: Returns 1 released (now or by this request's first run), 0 not ours
    #: (expired or taken over: left untouched).
    #: Guarantee: never releases another holder's lease.  The wake-up pushes one
    #: element unless one is already waiting; Redis serves the longest-blocked
    #: BLPOP, so one release hands off to one waiter (no thundering herd).
    RELEASE = HAND_OVER + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[3] then return 1 end
  return 0
end
redis.call('DEL', KEYS[1])
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4]) end
hand_over(KEYS[1], KEYS[4], KEYS[5], KEYS[2], KEYS[6], KEYS[7], ARGV[2], nil)
return 1
"""

    #: Operator override: drop the lease whoever holds it, then hand it to the
    #: next queued waiter (or wake one poller).
    #: KEYS[1] lease, KEYS[2] signal list, KEYS[3] fence counter, KEYS[4] data,
    #: KEYS[5] waiters hash, KEYS[6] queue list.  ARGV[1] unused, ARGV[2] signal ttl ms.
    #: Returns 1 when a lease was there, else 0.  The old holder's next fenced
    #: write is refused, because the lease no longer holds its token.
    BREAK = HAND_OVER + """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
hand_over(KEYS[1], KEYS[3], KEYS[4], KEYS[2], KEYS[5], KEYS[6], ARGV[2], nil)
return 1
"""

    #: Compare-and-extend: add time to the lease only if it holds this token.
    #: KEYS[1] lease, KEYS[2] done marker.
    #: ARGV[1] token, ARGV[2] ms to add, ARGV[3] request id ('': none), ARGV[4] done ttl ms.
    #: Returns 1 extended (a retried request is not applied twice), 0 not ours.
    #: A lease without expiry stays without.
    EXTEND = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then return 1 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local left = redis.call('PTTL', KEYS[1])
if left > 0 then redis.call('PEXPIRE', KEYS[1], left + tonumber(ARGV[2])) end
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4]) end
return 1
"""

    #: Make the lease never expire, only if it holds this token (the second
    #: step of a lock_timeout = 0 acquire, whose grant had a provisional TTL).
    #: KEYS[1] lease.  ARGV[1] token.  Returns 1 persisted, 0 not ours.
    PERSIST = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PERSIST', KEYS[1])
return 1
"""

    #: Fenced write.
    #: KEYS[1] lease, KEYS[2] data, KEYS[3] done marker.
    #: ARGV[1] token, ARGV[2] value, ARGV[3] ttl ms (0: none), ARGV[4] request id ('': none),
    #: ARGV[5] done ttl ms.
    #: Returns 1 written (now or by this request's first run), 0 lease lost
    #: (nothing written).
    #: Guarantee: the value lands only if the lease holds this token, checked
    #: and written in one atomic step on the server (no client clock involved).
    FENCED_SET = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then return 1 end
  return 0
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
else
  redis.call('SET', KEYS[2], ARGV[2])
end
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5]) end
return 1
"""

    #: Fenced write, then release and hand the lease to the next queued waiter
    #: (with the value just written), atomically: update()'s second round trip.
    #: KEYS[1] lease, KEYS[2] data, KEYS[3] signal list, KEYS[4] done marker,
    #: KEYS[5] fence counter, KEYS[6] waiters hash, KEYS[7] queue list.
    #: ARGV[1] token, ARGV[2] value, ARGV[3] ttl ms (0: none), ARGV[4] signal ttl ms,
    #: ARGV[5] request id ('': none), ARGV[6] done ttl ms.
    #: Returns 1 written and released (now or by this request's first run),
    #: 0 lease lost (nothing written, nothing released).
    FENCED_SET_AND_RELEASE = HAND_OVER + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  if ARGV[5] ~= '' and redis.call('GET', KEYS[4]) == ARGV[5] then return 1 end
  return 0
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
else
  redis.call('SET', KEYS[2], ARGV[2])
end
redis.call('DEL', KEYS[1])
if ARGV[5] ~= '' then redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[6]) end
hand_over(KEYS[1], KEYS[5], KEYS[2], KEYS[3], KEYS[6], KEYS[7], ARGV[4], ARGV[2])
return 1
"""

    #: Fenced delete.
    #: KEYS[1] lease, KEYS[2] data, KEYS[3] done marker.
    #: ARGV[1] token, ARGV[2] request id ('': none), ARGV[3] done ttl ms.
    #: Returns 1 deleted (now or by this request's first run), 2 lease ours but
    #: no value, 0 lease lost (nothing deleted).
    FENCED_DELETE = """
if ARGV[2] ~= '' and redis.call('GET', KEYS[3]) == ARGV[2] then return 1 end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('DEL', KEYS[2]) == 0 then return 2 end
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[3]) end
return 1
"""

    #: Plain delete that a retried request answers truthfully (used only when
    #: retries are on; otherwise a plain DEL).
    #: KEYS[1] data, KEYS[2] done marker.  ARGV[1] request id, ARGV[2] done ttl ms.
    #: Returns 1 deleted (now or by this request's first run), 0 no such key.
    DELETE_ONCE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then return 1 end
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"""

    #: Who holds the lease, read atomically.
    #: KEYS[1] lease, KEYS[2] fence counter.
    #: Returns {token, remaining ms (-1: no expiry), fence}, or nil when free.
    LEASE_INFO = """
local holder = redis.call('GET', KEYS[1])
if not holder then return false end
return {holder, redis.call('PTTL', KEYS[1]), tonumber(redis.call('GET', KEYS[2])) or 0}
"""

    #: Several values with one TTL, atomically (MSET cannot take a TTL).
    #: KEYS data keys.  ARGV[1] ttl ms, then one value per key.
    #: Returns the number of keys written.
    SET_MULTI_PX = """
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do redis.call('SET', key, ARGV[i + 1], 'PX', ttl) end
return #KEYS
"""

    _SCRIPTS = ("ACQUIRE", "ACQUIRE_AND_GET", "ENQUEUE", "CANCEL", "RELEASE", "BREAK",
                "EXTEND", "PERSIST",
                "FENCED_SET", "FENCED_SET_AND_RELEASE", "FENCED_DELETE", "DELETE_ONCE",
                "LEASE_INFO", "SET_MULTI_PX")

    #: How long a "done" marker lets a retried request recognise its first run:
    #: far longer than redis-py's retries take.
    DONE_TTL_MS = 60_000

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        require_client(self.name, "redis", "redis", "redis[hiredis]")
        super().__init__(arguments)
        self._check_arguments()
        options = self.options
        self._pinned = (self.caches_connections and options.get("client") is None
                        and not options["retries"] and options["max_connections"] is None)
        #: The writer's and the reader's ConnectionCache when _pinned (see _adopt);
        #: typed Any, as they are only ever used then.
        self._on_writer: Any = None
        self._on_reader: Any = None
        self._connect_lock = threading.Lock()
        self._writer: Any = None
        self._reader: Any = None
        self._scripts: dict[str, Any] = {}
        self._version_checked = False
        self.endpoint = self._describe_endpoint()
        #: The name of a key's value on the server (see the module docstring).
        self.value_name: Callable[[str], str] = (
            hash_tag if self.options.get("hash_tags", True) else value_name)
        self.wait_replicas: int = self.options.get("wait_replicas") or 0
        # BLPOP must return before the socket read timeout fires.
        timeout = self._socket_timeout()
        self._blocking_cap = 1.0 if timeout is None else max(0.001, timeout / 2)
        if self.options.get("client") is not None:
            self._adopt(self.options["client"], self.options["client"])
        self._near: NearCache | None = None
        if self.options.get("near_cache"):
            self._near = NearCache(self.options["near_cache_size"],
                                   self.options["near_cache_prefix"], self._near_client)
        # With a near cache: keys this process holds leases on (their reads go
        # to the server), by token.
        self._held_keys: dict[str, int] = {}
        self._held_tokens: dict[str, str] = {}
        #: Keys whose last acquire here had to queue (see wait_for_grant).
        self._contended: dict[str, None] = {}
        import redis.exceptions

        self._no_script: type[Exception] = redis.exceptions.NoScriptError
        options = self.options

    # -- configuration ------------------------------------------------------

    def _check_arguments(self) -> None:
        options = self.options
        url = options["url"]
        if url is not None:
            if options["host"] is not None or options["port"] is not None:
                raise exception.ConfigurationError(
                    "give either url or host/port to kvs.redis, not both", option="url")
            scheme = urllib.parse.urlsplit(url).scheme
            if scheme not in ("redis", "rediss", "unix"):
                raise exception.ConfigurationError(
                    f"backend argument 'url' must start with redis://, rediss:// or unix://, "
                    f"not {scheme}://", option="url")
            if self._tls_wanted() and scheme != "rediss":
                raise exception.ConfigurationError(
                    "TLS arguments need a rediss:// url", option="url")
            check_url(url)
        if options["client"] is not None:
            given = [name for name in ("url", "host", "port") if options[name] is not None]
            if given:
                raise exception.ConfigurationError(
                    f"backend argument 'client' excludes {', '.join(given)}", option="client")
        self._check_ssl()
        self._check_wait()
        self._check_pool()

    def _check_pool(self) -> None:
        if self.options["max_connections"] is not None and not self.queues_for_connections:
            raise exception.ConfigurationError(
                f"backend argument 'max_connections' is not supported by {self.name}: its "
                f"redis-py pool fails at once when every connection is busy, so waiters could "
                f"leave a lease holder unable to write or release (use it with kvs.redis)",
                option="max_connections")

    def _check_wait(self) -> None:
        # WAIT blocks on the socket: it must answer before the read timeout fires.
        options = self.options
        if options.get("wait_replicas") and options["wait_timeout"] >= options["socket_timeout"]:
            raise exception.ConfigurationError(
                f"backend argument 'wait_timeout' ({options['wait_timeout']} s) must be below "
                f"socket_timeout ({options['socket_timeout']} s)", option="wait_timeout")

    def _check_ssl(self) -> None:
        options = self.options
        files = [name for name in _SSL_FILES if options.get(name) is not None]
        if options.get("ssl") is False and files:
            raise exception.ConfigurationError(
                f"backend arguments {', '.join(files)} need ssl, but ssl is false",
                option=files[0])

    def _tls_wanted(self) -> bool:
        options = self.options
        if options.get("ssl") is not None:
            return bool(options["ssl"])
        if options.get("url") and options["url"].startswith("rediss:"):
            return True
        # ssl_check_hostname alone does not ask for TLS (it is only a refinement).
        return any(options.get(name) is not None for name in _SSL_FILES[:-1])

    def _connection_kwargs(self) -> dict[str, Any]:
        """redis-py connection keywords common to every backend of the family."""
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options = self.options
        kwargs: dict[str, Any] = {
            "socket_timeout": options["socket_timeout"],
            "socket_connect_timeout": options["socket_connect_timeout"],
            "health_check_interval": options.get("health_check_interval") or 0,
            # redis-py's default is 10 retries with backoff: an unreachable
            # server would take seconds to report.  kvs says it at once.
            "retry": Retry(NoBackoff(), options["retries"]),
        }
        if options["max_connections"] is not None:
            kwargs["max_connections"] = options["max_connections"]
        if self._tls_wanted():
            kwargs["ssl"] = True
            for name in _SSL_FILES:
                if options.get(name) is not None:
                    kwargs[name] = options[name]
            if options.get("ssl_cert_reqs") == "none" and options.get("ssl_check_hostname") is None:
                kwargs["ssl_check_hostname"] = False
        return kwargs

    def _describe_endpoint(self) -> str:
        """Where the server is, for messages: host:port or a socket path, never a secret."""
        options = self.options
        client = options["client"]
        if client is not None:
            pool_kwargs = getattr(getattr(client, "connection_pool", None),
                                  "connection_kwargs", {})
            if "host" in pool_kwargs:
                return f"{pool_kwargs['host']}:{pool_kwargs.get('port', 6379)}"
            return f"a caller-supplied {type(client).__name__} client"
        if options["url"] is not None:
            parts = urllib.parse.urlsplit(options["url"])
            if parts.scheme == "unix":
                return f"unix:{parts.path}"
            return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
        return f"{options['host'] or 'localhost'}:{options['port'] or 6379}"

    def _socket_timeout(self) -> float | None:
        client = self.options.get("client")
        if client is None:
            return float(self.options["socket_timeout"])
        pool = getattr(client, "connection_pool", None)
        value = getattr(pool, "connection_kwargs", {}).get("socket_timeout")
        return None if value is None else float(value)

    # -- connection ---------------------------------------------------------

    def _create_clients(self) -> tuple[Any, Any]:
        """Build (writer, reader) redis-py clients with dogpile's backend."""
        from dogpile.cache.backends.redis import RedisBackend as DogpileRedis

        options = self.options
        kwargs = self._connection_kwargs()
        if options["url"] is None:
            arguments: dict[str, Any] = {
                "host": options["host"] or "localhost", "port": options["port"] or 6379,
                "db": options["db"] or 0, "username": options["username"],
                "password": options["password"], "connection_kwargs": kwargs}
        else:
            # from_url() picks the connection class from the scheme (rediss: TLS)
            # and lets the URL's own credentials win; explicit ones fill gaps.
            kwargs.pop("ssl", None)
            for name in ("username", "password", "db"):
                if options[name] is not None:
                    kwargs[name] = options[name]
            arguments = {"url": options["url"], "connection_kwargs": kwargs}
        connector = DogpileRedis(arguments)
        if options["max_connections"] is not None:
            return self._blocking_clients(connector.writer_client)
        return connector.writer_client, connector.reader_client

    def _blocking_clients(self, built: Any) -> tuple[Any, Any]:
        """Clients on a pool that *queues* for a free connection instead of failing.

        With ``max_connections`` a lease holder must still be able to write
        and release however many threads wait for its key: waiters never hold
        a connection while they wait (see :meth:`wait_for_release`), and a
        call that finds every connection busy waits for one (up to
        ``socket_timeout``) rather than raising.
        """
        import redis

        template = built.connection_pool
        pool = redis.BlockingConnectionPool(
            connection_class=template.connection_class,
            max_connections=self.options["max_connections"],
            timeout=self.options["socket_timeout"], **template.connection_kwargs)
        template.disconnect()
        client = redis.Redis(connection_pool=pool)
        return client, client

    def _adopt(self, writer: Any, reader: Any) -> None:
        self._scripts = {name: writer.register_script(getattr(self, name))
                         for name in self._SCRIPTS}
        if self._pinned:
            self._on_writer = ConnectionCache(writer)
            self._on_reader = self._on_writer if reader is writer else ConnectionCache(reader)
        self._reader = reader
        self._writer = writer

    @property
    def client(self) -> Any:
        """The redis-py client that takes writes and lease scripts (built on first use)."""
        if self._writer is None:
            with self._connect_lock:
                if self._writer is None:
                    self._connect()
        return self._writer

    @translated
    def _connect(self) -> None:
        self._adopt(*self._create_clients())

    def _check_server_version(self, client: Any) -> None:
        """Refuse a server older than :data:`MIN_REDIS_VERSION`, naming both versions."""
        import redis.exceptions

        try:
            info = client.info("server")
        except redis.exceptions.ResponseError:
            return  # INFO renamed or disabled (or a test double): nothing to check
        versions = [info.get("redis_version")] if "redis_version" in info else [
            node.get("redis_version") for node in info.values() if isinstance(node, dict)]
        for version in filter(None, versions):
            found = tuple(int(part) for part in re.findall(r"\d+", str(version))[:2])
            if found < MIN_REDIS_VERSION:
                raise exception.ConfigurationError(
                    f"{self.name}: redis at {self.endpoint} is version {version}; kvs needs "
                    f"{'.'.join(map(str, MIN_REDIS_VERSION))} or newer (fractional BLPOP "
                    f"timeouts, TIME before writes in scripts)", option="backend",
                    host=self.endpoint)

    @property
    def reader(self) -> Any:
        """The client that serves plain reads (the master unless configured otherwise)."""
        if self._reader is None:
            self.client  # noqa: B018  (builds both)
        return self._reader

    def _script(self, name: str) -> Any:
        if not self._version_checked:
            # Lease calls are what need a recent server: check before the first.
            self._check_server_version(self.client)
            self._version_checked = True
        return self._scripts[name]

    def _eval(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run the Lua script ``name`` on the writer (this thread's own connection
        when pinned); a script the server lost is loaded by redis-py's Script."""
        script = self._script(name)
        if self._pinned:
            try:
                return self._on_writer.run("EVALSHA", script.sha, len(keys),
                                      *keys, *args)
            except self._no_script:
                pass  # SCRIPT FLUSH, a restart or a failover: Script loads it, then runs it
        return script(keys=keys, args=args)

    def _write_script(self, key: str, name: str, keys: list[str], args: list[Any]) -> Any:
        """A data-writing script: ``_eval``, or with ``wait_replicas`` through _write."""
        if not self.wait_replicas:
            return self._eval(name, keys, args)
        script = self._script(name)
        return self._write(key, lambda client: script(keys=keys, args=args, client=client))

    # -- errors -------------------------------------------------------------

    def translate_error(self, exc: Exception, operation: str,
                        args: tuple[Any, ...]) -> BaseException | None:
        """BackendUnavailable for a redis-py error (see :mod:`kvs.errors`); else None."""
        if isinstance(exc, exception.KVSError) or not self._is_redis_error(exc):
            return None
        return self._unavailable(_OPERATION_WORDS.get(operation, "request"), exc)

    @staticmethod
    def _is_redis_error(exc: BaseException) -> bool:
        import redis.exceptions

        return isinstance(exc, redis.exceptions.RedisError)

    def _secrets(self) -> list[str]:
        return [str(self.options[name]) for name, spec in self.arguments.items()
                if spec.secret and self.options.get(name)]

    def _unavailable(self, operation: str, exc: BaseException) -> exception.BackendUnavailable:
        """BackendUnavailable naming the server and the cause, with secrets scrubbed."""
        import redis.exceptions

        reason = str(exc) or type(exc).__name__
        for secret in self._secrets():
            reason = reason.replace(secret, "***")
        if isinstance(exc, redis.exceptions.AuthenticationError) or "WRONGPASS" in reason \
                or "NOAUTH" in reason:
            url_user = None
            if self.options.get("url"):
                from urllib.parse import unquote, urlsplit

                url_user = unquote(urlsplit(str(self.options["url"])).username or "") or None
            user = self.options.get("username") or url_user or "default"
            what = f"authentication as user {user!r} failed"
        elif isinstance(exc, redis.exceptions.TimeoutError):
            what = "timed out"
        elif isinstance(exc, redis.exceptions.ConnectionError):
            what = "is unreachable"
        else:
            what = "refused the command"
        return exception.BackendUnavailable(
            f"{self.name}: redis at {self.endpoint} {what} ({operation}: "
            f"{type(exc).__name__}: {reason})", host=self.endpoint)

    # -- writes with optional WAIT ------------------------------------------

    def _write(self, key: str, command: Callable[[Any], Any]) -> Any:
        """Run one write command; with ``wait_replicas``, WAIT for the replicas after it.

        WAIT counts the writes of its own connection, so it is pipelined with
        the write on the same connection.
        """
        if not self.wait_replicas:
            return command(self.client)
        pipe = self.client.pipeline(transaction=False)
        command(pipe)
        pipe.wait(self.wait_replicas, milliseconds(self.options["wait_timeout"]))
        result, acknowledged = pipe.execute()
        if acknowledged < self.wait_replicas:
            raise exception.BackendUnavailable(
                f"{self.name}: write to key {key!r} reached the master at {self.endpoint} but "
                f"only {acknowledged} of {self.wait_replicas} replicas acknowledged it within "
                f"{self.options['wait_timeout']} s; a failover now could lose it",
                host=self.endpoint, key=key)
        return result

    # -- plain data ---------------------------------------------------------

    @translated
    def get_serialized(self, key: str) -> bytes | NoValue:  # type: ignore[override]
        near = self._near
        if near is not None and key not in self._held_keys:
            return self._near_get(near, key)
        reader = self.reader
        if self._pinned:
            value = self._on_reader.run("GET", self.value_name(key))
        else:
            value = reader.get(self.value_name(key))
        if value is None:
            self._refuse_old_layout([key])
            return NO_VALUE
        return value  # type: ignore[no-any-return]

    def _near_get(self, near: NearCache, key: str) -> bytes | NoValue:
        name = self.value_name(key)
        hit = near.get(name)
        if hit is not None:
            return hit
        epoch = near.epoch
        value = self.reader.get(name)
        if value is None:
            self._refuse_old_layout([key])
            return NO_VALUE
        near.put(name, value, epoch)
        return value  # type: ignore[no-any-return]

    @translated
    def get_serialized_multi(self, keys: Sequence[str]) -> list[bytes | NoValue]:  # type: ignore[override]
        if not keys:
            return []
        near = self._near
        if near is not None:
            return self._near_get_multi(near, keys)
        values = self._mget(self._value_names(keys))
        if not all(values) and None in values:  # all(): see KeyValueStore.get_multi
            self._refuse_old_layout([key for key, value in zip(keys, values) if value is None])
            return [NO_VALUE if value is None else value for value in values]
        return values

    def _value_names(self, keys: Sequence[str]) -> list[str]:
        """value_name of every key; in C for the common case.

        Keys that hash_tag() or value_name() would escape (and empty ones)
        take the function; the others are ``{key}`` (hash tags) or the key
        itself, made by one join and one split instead of a call per key (a
        NUL cannot be in such a key, or the split would cut it).
        """
        name = self.value_name
        try:
            joined = "".join(keys)
        except TypeError:  # not all str: the function says what is wrong
            return [name(key) for key in keys]
        if "\0" in joined or "%" in joined or "" in keys:
            return [name(key) for key in keys]
        if name is hash_tag:
            if "{" in joined or "}" in joined:
                return [name(key) for key in keys]
            return ("{" + "}\0{".join(keys) + "}").split("\0")
        if name is value_name and "{" not in joined:
            return list(keys)
        return [name(key) for key in keys]

    def _near_get_multi(self, near: NearCache, keys: Sequence[str]) -> list[bytes | NoValue]:
        value_name = self.value_name
        names = [value_name(key) for key in keys]
        hits = near.get_many(names)
        held = self._held_keys
        if held:
            hits = [None if key in held else hit for key, hit in zip(keys, hits)]
        fetch = [index for index, hit in enumerate(hits) if hit is None]
        found: list[bytes | NoValue] = hits  # type: ignore[assignment]
        if fetch:
            epoch = near.epoch
            values = self._mget([names[index] for index in fetch])
            missing = [keys[index] for index, value in zip(fetch, values) if value is None]
            if missing:
                self._refuse_old_layout(missing)
            filled: list[tuple[str, bytes]] = []
            for index, value in zip(fetch, values):
                if value is None:
                    found[index] = NO_VALUE
                else:
                    found[index] = value
                    filled.append((names[index], value))
            near.put_many(filled, epoch)
        return found

    def _near_client(self) -> Any:
        """A client holding one connection of the pool, for the near cache's thread."""
        import redis

        return redis.Redis(connection_pool=self.client.connection_pool,
                           single_connection_client=True)

    def _forget_near(self, keys: Sequence[str]) -> None:
        """Drop this process's copies of ``keys`` (it wrote them)."""
        if self._near is not None:
            name = self.value_name
            self._near.invalidate(name(key) for key in keys)

    def _hold(self, key: str, token: str) -> None:
        """Reads of ``key`` go to the server while this process holds its lease."""
        if self._near is not None and token not in self._held_tokens:
            if len(self._held_tokens) > 10_000:  # leases never released: forget the oldest
                self._unhold(next(iter(self._held_tokens)))
            self._held_tokens[token] = key
            self._held_keys[key] = self._held_keys.get(key, 0) + 1

    def _unhold(self, token: str) -> None:
        if self._near is None:
            return
        key = self._held_tokens.pop(token, None)
        if key is not None:
            left = self._held_keys.get(key, 1) - 1
            if left > 0:
                self._held_keys[key] = left
            else:
                self._held_keys.pop(key, None)

    def _refuse_old_layout(self, missing: Sequence[str]) -> None:
        """A value missing here but present under its 0.1 name ``{T}`` means processes
        of both layouts share the server: reading "missing" and writing would fork the
        value (and lose updates), so refuse loudly instead.  Costs one EXISTS per miss."""
        if self.value_name is hash_tag:
            return
        if self.reader.exists(*[hash_tag(key) for key in missing]):
            raise exception.ConfigurationError(
                f"redis at {self.endpoint} holds values of kvs 0.1, named {{key}}, where "
                f"this process names them as dogpile.cache.redis does: set the backend "
                f"argument hash_tags = true in every process of this store (or move the "
                f"data), see doc/backends/redis.md", option="hash_tags", host=self.endpoint)

    def _mget(self, names: list[str]) -> list[Any]:
        reader = self.reader  # connects on first use
        if self._pinned:  # on kvs's own connections (see redis_connections)
            return self._on_reader.run("MGET", *names)  # type: ignore[no-any-return]
        return reader.mget(names)  # type: ignore[no-any-return]

    @translated
    def plain_set(self, key: str, value: bytes, ttl: float | None) -> None:
        self.check_size(key, value)
        name = self.value_name(key)
        try:
            if self._pinned and not self.wait_replicas:
                self.client  # noqa: B018  (builds it, and the connection cache)
                if ttl is None:
                    self._on_writer.run("SET", name, value)
                else:
                    self._on_writer.run("SET", name, value, "PX", milliseconds(ttl))
            elif ttl is None:
                self._write(key, lambda client: client.set(name, value))
            else:
                self._write(key, lambda client: client.set(name, value, px=milliseconds(ttl)))
        finally:
            self._forget_near([key])

    @translated
    def plain_set_multi(self, mapping: Mapping[str, bytes], ttl: float | None) -> None:
        self.check_sizes(mapping)
        if not mapping:
            return
        first = next(iter(mapping))
        name = self.value_name
        names = {name(key): value for key, value in mapping.items()}
        try:
            if self._pinned and not self.wait_replicas:
                if ttl is None:
                    self.client  # noqa: B018  (builds it, and the connection cache)
                    self._on_writer.run("MSET", *[part for item in names.items()
                                                  for part in item])
                else:
                    self._eval("SET_MULTI_PX", list(names),
                               [milliseconds(ttl), *names.values()])
            elif ttl is None:
                self._write(first, lambda client: client.mset(names))
            else:
                script = self._script("SET_MULTI_PX")
                self._write(first, lambda client: script(
                    keys=list(names), args=[milliseconds(ttl), *names.values()],
                    client=client))
        finally:
            self._forget_near(list(mapping))

    @translated
    def plain_delete(self, key: str) -> bool:
        name = self.value_name(key)
        request = self._request_id()
        try:
            if not request:
                return bool(self._write(key, lambda client: client.delete(name)))
            script = self._script("DELETE_ONCE")
            done = hash_tag(key) + ":done"
            return bool(self._write(key, lambda client: script(
                keys=[name, done], args=[request, self.DONE_TTL_MS], client=client)))
        finally:
            self._forget_near([key])

    def _request_id(self) -> str:
        """A fresh id for one write request when redis-py may resend it, else ''."""
        return os.urandom(8).hex() if self.options["retries"] else ""

    @translated
    def delete_multi(self, keys: Sequence[str]) -> None:  # type: ignore[override]
        if keys:
            name = self.value_name
            names = [name(key) for key in keys]
            try:
                self._write(keys[0], lambda client: client.delete(*names))
            finally:
                self._forget_near(keys)

    # -- leases -------------------------------------------------------------

    @staticmethod
    def _lease_ms(ttl: float | None) -> int:
        return 0 if ttl is None else milliseconds(ttl)

    @translated
    def acquire_lease(self, key: str, token: str, ttl: float | None) -> int | None:
        tag = hash_tag(key)
        fence = self._eval("ACQUIRE", [tag + ":lease", tag + ":fence"],
                           [token, self._lease_ms(ttl)])
        if fence is None:
            return None
        self._hold(key, token)
        return int(fence)

    @translated
    def acquire_lease_and_get(
        self, key: str, token: str, ttl: float | None
    ) -> tuple[int | None, bytes | NoValue]:
        tag = hash_tag(key)
        reply = self._eval("ACQUIRE_AND_GET", [tag + ":lease", tag + ":fence",
                                               self.value_name(key)],
                           [token, self._lease_ms(ttl)])
        if reply is None:
            return None, NO_VALUE
        self._hold(key, token)
        fence, value = reply[0], (reply[1] if len(reply) > 1 else None)
        if value is None:
            try:
                self._refuse_old_layout([key])
            except exception.ConfigurationError:
                self.release_lease(key, token)  # granted above: give it back
                raise
            return int(fence), NO_VALUE
        return int(fence), value

    @translated
    def release_lease(self, key: str, token: str) -> bool:
        tag = hash_tag(key)
        try:
            return bool(self._eval(
                "RELEASE", [tag + ":lease", tag + ":signal", tag + ":done", tag + ":fence",
                            self.value_name(key), tag + ":waiters", tag + ":queue"],
                [token, self.SIGNAL_TTL_MS, self._request_id(), self.DONE_TTL_MS]))
        finally:
            self._unhold(token)

    @translated
    def extend_lease(self, key: str, token: str, ttl: float) -> bool:
        tag = hash_tag(key)
        return bool(self._script("EXTEND")(
            keys=[tag + ":lease", tag + ":done"],
            args=[token, milliseconds(ttl), self._request_id(), self.DONE_TTL_MS]))

    @translated
    def persist_lease(self, key: str, token: str) -> bool:
        return bool(self._script("PERSIST")(keys=[hash_tag(key) + ":lease"], args=[token]))

    @translated
    def fenced_set(self, key: str, value: bytes, token: str, ttl: float | None) -> Fenced:
        self.check_size(key, value)
        tag = hash_tag(key)
        try:
            written = self._write_script(
                key, "FENCED_SET", [tag + ":lease", self.value_name(key), tag + ":done"],
                [token, value, self._lease_ms(ttl), self._request_id(), self.DONE_TTL_MS])
        finally:
            self._forget_near([key])
        return Fenced.WRITTEN if written else Fenced.LEASE_LOST

    @translated
    def fenced_set_and_release(self, key: str, value: bytes, token: str,
                               ttl: float | None) -> Fenced:
        self.check_size(key, value)
        tag = hash_tag(key)
        try:
            written = self._write_script(
                key, "FENCED_SET_AND_RELEASE",
                [tag + ":lease", self.value_name(key), tag + ":signal", tag + ":done",
                 tag + ":fence", tag + ":waiters", tag + ":queue"],
                [token, value, self._lease_ms(ttl), self.SIGNAL_TTL_MS, self._request_id(),
                 self.DONE_TTL_MS])
        finally:
            self._forget_near([key])
            self._unhold(token)
        return Fenced.WRITTEN if written else Fenced.LEASE_LOST

    @translated
    def fenced_delete(self, key: str, token: str) -> Fenced:
        tag = hash_tag(key)
        script = self._script("FENCED_DELETE")
        request = self._request_id()
        try:
            outcome = self._write(key, lambda client: script(
                keys=[tag + ":lease", self.value_name(key), tag + ":done"],
                args=[token, request, self.DONE_TTL_MS],
                client=client))
        finally:
            self._forget_near([key])
        return {1: Fenced.WRITTEN, 2: Fenced.MISSING}.get(int(outcome), Fenced.LEASE_LOST)

    @translated
    def lease_info(self, key: str) -> LeaseInfo | None:
        tag = hash_tag(key)
        reply = self._script("LEASE_INFO")(keys=[tag + ":lease", tag + ":fence"])
        if reply is None:
            return None
        token, pttl, fence = reply
        if isinstance(token, bytes):
            token = token.decode("utf-8")
        remaining = None if int(pttl) < 0 else int(pttl) / 1000
        return LeaseInfo(token=token, fence=int(fence), remaining=remaining)

    @translated
    def break_lease(self, key: str) -> bool:
        tag = hash_tag(key)
        return bool(self._script("BREAK")(
            keys=[tag + ":lease", tag + ":signal", tag + ":fence", self.value_name(key),
                  tag + ":waiters", tag + ":queue"], args=["", self.SIGNAL_TTL_MS]))

    @translated
    def wait_for_release(self, key: str, timeout: float) -> None:
        """Block on the key's signal list until a release, the lease's expiry or ``timeout``.

        Each BLPOP is capped below the socket timeout; an early return is fine
        (the caller retries the acquire).
        """
        if self.options["max_connections"] is not None:
            # A bounded pool: a BLPOP would hold a connection for the whole
            # wait, and enough waiters would leave the holder none.  Poll.
            time.sleep(max(0.0, min(timeout, 0.005)))
            return
        tag = hash_tag(key)
        left_ms = self.client.pttl(tag + ":lease")
        if left_ms == -2:  # already free
            return
        limit = min(timeout, self._blocking_cap)
        if left_ms > 0:  # a release wakes us; an expiry does not, so stop there
            limit = min(limit, left_ms / 1000)
        if limit < 0.001:
            return
        # BLPOP 0 would block forever: the limit is always >= 1 ms here.
        self.client.blpop([tag + ":signal"], timeout=round(limit, 3))

    #: Whether waiters queue and are granted the lease at release (see
    #: HAND_OVER).  Off on Redis Cluster, whose scripts must name every key
    #: they touch (a waiter's grant list is named by the token the release
    #: pops).
    grants_on_release: ClassVar[bool] = True

    def _queue_keys(self, key: str, token: str) -> list[str]:
        tag = hash_tag(key)
        return [tag + ":lease", tag + ":fence", self.value_name(key), tag + ":waiters",
                tag + ":queue", tag + ":queue:" + token]

    @translated
    def wait_for_grant(self, key: str, token: str, ttl: float | None, timeout: float,
                       read_value: bool = False,
                       first: bool = False) -> tuple[int, bytes | NoValue] | None:
        """Take the lease if free, else queue for it and block until a release
        hands it over, the holder's lease expires, or ``timeout``.

        Returns (fence, stored value) when this token now holds the lease (the
        value only with ``read_value``, else NO_VALUE), ``None`` when it does
        not yet (the caller calls again, which re-queues).  ``first``: the
        first call of an acquire.  If the last acquire of this key here had to
        queue, it queues and blocks in one write (see _enqueue_and_block);
        if not, it tries a plain ACQUIRE first and queues only if that fails.
        """
        contended = self._contended
        if first and key not in contended:
            # Not contended when last locked here: most likely free, so the first
            # try is the plain ACQUIRE (three keys fewer and no queue clean-up,
            # a tenth of an uncontended update()); only a key found leased queues.
            taken = self._acquire_first(key, token, ttl, read_value)
            if taken is not None:
                return taken
            first = False
        limit = min(timeout, self._blocking_cap)
        # The entry outlives this wait by a margin, so a re-queue finds it.
        window_ms = milliseconds(self._blocking_cap + 0.5)
        keys = self._queue_keys(key, token)
        args = [token, self._lease_ms(ttl), window_ms, "1" if read_value else "0"]
        bounded = self.options["max_connections"] is not None
        if first and self._pinned and limit >= 0.001:
            sent = self._enqueue_and_block(keys, args, round(limit, 3))
            if sent is not None:
                reply, popped = sent
                if int(reply[0]):  # free after all (its element was popped)
                    return self._taken(key, token, reply, read_value)
                if popped is None:
                    return None  # blocked the whole limit: call again (sees the lease's PTTL)
                return self._grant_popped(key, token, popped, read_value)
        reply = self._eval("ENQUEUE", keys, [*args, "0"])
        if int(reply[0]):
            return self._taken(key, token, reply, read_value)
        if len(contended) >= 4096:  # keys contended once, maybe long ago: start afresh
            contended.clear()
        contended[key] = None
        left_ms = int(reply[1])
        if left_ms > 0:  # a release hands over; an expiry does not, so look again then
            limit = min(limit, left_ms / 1000)
        if bounded:
            # A bounded pool: never hold a connection in BLPOP (see wait_for_release).
            time.sleep(max(0.0, min(limit, 0.005)))
            return None
        if limit < 0.001:
            return None
        if self._pinned:
            popped = self._on_writer.run("BLPOP", keys[5], round(limit, 3))
        else:
            popped = self.client.blpop([keys[5]], timeout=round(limit, 3))
        if popped is None:
            return None
        return self._grant_popped(key, token, popped[1], read_value)

    def _acquire_first(self, key: str, token: str, ttl: float | None,
                       read_value: bool) -> tuple[int, bytes | NoValue] | None:
        """ACQUIRE (or ACQUIRE_AND_GET): the grant, or None when the key is leased."""
        if read_value:
            fence, value = self.acquire_lease_and_get(key, token, ttl)
            return None if fence is None else (fence, value)
        taken = self.acquire_lease(key, token, ttl)
        return None if taken is None else (taken, NO_VALUE)

    def _enqueue_and_block(self, keys: list[str], args: list[Any],
                           block_s: float) -> tuple[Any, Any] | None:
        """ENQUEUE, and a BLPOP of this waiter's grant list, sent in one write.

        Under contention a waiter always queues, so sending the BLPOP after
        the ENQUEUE's reply costs a round trip (and a wake-up of the server
        and of the waiter) per hand-off for nothing.  ENQUEUE is told that a
        BLPOP follows (ARGV[5]): a lease taken at once leaves an element for
        it, so it never blocks then.  The BLPOP's limit cannot see the
        holder's PTTL (it is sent before ENQUEUE answers), so a holder that
        died is noticed up to that limit (at most half the socket timeout)
        after its lease ran out, not at once; the next call sees the PTTL.

        Returns (ENQUEUE's reply, BLPOP's element or None), or None when the
        script is not loaded (the caller sends ENQUEUE alone, which loads it).
        A reply lost on the way is the lock's business, as for every call:
        it calls again with the same token, and ENQUEUE recognises a grant.
        """
        script = self._script("ENQUEUE")
        try:
            reply, popped = self._on_writer.run_many(
                ("EVALSHA", script.sha, len(keys), *keys, *args, "1"),
                ("BLPOP", keys[5], block_s))
        except self._no_script:
            return None  # run_many dropped the connection, and with it the BLPOP
        return reply, (None if popped is None else popped[1])

    def _taken(self, key: str, token: str, reply: Any,
               read_value: bool) -> tuple[int, bytes | NoValue]:
        """ENQUEUE took the lease at once: the key is not contended (any more)."""
        self._contended.pop(key, None)
        value = reply[1] if len(reply) > 1 and reply[1] is not None else NO_VALUE
        return self._granted(key, token, int(reply[0]), value, read_value)

    def _grant_popped(self, key: str, token: str, element: bytes,
                      read_value: bool) -> tuple[int, bytes | NoValue]:
        """A grant a release pushed: ``<fence>:v:<value>`` or ``<fence>:n:``."""
        fence, kind, value = bytes(element).split(b":", 2)
        return self._granted(key, token, int(fence), value if kind == b"v" else NO_VALUE,
                             read_value)

    def _granted(self, key: str, token: str, fence: int, value: bytes | NoValue,
                 read_value: bool) -> tuple[int, bytes | NoValue]:
        """A grant, after the check that a missing value is not under its 0.1 name
        (as acquire_lease_and_get does; the lease is given back if it is)."""
        self._hold(key, token)
        if not read_value:
            return fence, NO_VALUE
        if value is NO_VALUE:
            try:
                self._refuse_old_layout([key])
            except exception.ConfigurationError:
                self.release_lease(key, token)
                raise
        return fence, value

    @translated
    def cancel_grant(self, key: str, token: str,
                     ttl: float | None) -> tuple[int, bytes | NoValue] | None:
        """Leave the queue; if the lease was handed to ``token`` meanwhile, return
        the grant (the caller holds the lease then, for ``ttl`` from now), else
        ``None``."""
        reply = self._script("CANCEL")(keys=self._queue_keys(key, token),
                                       args=[token, self._lease_ms(ttl)])
        if reply is None:
            return None
        self._hold(key, token)
        return int(reply[0]), (reply[1] if len(reply) > 1 and reply[1] is not None
                               else NO_VALUE)

    @translated
    def ping(self) -> None:
        self.client.ping()
