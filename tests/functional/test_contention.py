"""Many processes on one key: no lost update, no leftover lease, no overlapping holders.

Runs on the shared backends (sqlite, redis, memcached) with real servers.
Leases here are long (10 s) so that none expires: these tests are about
mutual exclusion under contention, not about expiry (see the fault tests).
memcached holds up as long as nothing evicts its leases; eviction is the
memcached engineer's test (tests/functional/test_memcached_faults.py).
"""

from __future__ import annotations

import itertools
import sqlite3
import uuid
from typing import Any

import pytest
from pymemcache.client.base import Client

import kvs
import kvs.testing
from kvs.backends.memcached import MemcachedBackend
from kvs.backends.redis import hash_tag
from tests.functional.fault_support import (
    count_with_update,
    new_store,
    record_intervals,
    spawn_context,
)

BACKENDS = ["sqlite", "redis", "memcached"]


@pytest.fixture(params=BACKENDS)
def shared(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    name = str(request.param)
    config = dict(request.getfixturevalue(f"{name}_backend_config"))
    return name, {**config, "lock_timeout": 10, "lock_wait_timeout": 120}


def raw_leases(name: str, store: kvs.KeyValueStore, request: pytest.FixtureRequest) -> list[Any]:
    """Every live lease of ``store``'s key prefix, read from the backend's own state."""
    mangled = store.backend_key("counter")
    if name == "sqlite":
        connection = sqlite3.connect(store.region.actual_backend.filename)  # type: ignore[attr-defined]
        try:
            return connection.execute(
                "SELECT key, token, expires FROM kvs_lease WHERE token IS NOT NULL").fetchall()
        finally:
            connection.close()
    if name == "redis":
        client = request.getfixturevalue("redis_server").client()
        try:
            pattern = "{" + store.key_prefix + "*:lease"
            found = list(client.scan_iter(match=pattern))
            assert client.exists(hash_tag(mangled) + ":lease") == 0
            return found
        finally:
            client.close()
    server = request.getfixturevalue("memcached_server")
    client = Client(("127.0.0.1", server.port), default_noreply=False, timeout=5)
    try:
        _, lease_key, _ = MemcachedBackend.item_keys(mangled)
        value = client.get(lease_key)
        return [] if value is None else [(lease_key, value)]
    finally:
        client.close()


def test_four_processes_update_one_key_a_thousand_times(
        shared: tuple[str, dict[str, Any]], request: pytest.FixtureRequest) -> None:
    name, config = shared
    prefix = f"c-{uuid.uuid4().hex[:8]}"
    with spawn_context().Pool(4) as pool:
        done = pool.starmap(count_with_update, [(config, prefix, 250)] * 4, chunksize=1)
    assert done == [250] * 4
    with kvs.testing.isolated_stores():
        store = new_store(config, prefix)
        assert store.get("counter") == 1000
        assert store.lease_info("counter") is None
        assert raw_leases(name, store, request) == []


def test_twenty_processes_never_hold_the_lease_at_once(
        shared: tuple[str, dict[str, Any]], request: pytest.FixtureRequest) -> None:
    name, config = shared
    prefix = f"o-{uuid.uuid4().hex[:8]}"
    processes, rounds = 20, 3
    context = spawn_context()
    start = context.Barrier(processes)
    results = context.Queue()
    children = [context.Process(target=record_intervals,
                                args=(config, prefix, rounds, start, results))
                for _ in range(processes)]
    for child in children:
        child.start()
    try:
        reports = [results.get(timeout=240) for _ in children]
    finally:
        for child in children:
            child.join(30)
            if child.is_alive():
                child.kill()
    errors = [error for _pid, _entries, error in reports if error]
    assert errors == []
    intervals = sorted(entry for _pid, entries, _error in reports for entry in entries)
    assert len(intervals) == processes * rounds
    assert all(valid for *_rest, valid in intervals)  # no lease ran out inside
    for earlier, later in itertools.pairwise(intervals):
        (_enter, left, fence, _valid), (enter, _left, next_fence, _valid) = earlier, later
        assert left < enter, f"holders with fences {fence} and {next_fence} overlapped"
        assert next_fence > fence
    with kvs.testing.isolated_stores():
        store = new_store(config, prefix)
        assert store.get("counter") == processes * rounds
        assert raw_leases(name, store, request) == []
