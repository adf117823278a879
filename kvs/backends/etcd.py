"""``kvs.etcd``: fenced leases on an etcd v3 cluster, correct across machine failures.

Why etcd
--------
Every other kvs backend keeps a lease in one server's memory (Redis, memcached)
or one file (SQLite).  Redis replication is asynchronous, so a failover can
forget a lease or a write the old master acknowledged.  etcd commits every
write through Raft to a majority before it answers, and serves linearizable
reads, so a lease granted here survives a leader crash, a member crash and a
partition: the correctness-grade choice across machines (doc/backends/etcd.md).

Keys in etcd
------------
For every kvs key ``K`` (the store's mangled key), under ``namespace`` (default
``kvs/``):

=====================  =====================================================
``<ns>v/K``            the value (the store's bytes as given)
``<ns>l/K``            the lease: the holder's token, bound to an etcd lease
``<ns>d/K``            the done marker: the id of the last write request,
                       so a resent request recognises its own first run
=====================  =====================================================

The fence is the lease key's ``create_revision``: the revision of the Raft
entry that granted it.  Revisions are cluster-wide, totally ordered and never
go back, not across leader changes nor restarts, so fences strictly increase
per key with no clock involved anywhere (no other backend can say that).

Every lease call is one etcd transaction (``/v3/kv/txn``) that compares the
lease key's value (the token) and, for writes made while holding it, its
``mod_revision``: each fenced write also touches the lease key, so a delayed
or duplicated request (etcd may apply a request that timed out, once a leader
returns) finds the revision moved on and changes nothing.

Talking to the cluster
----------------------
etcd3gw (OpenStack's etcd client, over etcd's JSON gateway) builds the HTTP
session per member (TLS files, URL, API path).  It talks to one host, so this
module keeps the endpoint list: a member that refuses the connection is
skipped at once; a request whose reply is lost (the member died mid-call) is
resent to the next member, which is safe because every request here either
is a read or recognises its own earlier success; a member that does not
answer within ``timeout`` (no quorum: etcd would block for seconds) fails the
call with ``BackendUnavailable`` naming it, and the next call starts at the
next member.  Reads are always linearizable: a serializable read on a member
cut off from the others returns stale data at once.

Thread-safe: the session's connection pool is shared by threads; per-token
state lives in dicts updated atomically; a fork builds a new session.
"""

from __future__ import annotations

import base64
import json
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from dogpile.cache.api import NO_VALUE, NoValue

from kvs import exception
from kvs.backends.base import (
    OPERATION_WORDS,
    ArgumentSpec,
    Fenced,
    LeaseBackend,
    LeaseInfo,
    parse_node,
    require_client,
)
from kvs.errors import translated

#: etcd's largest request is 1.5 MiB by default (--max-request-bytes); a value
#: must leave room for its key and the transaction around it.
VALUE_LIMIT = 1024 * 1024

#: etcd's default --max-txn-ops: longer multi-key calls are split.
MAX_TXN_OPS = 128

#: Bytes of keys and values one set_multi transaction carries (a single value
#: may still go alone up to VALUE_LIMIT): more would pass etcd's request limit.
TXN_BYTES = VALUE_LIMIT

#: How long a pooled etcd lease may be handed to new leases and values after
#: it was granted.  Granted for ceil(TTL) + 1 seconds, so whatever is bound to
#: it lives at least the TTL asked for and at most ceil(TTL) + 1 seconds.
LEASE_REUSE = 0.9

#: Lifetime of the done markers' etcd lease (they only need to outlive the
#: resend of a request, which happens within ``timeout``).
DONE_LEASE_TTL = 60

def _b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def _parse_endpoint(text: str) -> tuple[str, str, int]:
    """``host:port``, ``[v6]:port`` or ``http(s)://host:port`` to (scheme, host, port)."""
    scheme = ""
    rest = text.strip()
    if "://" in rest:
        scheme, _, rest = rest.partition("://")
        rest = rest.rstrip("/")
        if scheme not in ("http", "https"):
            raise exception.ConfigurationError(
                f"backend argument 'endpoints' entries must be host:port or "
                f"http(s)://host:port, got {text.strip()!r}", option="endpoints")
    host, port = parse_node("endpoints", rest)
    return scheme, host, port


class _Unknown(Exception):
    """A request was sent and its outcome is unknown (reply lost or refused mid-way)."""


