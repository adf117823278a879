"""Where the time of one kvs operation goes: ``python -m benchmarks.profile_ops``.

For a missed target, this splits one operation into layers, timed
interleaved like the main run:

``raw``      the raw client with msgpack (the baseline of the targets);
``backend``  the kvs backend's own call with an already-mangled key and
             already-encoded bytes (what kvs sends over the wire);
``kvs``      the public ``KeyValueStore`` call.

On sqlite (get, update, locked_write) a fourth layer, ``floor``, runs the
SQL statements kvs.sqlite runs (and kvs's decode, for get),
on the same file, straight through ``sqlite3`` with no kvs code at all: what
no Python above SQLite can get under.  On memcached (get, set, get_multi)
the ``floor`` sends the commands kvs sends on a bare socket and only waits
for the reply's last bytes, then decodes with msgpack as the raw client
does: the round trip and the codec, without any client code.  On memory
(update, locked_write) the ``floor`` runs kvs.memory's critical sections on
the store's own lock and dicts, with the same clock reads, a token, and kvs's
codec (the metadata header included), written out in one function: what no
Python above kvs.memory can get under without giving up a guarantee.  On
memory (locked_write) a fifth layer, ``api``, keeps the public call shape
(a store object's get_lock, get and set(lock=), a lock object used with
``with``) over kvs.memory's own four calls and the codec, with only the
checks kvs makes on that path: what kvs's store and lock layers could cost
at best.

``kvs - backend`` is the cost of the store layer (key checks, mangling,
encoding, the metadata header, error naming); ``backend - raw`` that of the
backend module (key layout, scripts, error translation) plus the wire format.
Then a cProfile of the kvs call lists the functions that take the time.

    python -m benchmarks.profile_ops --backend redis --op get_multi
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dogpile.cache.api import NoValue

from benchmarks import backends
from benchmarks.servers import ServerSet
from benchmarks.suites import make_value
from benchmarks.timing import Operation, Settings, measure, paired_ratio
from kvs import serializers
from kvs.backends.base import Fenced, LeaseBackend
from kvs.lock import new_token

OPERATIONS = ("get", "set", "get_multi", "set_multi", "update", "locked_write")


def layers(setup: backends.BackendSetup, operation: str) -> tuple[dict[str, Operation], Operation]:
    """The three layered callables of ``operation``, and the kvs one alone."""
    store = setup.make_store(f"prof-{uuid.uuid4().hex[:6]}")
    backend = store.region.actual_backend
    assert isinstance(backend, LeaseBackend)
    assert setup.raw_factory is not None
    raw = setup.raw_factory()
    codec = serializers.get_serializer(serializers.DEFAULT_SERIALIZER)
    value = make_value(100)
    data = serializers.pack(codec, value)
    keys = [f"p:{index}" for index in range(100)]
    mangled = [store.backend_key(key) for key in keys]
    raw_keys = [f"raw:{key}" for key in keys]
    store.set_multi(dict.fromkeys(keys, value))
    raw.set_multi(dict.fromkeys(raw_keys, value))
    store.set("counter", 0)
    raw.set("raw:counter", 0)
    mangled_counter = store.backend_key("counter")

    def increment(stored: bytes | NoValue) -> bytes:
        if isinstance(stored, NoValue):
            raise RuntimeError("the counter vanished")
        return serializers.pack(codec, serializers.unpack(codec, stored) + 1)

    def backend_update(index: int) -> Any:
        if backend.updates_in_one_step:
            return backend.update_value(mangled_counter, increment, None, 6.0)
        token = uuid.uuid4().hex
        _, stored = backend.acquire_lease_and_get(mangled_counter, token, 5.0)
        return backend.fenced_set_and_release(mangled_counter, increment(stored), token, None)

    def backend_locked_write(index: int) -> Any:
        # The backend calls of get_lock, get, set(lock=) and release.
        token = new_token()
        if backend.acquire_lease(mangled_counter, token, 6.0) is None:
            raise RuntimeError("the counter is leased")
        written = backend.fenced_set(mangled_counter,
                                     increment(backend.get_serialized(mangled_counter)),
                                     token, None)
        backend.release_lease(mangled_counter, token)
        return written

    def kvs_locked_write(index: int) -> Any:
        with store.get_lock("counter") as lock:
            store.set("counter", store.get("counter") + 1, lock=lock)

    table: dict[str, dict[str, Operation]] = {
        "get": {"raw": lambda i: raw.get(raw_keys[i % 100]),
                "backend": lambda i: backend.get_serialized(mangled[i % 100]),
                "kvs": lambda i: store.get(keys[i % 100])},
        "set": {"raw": lambda i: raw.set(raw_keys[i % 100], value),
                "backend": lambda i: backend.plain_set(mangled[i % 100], data, None),
                "kvs": lambda i: store.set(keys[i % 100], value)},
        "get_multi": {"raw": lambda i: raw.get_multi(raw_keys),
                      "backend": lambda i: backend.get_serialized_multi(mangled),
                      "kvs": lambda i: store.get_multi(keys)},
        "set_multi": {"raw": lambda i: raw.set_multi(dict.fromkeys(raw_keys, value)),
                      "backend": lambda i: backend.plain_set_multi(
                          dict.fromkeys(mangled, data), None),
                      "kvs": lambda i: store.set_multi(dict.fromkeys(keys, value))},
        "update": {"raw": lambda i: raw.update("raw:counter"),
                   "backend": backend_update,
                   "kvs": lambda i: store.update("counter", lambda n: n + 1)},
        "locked_write": {"raw": lambda i: raw.locked_write("raw:counter"),
                         "backend": backend_locked_write,
                         "kvs": kvs_locked_write},
    }
    variants = table[operation]
    if setup.name == "sqlite" and operation in ("locked_write", "update"):
        variants["floor"] = _sqlite_floor(store, operation, mangled_counter)
    if setup.name == "sqlite" and operation == "get":
        variants["floor"] = _sqlite_get_floor(store, mangled)
    if setup.name == "memcached" and operation in ("get", "set", "get_multi"):
        variants["floor"] = _memcached_floor(backend, operation, raw_keys, value)
    if setup.name == "memory" and operation in ("locked_write", "update"):
        variants["floor"] = _memory_floor(store, operation, mangled_counter)
    if setup.name == "memory" and operation == "locked_write":
        variants["api"] = _memory_api_floor(store, mangled_counter)
    return variants, variants["kvs"]


def _memory_api_floor(store: Any, key: str) -> Operation:
    """The locked write's public shape over kvs.memory's own calls, and nothing else.

    ``get_lock`` making a lock object, ``with`` taking and giving back its
    lease, ``get`` and ``set(lock=)`` as methods of a store object; inside,
    only kvs.memory's acquire_lease, get_serialized, fenced_set and
    release_lease, kvs's codec, a token, and the checks kvs makes on this
    path: the key (kvs's check_key), a lock that is not already held, the
    lock belonging to this store, the holder's view of its lease before the
    write and at release, a missing value (NotFound), a refused write making
    the lock lost, a second release doing nothing.  No mangling, no error
    naming, no proxies, no per-lock overrides: what kvs's store and lock
    layers could at best cost on top of the backend.
    """
    import time

    from dogpile.cache.api import NO_VALUE

    from kvs import exception
    from kvs.lock import safety_window
    from kvs.manglers import check_key

    backend = store.region.actual_backend
    codec = serializers.get_serializer(serializers.DEFAULT_SERIALIZER)
    written = Fenced.WRITTEN
    timeout = store.lock_timeout
    window = safety_window(timeout)
    idle, held, lost, released = 0, 1, 2, 3

    class Lock:
        __slots__ = ("key", "leases", "state", "token", "valid_until")

        def __init__(self, key: str) -> None:
            self.key, self.leases, self.token = key, backend, ""
            self.state, self.valid_until = idle, 0.0

        def __enter__(self) -> Lock:
            if self.state == held or self.state == lost:
                raise RuntimeError("already acquired")
            self.token = token = new_token()
            started = time.monotonic()
            if backend.acquire_lease(self.key, token, timeout + window) is None:
                raise RuntimeError("the counter is leased")
            self.state, self.valid_until = held, started + timeout - window
            return self

        def __exit__(self, _type: object, _exc: object, _tb: object) -> None:
            if self.state != held:
                if self.state == lost:
                    self.state = released
                return
            late = time.monotonic() >= self.valid_until
            released_now = backend.release_lease(self.key, self.token)
            self.state = released
            if late or not released_now:
                raise RuntimeError("released late")

    class Store:
        def get_lock(self, key: str) -> Lock:
            return Lock(check_key(key))

        def get(self, key: str) -> Any:
            stored = backend.get_serialized(check_key(key))
            if stored is NO_VALUE:
                raise exception.NotFound(key)
            return codec.unpack(stored)

        def set(self, key: str, value: Any, lock: Lock) -> None:
            if lock.leases is not backend:
                raise RuntimeError("a lock of another store")
            if key != lock.key or lock.state != held or time.monotonic() >= lock.valid_until:
                raise RuntimeError("lock not held")
            if backend.fenced_set(key, codec.pack(value), lock.token, None) is not written:
                lock.state = lost
                raise RuntimeError("lease lost")

    bare = Store()

    def locked_write(index: int) -> None:
        with bare.get_lock(key) as lock:
            bare.set(key, bare.get(key) + 1, lock=lock)

    return locked_write


def _memory_floor(store: Any, operation: str, key: str) -> Operation:
    """kvs.memory's critical sections for ``operation``, in one function, no kvs code.

    Every step the guarantees need stays: a fresh token and a new fence per
    grant, the lease's expiry set and checked, the holder's own view checked
    before the write (locked_write) or fn's time checked against the budget
    (update), the fenced write checking the token under the lock, the release
    a compare-and-delete; values through kvs's codec with its header.  What
    goes is the code around them: the store, the lock object, the calls.
    """
    import itertools
    import time

    from kvs.lock import safety_window

    backend = store.region.actual_backend
    lock, data, leases, fences = backend._lock, backend._data, backend._leases, backend._fences
    # acquire()/release() in try/finally, as kvs.memory's hot sections take the lock
    # (a with block costs more).
    acquire, release = lock.acquire, lock.release
    codec = serializers.get_serializer(serializers.DEFAULT_SERIALIZER)
    timeout = store.lock_timeout
    window = safety_window(timeout)
    budget, lease_ttl = timeout - window, timeout + window
    update_tokens = itertools.count(-1, -1)  # ints, as update_value's; never its own

    def locked_write(index: int) -> None:
        token = new_token()  # get_lock + acquire
        started = time.monotonic()
        acquire()
        try:
            if key in leases:
                raise RuntimeError("the counter is leased")
            fences[key] = fences.get(key, 0) + 1
            leases[key] = (token, time.monotonic() + lease_ttl)
        finally:
            release()
        valid_until = started + budget
        blob = codec.pack(codec.unpack(data[key][0]) + 1)  # get (lock-free), + 1
        if time.monotonic() >= valid_until:  # set(lock=): the holder's view
            raise RuntimeError("lock timeout")
        acquire()  # the fenced write
        try:
            lease = leases.get(key)
            now = time.monotonic()
            if lease is None or lease[0] != token or lease[1] <= now:
                raise RuntimeError("lease lost")
            data[key] = (blob, None)
        finally:
            release()
        late = time.monotonic() >= valid_until  # release
        acquire()
        try:
            lease = leases.get(key)
            if lease is None or lease[0] != token:
                raise RuntimeError("lease lost")
            del leases[key]
            if backend._waiting:
                backend._changed.notify_all()
            alive = lease[1] > time.monotonic()
        finally:
            release()
        if late or not alive:
            raise RuntimeError("released late")

    def update(index: int) -> None:
        token = next(update_tokens)
        acquire()  # grant and read
        try:
            now = time.monotonic()
            lease = leases.get(key)
            if lease is not None and lease[1] > now:
                raise RuntimeError("the counter is leased")
            fences[key] = fences.get(key, 0) + 1
            leases[key] = (token, now + lease_ttl)
            stored = data[key][0]
        finally:
            release()
        started = time.monotonic()
        new = codec.unpack(stored) + 1
        if time.monotonic() - started >= budget:
            raise RuntimeError("lock timeout")
        blob = codec.pack(new)
        acquire()  # fenced write and release
        try:
            lease = leases.get(key)
            now = time.monotonic()
            if lease is None or lease[0] != token or lease[1] <= now:
                raise RuntimeError("lease lost")
            data[key] = (blob, None)
            del leases[key]
            if backend._waiting:
                backend._changed.notify_all()
        finally:
            release()

    return locked_write if operation == "locked_write" else update


def _memcached_floor(backend: Any, operation: str, keys: list[str], value: Any) -> Operation:
    """kvs.memcached's commands for ``operation`` on a bare socket: no client code."""
    import socket

    import msgpack

    address = backend.servers[0].address
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wire = [key.encode() for key in keys]

    def exchange(command: bytes, end: bytes) -> bytes:
        sock.sendall(command)
        reply = sock.recv(65536)
        while not reply.endswith(end):
            reply += sock.recv(65536)
        return reply

    def value_of(reply: bytes, start: int = 0) -> tuple[Any, int]:
        head = reply.index(b"\r\n", start)
        size = int(reply[reply.rindex(b" ", start, head) + 1:head])
        return msgpack.unpackb(reply[head + 2:head + 2 + size], raw=False,
                               strict_map_key=False), head + 4 + size

    def get(index: int) -> Any:
        return value_of(exchange(b"get " + wire[index % 100] + b"\r\n", b"END\r\n"))[0]

    def set_(index: int) -> None:
        data = msgpack.packb(value, use_bin_type=True)
        exchange(b"set %b 0 0 %d\r\n%b\r\n" % (wire[index % 100], len(data), data),
                 b"\r\n")

    def get_multi(index: int) -> list[Any]:
        reply = exchange(b"get " + b" ".join(wire) + b"\r\n", b"END\r\n")
        values, position = [], 0
        for _ in wire:
            item, position = value_of(reply, position)
            values.append(item)
        return values

    return {"get": get, "set": set_, "get_multi": get_multi}[operation]


def _sqlite_get_floor(store: Any, keys: list[str]) -> Operation:
    """kvs.sqlite's one SELECT of a live value and kvs's decode, with no kvs code."""
    import sqlite3
    import time

    from kvs.backends import sqlite as sqlite_backend

    backend = store.region.actual_backend
    connection = sqlite3.connect(backend.filename, isolation_level=None)
    reader = connection.cursor()
    codec = serializers.get_serializer(serializers.DEFAULT_SERIALIZER)

    def get(index: int) -> Any:
        row = reader.execute(sqlite_backend._GET_LIVE, (keys[index % 100], time.time())).fetchone()
        return codec.unpack(row[0])

    return get


def _sqlite_floor(store: Any, operation: str, key: str) -> Operation:
    """kvs.sqlite's statements for ``operation``, on its file, with no kvs code."""
    import sqlite3
    import time

    from kvs.backends import sqlite as sqlite_backend

    backend = store.region.actual_backend
    connection = sqlite3.connect(backend.filename, isolation_level=None)
    connection.execute(f"PRAGMA synchronous={backend.synchronous}")
    reader = connection.cursor()
    codec = serializers.get_serializer(serializers.DEFAULT_SERIALIZER)

    def bump(stored: bytes) -> bytes:
        return serializers.pack(codec, serializers.unpack(codec, stored) + 1)

    def locked_write(index: int) -> None:
        token, now = new_token(), time.time()
        connection.execute(sqlite_backend._GRANT, (token, now + 6.0, key, now)).fetchone()
        (stored,) = reader.execute(sqlite_backend._GET_LIVE, (key, time.time())).fetchone()
        now = time.time()
        connection.execute(sqlite_backend._FENCED_UPSERT, (key, bump(stored), None, token, now))
        connection.execute(sqlite_backend._RELEASE, (key, token, time.time()))

    def update(index: int) -> None:
        now = time.time()
        connection.execute("BEGIN IMMEDIATE")
        _, stored = connection.execute(sqlite_backend._LEASED_AND_VALUE, (key, now)).fetchone()
        connection.execute(sqlite_backend._UPSERT_DATA, (key, bump(stored), None))
        connection.execute("COMMIT")

    return locked_write if operation == "locked_write" else update


def profile(operation: Operation, calls: int, top: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for index in range(calls):
        operation(index)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return "\n".join(line for line in out.getvalue().splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_ops",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="redis", choices=backends.BACKENDS)
    parser.add_argument("--op", action="append", choices=OPERATIONS,
                        help="operation to split (repeatable; default: all)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000, help="calls under cProfile")
    parser.add_argument("--top", type=int, default=15, help="functions shown per profile")
    args = parser.parse_args(argv)
    with ServerSet() as servers:
        workdir = Path(servers.root) / "data"
        workdir.mkdir()
        setup = backends.build(servers, workdir, (args.backend,))[args.backend]
        if not setup.available:
            print(f"{args.backend}: not available ({setup.reason})")
            return 1
        for operation in args.op or OPERATIONS:
            variants, kvs_call = layers(setup, operation)
            stats = measure(variants, Settings(rounds=args.rounds, round_seconds=0.03))
            raw, backend, kvs = stats["raw"], stats["backend"], stats["kvs"]
            print(f"== {args.backend} {operation}: µs per call (median of {args.rounds} rounds)")
            floor = stats.get("floor")
            print(f"   raw {raw.median_us:9.1f}   "
                  + (f"floor {floor.median_us:9.1f}   " if floor else "")
                  + f"backend {backend.median_us:9.1f}   kvs {kvs.median_us:9.1f}")
            api = stats.get("api")
            if api:
                print(f"   api/raw {paired_ratio(api, raw):.3f}x (the public call shape over "
                      f"kvs.memory, {api.median_us:.1f} µs)   kvs/api "
                      f"{paired_ratio(kvs, api):.3f}x")
            if floor:
                alone = {"sqlite": "kvs.sqlite's SQL alone",
                         "memory": "kvs.memory's critical sections and codec alone"
                         }.get(args.backend, "the bare round trip and codec")
                print(f"   floor/raw {paired_ratio(floor, raw):.3f}x ({alone})   "
                      f"kvs/floor {paired_ratio(kvs, floor):.3f}x   kvs - floor "
                      f"{kvs.median_us - floor.median_us:+.1f} µs")
            print(f"   kvs/raw {paired_ratio(kvs, raw):.3f}x   "
                  f"store layer (kvs - backend) {kvs.median_us - backend.median_us:+.1f} µs   "
                  f"backend module (backend - raw) {backend.median_us - raw.median_us:+.1f} µs")
            calls = args.calls // (20 if operation.endswith("multi") else 1)
            print(profile(kvs_call, calls, args.top))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
