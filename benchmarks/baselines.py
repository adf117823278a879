"""What a user would otherwise write by hand: raw clients and plain dogpile regions.

Every raw subject uses msgpack exactly as kvs's default serializer does, so
the ratio kvs/raw is the price of kvs itself (key mangling, the dogpile region,
the metadata header, lease bookkeeping), not of a different codec.  For the
locked operations each raw subject uses the lock its client offers:

* memory: a ``threading.Lock`` around the dict;
* sqlite: a ``BEGIN IMMEDIATE`` transaction (SELECT, then upsert);
* redis: redis-py's ``Lock`` (acquire, GET, SET, release: 4 round trips);
* memcached: an ``add``-based lock (add, get, set, delete), as people write it.

The plain dogpile regions keep their defaults (pickle), as a user who just
"uses dogpile.cache" would; their locked write uses the backend's
``get_mutex`` where it has one (``distributed_lock=True``).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dogpile.cache import make_region
from dogpile.cache.region import CacheRegion

from benchmarks.subjects import Section, Subject, pack, unpack

#: Seconds any baseline lock may be held before it expires (as kvs's default).
LOCK_TIMEOUT = 5
#: Seconds any baseline waits for a lock before giving up.
LOCK_WAIT = 30.0


class RawMemory(Subject):
    """A dict of msgpack bytes (the encoding doubles as the defensive copy)."""

    role = "raw"
    label = "dict + msgpack, threading.Lock"

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def get(self, key: str) -> Any:
        return unpack(self.data[key])

    def set(self, key: str, value: Any) -> None:
        self.data[key] = pack(value)

    def get_multi(self, keys: Sequence[str]) -> list[Any]:
        data = self.data
        return [unpack(data[key]) for key in keys]

    def set_multi(self, mapping: Mapping[str, Any]) -> None:
        self.data.update({key: pack(value) for key, value in mapping.items()})

    def locked_write(self, key: str, section: Section | None = None) -> None:
        with self.lock:
            if section is not None:
                section.enter()
            # No default encoded up front (``data.get(key, pack(0))`` would pack
            # one on every call, even with the key there): as the other raw
            # subjects, only what the operation needs.  That extra pack made
            # this baseline about 40% slower, and every ratio to it that much
            # kinder to kvs.
            stored = self.data.get(key)
            self.data[key] = pack((0 if stored is None else unpack(stored)) + 1)
            if section is not None:
                section.leave()

    update = locked_write


class RawSQLite(Subject):
    """sqlite3 on its own file, WAL and synchronous=NORMAL as kvs.sqlite uses."""

    role = "raw"
    label = "sqlite3 (WAL), BEGIN IMMEDIATE for locks"

    def __init__(self, filename: str) -> None:
        self.filename = filename
        # Autocommit mode: each plain statement is its own transaction.
        self.db = sqlite3.connect(filename, timeout=LOCK_WAIT, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS raw (key TEXT PRIMARY KEY, value BLOB)")

    def get(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM raw WHERE key = ?", (key,)).fetchone()
        return unpack(row[0])

    def set(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO raw VALUES (?, ?)", (key, pack(value)))

    def get_multi(self, keys: Sequence[str]) -> list[Any]:
        marks = ", ".join("?" * len(keys))
        found = dict(self.db.execute(f"SELECT key, value FROM raw WHERE key IN ({marks})",
                                     list(keys)))
        return [unpack(found[key]) for key in keys]

    def set_multi(self, mapping: Mapping[str, Any]) -> None:
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR REPLACE INTO raw VALUES (?, ?)",
                            [(key, pack(value)) for key, value in mapping.items()])
        self.db.execute("COMMIT")

    def locked_write(self, key: str, section: Section | None = None) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        if section is not None:
            section.enter()
        row = self.db.execute("SELECT value FROM raw WHERE key = ?", (key,)).fetchone()
        current = 0 if row is None else unpack(row[0])
        self.db.execute("INSERT OR REPLACE INTO raw VALUES (?, ?)", (key, pack(current + 1)))
        if section is not None:
            section.leave()
        self.db.execute("COMMIT")

    update = locked_write

    def close(self) -> None:
        self.db.close()


class RawRedis(Subject):
    """redis-py (with hiredis) on one connection; redis-py's Lock for locks."""

    role = "raw"

    def __init__(self, port: int, lock_sleep: float = 0.1) -> None:
        import redis

        self.client: Any = redis.Redis(host="127.0.0.1", port=port)
        #: redis-py's Lock polls every ``sleep`` seconds while waiting (0.1 by default).
        self.lock_sleep = lock_sleep
        self.label = f"redis-py + msgpack; redis-py Lock (sleep={lock_sleep:g} s)"

    def get(self, key: str) -> Any:
        return unpack(self.client.get(key))

    def set(self, key: str, value: Any) -> None:
        self.client.set(key, pack(value))

    def get_multi(self, keys: Sequence[str]) -> list[Any]:
        return [unpack(value) for value in self.client.mget(keys)]

    def set_multi(self, mapping: Mapping[str, Any]) -> None:
        self.client.mset({key: pack(value) for key, value in mapping.items()})

    def locked_write(self, key: str, section: Section | None = None) -> None:
        lock = self.client.lock("lock:" + key, timeout=LOCK_TIMEOUT, sleep=self.lock_sleep,
                                blocking_timeout=LOCK_WAIT)
        if not lock.acquire():
            raise TimeoutError(f"redis-py Lock on {key!r} not acquired in {LOCK_WAIT} s")
        try:
            if section is not None:
                section.enter()
            stored = self.client.get(key)
            self.client.set(key, pack((0 if stored is None else unpack(stored)) + 1))
            if section is not None:
                section.leave()
        finally:
            lock.release()

    update = locked_write

    def close(self) -> None:
        self.client.close()