class _Refused(Exception):
    """A request that etcd (or the network) refused before anything was applied."""


class _EtcdError(Exception):
    """etcd answered with an error: ``code`` is the gRPC status code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


# gRPC codes in the gateway's error bodies.
_GRPC_NOT_FOUND = 5
_GRPC_UNAVAILABLE = 14
_GRPC_UNAUTHENTICATED = 16
_GRPC_DEADLINE = 4


class EtcdBackend(LeaseBackend):
    """``kvs.etcd``: an etcd v3 cluster.  See ``doc/backends/etcd.md`` for the arguments."""

    name = "kvs.etcd"
    backend_value_limit = VALUE_LIMIT

    arguments: ClassVar[dict[str, ArgumentSpec]] = {
        **LeaseBackend.arguments,
        "endpoints": ArgumentSpec("list", default=None),
        "username": ArgumentSpec("str"),
        "password": ArgumentSpec("str", secret=True),
        "ssl_ca_certs": ArgumentSpec("str"),
        "ssl_certfile": ArgumentSpec("str"),
        "ssl_keyfile": ArgumentSpec("str"),
        # Seconds every call may take, all failover included.
        "timeout": ArgumentSpec("float", default=2.0, minimum=0.01),
        "connect_timeout": ArgumentSpec("float", default=0.5, minimum=0.001),
        "namespace": ArgumentSpec("str", default="kvs/"),
        "max_connections": ArgumentSpec("int", default=32, minimum=1),
    }

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        require_client(self.name, "etcd3gw", "etcd", "etcd3gw")
        super().__init__(arguments)
        options = self.options
        if not options["endpoints"]:
            raise exception.ConfigurationError(
                "backend kvs.etcd needs the argument 'endpoints' (host:port, comma-separated)",
                option="endpoints")
        self._tls = self._check_tls()
        self.endpoints: list[tuple[str, str, int]] = []
        for text in options["endpoints"]:
            scheme, host, port = _parse_endpoint(text)
            if scheme == "http" and self._tls:
                raise exception.ConfigurationError(
                    f"backend argument 'endpoints' has an http:// entry ({host}:{port}) "
                    f"but TLS arguments are set: kvs.etcd does not fall back to plain HTTP",
                    option="endpoints")
            self.endpoints.append((scheme or ("https" if self._tls else "http"), host, port))
        if (options["username"] is None) != (options["password"] is None):
            missing = "password" if options["password"] is None else "username"
            raise exception.ConfigurationError(
                f"backend kvs.etcd: username and password go together; {missing} is missing",
                option=missing)
        self.timeout: float = options["timeout"]
        self._connect_timeout: float = min(options["connect_timeout"], self.timeout)
        namespace = options["namespace"]
        self._ns_value = namespace + "v/"
        self._ns_lease = namespace + "l/"
        self._ns_done = namespace + "d/"
        self._current = 0  # index of the member calls go to first
        self._clients: list[Any] = []
        self._pid = -1
        self._setup_lock = threading.Lock()
        self._auth_token: str | None = None
        # Pooled etcd leases by whole-second TTL: (lease id, monotonic time the grant was sent).
        self._lease_pool: dict[int, tuple[str, float]] = {}
        self._done_lease: tuple[str, float] | None = None
        # Per held token: the lease key's (create_revision, mod_revision, etcd lease id).
        self._held: dict[str, tuple[int, int, str]] = {}
        # Per held token: when the lease ends as asked for (monotonic; None: never).
        # extend_lease adds to this, never to the padded etcd TTL, so padding
        # does not pile up over many extensions.
        self._ends: dict[str, float | None] = {}
        self._waits = threading.local()

    def _check_tls(self) -> bool:
        options = self.options
        given = [name for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
                 if options[name] is not None]
        if (options["ssl_certfile"] is None) != (options["ssl_keyfile"] is None):
            missing = "ssl_keyfile" if options["ssl_keyfile"] is None else "ssl_certfile"
            raise exception.ConfigurationError(
                f"backend kvs.etcd: ssl_certfile and ssl_keyfile go together; {missing} "
                f"is missing", option=missing)
        for name in given:
            if not os.path.isfile(options[name]):
                raise exception.ConfigurationError(
                    f"backend argument {name!r}: no such file {options[name]!r}", option=name)
        return bool(given) or any(str(text).strip().startswith("https://")
                                  for text in options["endpoints"] or ())

    # -- connection -----------------------------------------------------------

    def _describe(self, index: int) -> str:
        _scheme, host, port = self.endpoints[index]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _session_clients(self) -> list[Any]:
        """One etcd3gw client per member, sharing one HTTP session (rebuilt after a fork)."""
        if self._pid == os.getpid():
            return self._clients
        with self._setup_lock:
            if self._pid != os.getpid():
                # A fork keeps the auth token (a string etcd still honours) but
                # never the parent's sockets.
                self._clients = self._build_clients()
                self._pid = os.getpid()
        return self._clients

    def _build_clients(self) -> list[Any]:
        import requests
        import requests.adapters
        from etcd3gw.client import Etcd3Client

        options = self.options
        session = requests.Session()
        size = options["max_connections"]
        adapter = requests.adapters.HTTPAdapter(pool_connections=len(self.endpoints),
                                                pool_maxsize=size, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.trust_env = False  # no proxies from the environment between us and etcd
        if self._tls:
            # Verify always: with the given CA, else the system's (fails closed).
            session.verify = options["ssl_ca_certs"] or True
            if options["ssl_certfile"] is not None:
                session.cert = (options["ssl_certfile"], options["ssl_keyfile"])
        return [Etcd3Client(host=host, port=port, protocol=scheme, session=session,
                            api_path="/v3/", timeout=self.timeout)
                for scheme, host, port in self.endpoints]

    def _post_once(self, index: int, path: str, body: Mapping[str, Any],
                   read_timeout: float) -> dict[str, Any]:
        """POST to one member.  Raises _Refused (nothing applied), _Unknown or _EtcdError."""
        import requests

        client = self._session_clients()[index]
        headers = {"Authorization": self._auth_token} if self._auth_token else None
        try:
            response = client.session.post(
                client.get_url(path), data=json.dumps(body), headers=headers,
                timeout=(self._connect_timeout, read_timeout))
        except requests.exceptions.ConnectTimeout as exc:
            raise _Refused(f"connect timed out: {type(exc).__name__}") from None
        except requests.exceptions.SSLError as exc:
            raise exception.BackendUnavailable(
                f"{self.name}: TLS with etcd at {self._describe(index)} failed "
                f"({_short(exc)})", host=self._describe(index)) from None
        except requests.exceptions.ConnectionError as exc:
            if _never_sent(exc):
                raise _Refused(f"connection refused ({_short(exc)})") from None
            raise _Unknown(f"connection lost ({_short(exc)})") from None
        except requests.exceptions.Timeout:
            raise _Unknown(f"no reply within {read_timeout:.3g} s") from None
        except requests.exceptions.RequestException as exc:
            raise _Unknown(_short(exc)) from None
        if response.status_code == 200:
            return response.json()  # type: ignore[no-any-return]
        try:
            error = response.json()
            code, message = int(error.get("code", 0)), str(error.get("error")
                                                           or error.get("message") or "")
        except ValueError:
            code, message = 0, response.text[:200]
        raise _EtcdError(code, message or f"HTTP {response.status_code}")

    def _call(self, path: str, body: Mapping[str, Any], operation: str,
              key: str | None = None, resend: bool = True) -> dict[str, Any]:
        """One request, failing over between members within ``timeout`` seconds.

        A member that refuses the connection is skipped (nothing was sent).
        After a lost reply the request is resent to the next member only with
        ``resend``: reads, and writes guarded by a compare that recognises
        their own first run (see the module docstring).  An unguarded write
        (a plain ``set``) is never resent: a copy delayed in the cluster could
        otherwise land after a later write and undo it.
        """
        deadline = time.monotonic() + self.timeout
        count = len(self.endpoints)
        start = self._current
        problems: list[str] = []
        reauthenticated = False
        attempt = 0
        while True:
            index = (start + attempt) % count
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                if self.options["username"] is not None and self._auth_token is None:
                    self._authenticate(index, left)
                # Half of what is left, so a member that swallows the request
                # (no quorum, a lost reply) leaves time to resend to another.
                wait = left if count == 1 else max(left / 2, min(left, 0.05))
                reply = self._post_once(index, path, body, wait)
                self._current = index
                return reply
            except _EtcdError as exc:
                if exc.code == _GRPC_UNAUTHENTICATED and not reauthenticated:
                    self._auth_token = None  # expired token: log in again, once
                    reauthenticated = True
                    continue
                if exc.code in (_GRPC_UNAVAILABLE, _GRPC_DEADLINE) or exc.code == 0:
                    # No leader, leader changed, request timed out: maybe applied later.
                    problems.append(f"{self._describe(index)}: {exc}")
                    if not resend:
                        attempt += 1
                        break
                else:
                    raise
            except _Refused as exc:
                problems.append(f"{self._describe(index)}: {exc}")
            except _Unknown as exc:
                problems.append(f"{self._describe(index)}: {exc}")
                if not resend:
                    attempt += 1
                    break
            attempt += 1
            if attempt % count == 0:
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        self._current = (start + max(1, attempt)) % count
        where = self._describe(index) if not problems else problems[-1].split(": ", 1)[0]
        about = f" for key {key!r}" if key is not None else ""
        within = f"within {self.timeout} s" if resend else "(not resent: it may still land)"
        raise exception.BackendUnavailable(
            f"{self.name}: etcd did not answer {operation}{about} {within} "
            f"({'; '.join(problems[-3:]) or 'no member tried'})", host=where, key=key)

    def _authenticate(self, index: int, left: float) -> None:
        options = self.options
        try:
            reply = self._post_once(index, "auth/authenticate",
                                    {"name": options["username"], "password": options["password"]},
                                    left)
        except _EtcdError as exc:
            raise exception.BackendUnavailable(
                f"{self.name}: authentication as user {options['username']!r} at "
                f"{self._describe(index)} failed ({exc})", host=self._describe(index)) from None
        self._auth_token = str(reply["token"])

    # -- errors ---------------------------------------------------------------

    def translate_error(self, exc: Exception, operation: str,
                        args: tuple[Any, ...]) -> BaseException | None:
        if isinstance(exc, exception.KVSError):
            return None
        if isinstance(exc, _EtcdError):
            key = args[0] if args and isinstance(args[0], str) else None
            return exception.BackendUnavailable(
                f"{self.name}: etcd refused {OPERATION_WORDS.get(operation, 'the request')}"
                f" (code {exc.code}: {_scrub(str(exc), self.options.get('password'))})",
                host=self._describe(self._current), key=key)
        return None

    # -- etcd request bodies ----------------------------------------------------

    def _range(self, name: str) -> dict[str, Any]:
        return {"request_range": {"key": _b64(name)}}

    def _put(self, name: str, value: bytes | str, lease: str | None = None,
             ignore_lease: bool = False) -> dict[str, Any]:
        put: dict[str, Any] = {"key": _b64(name), "value": _b64(value)}
        if ignore_lease:
            put["ignore_lease"] = True
        elif lease:
            put["lease"] = lease
        return {"request_put": put}

    def _delete(self, name: str) -> dict[str, Any]:
        return {"request_delete_range": {"key": _b64(name)}}

    @staticmethod
    def _compare_value(name: str, value: str) -> dict[str, Any]:
        return {"key": _b64(name), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}

    @staticmethod
    def _compare_revision(name: str, target: str, revision: int) -> dict[str, Any]:
        field = "create_revision" if target == "CREATE" else "mod_revision"
        return {"key": _b64(name), "target": target, "result": "EQUAL", field: str(revision)}

    def _txn(self, compare: list[Any], success: list[Any], failure: list[Any],
             operation: str, key: str, resend: bool = True) -> dict[str, Any]:
        return self._call("kv/txn", {"compare": compare, "success": success,
                                     "failure": failure}, operation, key, resend)

    # -- etcd leases (TTLs) -------------------------------------------------------

    def _grant(self, seconds: int, operation: str, key: str | None) -> str:
        reply = self._call("lease/grant", {"TTL": str(seconds)}, operation, key)
        return str(reply["ID"])

    def _lease_for(self, ttl: float | None, operation: str, key: str) -> str | None:
        """An etcd lease under which something lives at least ``ttl`` seconds (at most
        one more); ``None`` for no expiry.  Shared by calls for up to LEASE_REUSE s, so
        a busy store grants about one etcd lease per second per TTL, not one per call."""
        if ttl is None:
            return None
        seconds = max(1, math.ceil(ttl)) + 1
        pooled = self._lease_pool.get(seconds)
        now = time.monotonic()
        if pooled is not None and now - pooled[1] < LEASE_REUSE:
            return pooled[0]
        lease = self._grant(seconds, operation, key)
        if len(self._lease_pool) > 64:
            self._lease_pool = {s: p for s, p in self._lease_pool.items()
                                if now - p[1] < LEASE_REUSE}
        self._lease_pool[seconds] = (lease, now)
        return lease

    def _done_lease_id(self, operation: str, key: str) -> str:
        done = self._done_lease
        now = time.monotonic()
        if done is not None and now - done[1] < DONE_LEASE_TTL / 2:
            return done[0]
        lease = self._grant(DONE_LEASE_TTL, operation, key)
        self._done_lease = (lease, now)
        return lease

    def _with_lease(self, ttl: float | None, operation: str, key: str, send: Any) -> Any:
        """``send(lease)``, again with a freshly granted lease if the pooled one is gone
        (a process paused past it): etcd refuses such a request whole, applying nothing."""
        lease = self._lease_for(ttl, operation, key)
        try:
            return send(lease)
        except _EtcdError as exc:
            if exc.code != _GRPC_NOT_FOUND or lease is None:
                raise
            self._lease_pool.clear()
            self._done_lease = None
            return send(self._lease_for(ttl, operation, key))

    # -- plain data -------------------------------------------------------------

    @translated
    def get_serialized(self, key: str) -> bytes | NoValue:  # type: ignore[override]
        reply = self._call("kv/range", {"key": _b64(self._ns_value + key)}, "get", key)
        kvs_ = reply.get("kvs")
        if not kvs_:
            return NO_VALUE
        return _unb64(kvs_[0].get("value"))

    @translated
    def get_serialized_multi(self, keys: Sequence[str]) -> list[bytes | NoValue]:  # type: ignore[override]
        found: list[bytes | NoValue] = []
        for start in range(0, len(keys), MAX_TXN_OPS):
            chunk = keys[start:start + MAX_TXN_OPS]
            reply = self._txn([], [self._range(self._ns_value + key) for key in chunk], [],
                              "get", chunk[0])
            for response in reply.get("responses", ()):
                kvs_ = response.get("response_range", {}).get("kvs")
                found.append(_unb64(kvs_[0].get("value")) if kvs_ else NO_VALUE)
        return found

    @translated
    def plain_set(self, key: str, value: bytes, ttl: float | None) -> None:
        self.check_size(key, value)
        name = self._ns_value + key
        self._with_lease(ttl, "set", key, lambda lease: self._call(
            "kv/put", self._put(name, value, lease)["request_put"], "set", key, resend=False))

    @translated
    def plain_set_multi(self, mapping: Mapping[str, bytes], ttl: float | None) -> None:
        """One transaction (atomic) up to etcd's 128 operations and TXN_BYTES; longer
        ones are split."""
        self.check_sizes(mapping)
        chunks: list[list[tuple[str, bytes]]] = [[]]
        size = 0
        for key, value in mapping.items():
            item = len(self._ns_value) + len(key.encode("utf-8")) + len(value)
            if chunks[-1] and (len(chunks[-1]) >= MAX_TXN_OPS or size + item > TXN_BYTES):
                chunks.append([])
                size = 0
            chunks[-1].append((key, value))
            size += item
        for chunk in chunks:
            if not chunk:
                continue
            self._with_lease(ttl, "set", chunk[0][0], lambda lease, chunk=chunk: self._txn(
                [], [self._put(self._ns_value + key, value, lease) for key, value in chunk],
                [], "set", chunk[0][0], resend=False))

    @translated
    def plain_delete(self, key: str) -> bool:
        reply = self._call("kv/deleterange", {"key": _b64(self._ns_value + key)}, "delete", key,
                           resend=False)
        return int(reply.get("deleted", 0)) > 0

    @translated
    def delete_multi(self, keys: Sequence[str]) -> None:  # type: ignore[override]
        for start in range(0, len(keys), MAX_TXN_OPS):
            chunk = keys[start:start + MAX_TXN_OPS]
            self._txn([], [self._delete(self._ns_value + key) for key in chunk], [],
                      "delete", chunk[0], resend=False)

    @translated
    def ping(self) -> None:
        """A linearizable read: it answers only where a leader and a quorum are."""
        self._call("kv/range", {"key": _b64(self._ns_value + "kvs:ping")}, "ping")

    # -- leases -------------------------------------------------------------------

    def _acquire(self, key: str, token: str, ttl: float | None,
                 read_value: bool) -> tuple[int | None, bytes | NoValue]:
        """Take the lease (or re-take it with the same token: a retry whose first reply
        was lost keeps its fence) in one transaction; optionally read the value too."""
        lease_name = self._ns_lease + key
        value_name = self._ns_value + key
        extra = [self._range(value_name)] if read_value else []

        def send(lease: str | None) -> dict[str, Any]:
            put = self._put(lease_name, token, lease)
            retake = {"request_txn": {
                "compare": [self._compare_value(lease_name, token)],
                "success": [put, self._range(lease_name), *extra],
                "failure": [self._range(lease_name)]}}
            return self._txn([self._compare_revision(lease_name, "CREATE", 0)],
                             [put, self._range(lease_name), *extra], [retake], "lock", key)

        started = time.monotonic()
        reply = self._with_lease(ttl, "lock", key, send)
        responses = reply.get("responses", [])
        if not reply.get("succeeded"):
            inner = responses[0]["response_txn"]
            if not inner.get("succeeded"):
                # Held by another token: remember the revision to watch from.
                self._waits.__dict__[key] = int(reply["header"]["revision"])
                return None, NO_VALUE
            responses = inner.get("responses", [])
        kv = responses[1]["response_range"]["kvs"][0]
        create = int(kv["create_revision"])
        self._note(token, kv)
        self._ends[token] = None if ttl is None else started + ttl
        stored: bytes | NoValue = NO_VALUE
        if read_value:
            values = responses[2].get("response_range", {}).get("kvs")
            stored = _unb64(values[0].get("value")) if values else NO_VALUE
        return create, stored

    @translated
    def acquire_lease(self, key: str, token: str, ttl: float | None) -> int | None:
        return self._acquire(key, token, ttl, False)[0]

    @translated
    def acquire_lease_and_get(
        self, key: str, token: str, ttl: float | None
    ) -> tuple[int | None, bytes | NoValue]:
        return self._acquire(key, token, ttl, True)

    def _holds(self, key: str, token: str, exact: bool) -> list[dict[str, Any]]:
        """The compares that say ``token`` holds ``key``'s lease (with ``exact``: and
        nothing was written under it since our last reply)."""
        lease_name = self._ns_lease + key
        compare = [self._compare_value(lease_name, token)]
        held = self._held.get(token)
        if held is not None:
            compare.append(self._compare_revision(lease_name, "CREATE", held[0]))
            if exact:
                compare.append(self._compare_revision(lease_name, "MOD", held[1]))
        return compare

    def _fenced(self, key: str, token: str, ops: list[Any], operation: str,
                releases: bool = False, touches_lease: bool = False,
                marks_done: bool = False, request: str | None = None) -> tuple[bool, str]:
        """Run ``ops`` only if ``token`` holds the lease, in one transaction.

        Every such transaction leaves ``<request id>:<outcome>`` in the done
        marker (``ops`` may write it themselves, ``marks_done``, to record an
        outcome of their own) and, unless it releases, moves the lease key's
        mod_revision on (``ops`` touch it, or an extra put of the same token
        under the same etcd lease does), so no delayed copy of it or of any
        earlier request can apply after it.  When ``_call`` resends after a
        lost reply, the resend finds either the marker (the first run landed)
        or the lease as before (it did not, and the resend applies it).

        Returns (landed, outcome): outcome is what ``ops`` recorded ("1" when
        they record nothing).
        """
        lease_name = self._ns_lease + key
        done_name = self._ns_done + key
        request = request or self._request_id()
        done_lease = self._done_lease_id(operation, key)
        success = list(ops)
        if not releases and not touches_lease:
            success.append(self._put(lease_name, token, ignore_lease=True))
        if not releases:
            success.append(self._range(lease_name))
        if not marks_done:
            success.append(self._put(done_name, request + ":1", done_lease))
        failure = [self._range(lease_name), self._range(done_name)]
        reply = self._txn(self._holds(key, token, exact=not releases), success, failure,
                          operation, key)
        responses = reply.get("responses", [])
        if reply.get("succeeded"):
            if releases:
                self._forget(token)
            else:
                range_at = len(ops) + (0 if touches_lease else 1)
                self._note(token, responses[range_at]["response_range"]["kvs"][0])
            return True, self._outcome(responses, request) if marks_done else "1"
        lease_kvs = responses[0].get("response_range", {}).get("kvs")
        done_kvs = responses[1].get("response_range", {}).get("kvs")
        ours = bool(lease_kvs) and _unb64(lease_kvs[0].get("value")) == token.encode()
        if done_kvs:
            marker = _unb64(done_kvs[0].get("value")).decode("ascii", "replace")
            if marker.partition(":")[0] == request:
                # _call resent this request after a lost reply: the first run landed.
                if ours and not releases:
                    self._note(token, lease_kvs[0])
                else:
                    self._forget(token)
                return True, marker.partition(":")[2]
        if ours and not releases:
            # Still ours, but our view of its revision is old (a reply of ours was
            # lost after the request landed): adopt the current one, try once more.
            self._note(token, lease_kvs[0])
            return self._fenced(key, token, ops, operation, releases, touches_lease,
                                marks_done, request)
        self._forget(token)
        return False, ""

    def _request_id(self) -> str:
        """A fresh id for one write request (the done marker records it)."""
        return os.urandom(8).hex()

    @staticmethod
    def _outcome(responses: list[Any], request: str) -> str:
        """The outcome a nested transaction of ``ops`` wrote into the done marker."""
        for response in responses:
            inner = response.get("response_txn")
            if inner is not None:
                return "1" if inner.get("succeeded") else "2"
        return "1"

    def _forget(self, token: str) -> None:
        self._held.pop(token, None)
        self._ends.pop(token, None)

    def _note(self, token: str, kv: Mapping[str, Any]) -> None:
        held = self._held
        if len(held) > 10_000:  # tokens of locks never released: forget the oldest
            self._ends.pop(next(iter(held)), None)
            del held[next(iter(held))]
        held[token] = (int(kv["create_revision"]), int(kv["mod_revision"]),
                       str(kv.get("lease", "0")))

    @translated
    def release_lease(self, key: str, token: str) -> bool:
        landed, _outcome = self._fenced(key, token, [self._delete(self._ns_lease + key)],
                                        "unlock", releases=True)
        return landed

    @translated
    def fenced_set(self, key: str, value: bytes, token: str, ttl: float | None) -> Fenced:
        self.check_size(key, value)
        name = self._ns_value + key
        landed, _outcome = self._with_lease(ttl, "set", key, lambda lease: self._fenced(
            key, token, [self._put(name, value, lease)], "set"))
        return Fenced.WRITTEN if landed else Fenced.LEASE_LOST

    @translated
    def fenced_set_and_release(self, key: str, value: bytes, token: str,
                               ttl: float | None) -> Fenced:
        self.check_size(key, value)
        name = self._ns_value + key
        landed, _outcome = self._with_lease(ttl, "set", key, lambda lease: self._fenced(
            key, token, [self._put(name, value, lease), self._delete(self._ns_lease + key)],
            "set", releases=True))
        return Fenced.WRITTEN if landed else Fenced.LEASE_LOST

    @translated
    def fenced_delete(self, key: str, token: str) -> Fenced:
        # A nested transaction deletes the value only if it exists and records
        # which it was in the done marker, so a resend reports the first run's
        # outcome (deleted or missing), not its own.
        name = self._ns_value + key
        done_name = self._ns_done + key
        request = self._request_id()
        done_lease = self._done_lease_id("delete", key)
        nested = {"request_txn": {
            "compare": [{"key": _b64(name), "target": "VERSION", "result": "GREATER",
                         "version": "0"}],
            "success": [self._delete(name), self._put(done_name, request + ":1", done_lease)],
            "failure": [self._put(done_name, request + ":2", done_lease)]}}
        landed, outcome = self._fenced(key, token, [nested], "delete", marks_done=True,
                                       request=request)
        if not landed:
            return Fenced.LEASE_LOST
        return Fenced.WRITTEN if outcome == "1" else Fenced.MISSING

    @translated
    def extend_lease(self, key: str, token: str, ttl: float) -> bool:
        """Bind the lease key to a new etcd lease lasting what was left plus ``ttl``."""
        now = time.monotonic()
        if token in self._ends:
            ends = self._ends[token]
            left = None if ends is None else max(0.0, ends - now)
        else:  # a lease taken through another backend instance: ask etcd
            left = self._remaining(key, token)
        if left is None:  # never expires: stays so (or is not ours, refused below)
            landed, _outcome = self._fenced(key, token, [], "extend lock")
            return landed
        lease = self._grant(max(1, math.ceil(left + ttl)), "extend lock", key)
        lease_name = self._ns_lease + key
        landed, _outcome = self._fenced(key, token, [self._put(lease_name, token, lease)],
                                        "extend lock", touches_lease=True)
        if landed:
            self._ends[token] = now + left + ttl
        return landed

    def _remaining(self, key: str, token: str) -> float | None:
        reply = self._call("kv/range", {"key": _b64(self._ns_lease + key)}, "extend lock", key)
        kvs_ = reply.get("kvs")
        if not kvs_ or _unb64(kvs_[0].get("value")) != token.encode():
            return 0.0
        lease = str(kvs_[0].get("lease", "0"))
        if lease == "0":
            return None
        alive = self._call("lease/timetolive", {"ID": lease}, "extend lock", key)
        return max(0.0, float(alive.get("TTL", 0)))

    @translated
    def persist_lease(self, key: str, token: str) -> bool:
        landed, _outcome = self._fenced(key, token, [self._put(self._ns_lease + key, token)],
                                        "extend lock", touches_lease=True)
        if landed:
            self._ends[token] = None
        return landed

    @translated
    def lease_info(self, key: str) -> LeaseInfo | None:
        reply = self._call("kv/range", {"key": _b64(self._ns_lease + key)}, "lease info", key)
        kvs_ = reply.get("kvs")
        if not kvs_:
            return None
        kv = kvs_[0]
        lease = str(kv.get("lease", "0"))
        remaining: float | None = None
        if lease != "0":
            alive = self._call("lease/timetolive", {"ID": lease}, "lease info", key)
            remaining = max(0.0, float(alive.get("TTL", 0)))
        return LeaseInfo(token=_unb64(kv.get("value")).decode("utf-8", "replace"),
                         fence=int(kv["create_revision"]), remaining=remaining)

    @translated
    def break_lease(self, key: str) -> bool:
        reply = self._call("kv/deleterange", {"key": _b64(self._ns_lease + key)},
                           "break lock", key, resend=False)
        return int(reply.get("deleted", 0)) > 0

    @translated
    def wait_for_release(self, key: str, timeout: float) -> None:
        """Watch the lease key from the revision our failed acquire saw, until it is
        deleted (a release, a break or the etcd lease's expiry) or ``timeout``.

        Watching from that revision means a release between the failed acquire
        and the watch is not missed: etcd replays it at once.
        """
        import requests

        since = self._waits.__dict__.pop(key, None)
        limit = max(0.001, min(timeout, self.timeout))
        request: dict[str, Any] = {"key": _b64(self._ns_lease + key), "filters": ["NOPUT"]}
        if since is not None:
            request["start_revision"] = str(since + 1)
        else:
            limit = min(limit, 0.05)  # we may have missed a release: look again soon
        index = self._current
        client = self._session_clients()[index]
        headers = {"Authorization": self._auth_token} if self._auth_token else None
        deadline = time.monotonic() + limit
        try:
            with client.session.post(client.get_url("watch"),
                                     data=json.dumps({"create_request": request}),
                                     headers=headers, stream=True,
                                     timeout=(self._connect_timeout, limit)) as response:
                if response.status_code != 200:
                    return
                for line in response.iter_lines(chunk_size=None):
                    if not line:
                        continue
                    result = json.loads(line).get("result", {})
                    if result.get("events") or result.get("canceled") \
                            or time.monotonic() >= deadline:
                        return
        except (requests.exceptions.RequestException, ValueError):
            # A timeout is the normal end of a wait; a member that went away makes
            # the caller's next acquire fail over.  Either way: return and retry.
            if time.monotonic() < deadline:
                time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))


def _never_sent(exc: BaseException) -> bool:
    """Whether a requests ConnectionError happened before the request went out."""
    text = repr(exc)
    return any(mark in text for mark in ("Connection refused", "NewConnectionError",
                                         "Failed to establish", "Name or service not known"))


def _short(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "Read timed out" in text:
        return "read timed out"
    return f"{type(exc).__name__}: {text[:160]}"


def _scrub(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text