class RawMemcached(Subject):
    """pymemcache waiting for every reply (noreply off, as a store must); add-based lock.

    With TCP_NODELAY, as kvs.memcached connects: with Nagle's algorithm on, a
    10 KB ``set`` measured 180-530 µs against 55-60 µs without it, which would
    flatter kvs rather than measure it.
    """

    role = "raw"
    label = "pymemcache + msgpack (noreply off, TCP_NODELAY); add/delete lock"

    def __init__(self, port: int) -> None:
        from pymemcache.client.base import Client

        self.client = Client(("127.0.0.1", port), default_noreply=False, connect_timeout=1.0,
                             timeout=1.0, no_delay=True)

    def get(self, key: str) -> Any:
        return unpack(self.client.get(key))

    def set(self, key: str, value: Any) -> None:
        self.client.set(key, pack(value))

    def get_multi(self, keys: Sequence[str]) -> list[Any]:
        found = self.client.get_many(keys)
        return [unpack(found[key]) for key in keys]

    def set_multi(self, mapping: Mapping[str, Any]) -> None:
        self.client.set_many({key: pack(value) for key, value in mapping.items()})

    def locked_write(self, key: str, section: Section | None = None) -> None:
        lock_key = "lock:" + key
        deadline = time.monotonic() + LOCK_WAIT
        while not self.client.add(lock_key, b"1", expire=LOCK_TIMEOUT, noreply=False):
            if time.monotonic() > deadline:
                raise TimeoutError(f"memcached lock on {key!r} not acquired in {LOCK_WAIT} s")
            time.sleep(0.001)
        try:
            if section is not None:
                section.enter()
            stored = self.client.get(key)
            self.client.set(key, pack((0 if stored is None else unpack(stored)) + 1))
            if section is not None:
                section.leave()
        finally:
            self.client.delete(lock_key, noreply=False)

    update = locked_write

    def close(self) -> None:
        self.client.close()


class DogpileRegion(Subject):
    """A plain dogpile.cache region with its default (pickle) serializer."""

    role = "dogpile"

    def __init__(self, backend: str, arguments: Mapping[str, Any] | None = None) -> None:
        self.region: CacheRegion = make_region().configure(backend, arguments=dict(arguments or {}))
        self.label = f"dogpile region {backend}"
        if self.region.backend.get_mutex("probe") is None:
            self.missing = {
                "update": f"{backend} has no distributed mutex (get_mutex returns None)",
                "locked_write": f"{backend} has no distributed mutex (get_mutex returns None)",
            }

    def get(self, key: str) -> Any:
        return self.region.get(key)

    def set(self, key: str, value: Any) -> None:
        self.region.set(key, value)

    def get_multi(self, keys: Sequence[str]) -> list[Any]:
        return self.region.get_multi(keys)

    def set_multi(self, mapping: Mapping[str, Any]) -> None:
        self.region.set_multi(mapping)

    def locked_write(self, key: str, section: Section | None = None) -> None:
        mutex = self.region.backend.get_mutex(key)
        mutex.acquire()
        try:
            if section is not None:
                section.enter()
            current = self.region.get(key)
            self.region.set(key, (current if isinstance(current, int) else 0) + 1)
            if section is not None:
                section.leave()
        finally:
            mutex.release()

    update = locked_write
