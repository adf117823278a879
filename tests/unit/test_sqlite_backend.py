"""The ``kvs.sqlite`` backend, driven directly at the backend level.

Expiry is tested on a fake wall clock (``kvs.backends.sqlite._now``), so no
assertion depends on how fast the machine is.  Cross-process behaviour uses
real processes: forked ones (which must re-open their connections) and fresh
interpreters started with ``subprocess``.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dogpile.cache.api import NO_VALUE

from kvs import exception
from kvs.backends import sqlite as sqlite_module
from kvs.backends.base import Fenced
from kvs.backends.sqlite import SQLiteBackend


class FakeClock:
    """A wall clock that only moves when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "x.sqlite3")


@pytest.fixture
def backend(path: str) -> Iterator[SQLiteBackend]:
    backend = SQLiteBackend({"filename": path})
    yield backend
    backend.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(sqlite_module, "_now", fake)
    return fake


def raw_rows(path: str, table: str) -> list[tuple[Any, ...]]:
    """Rows of a table read with a separate plain connection."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute(f"SELECT * FROM {table} ORDER BY key").fetchall()
    finally:
        connection.close()


# -- configuration --------------------------------------------------------------


def test_defaults_and_file_settings(backend: SQLiteBackend, path: str) -> None:
    assert backend.busy_timeout == 5.0
    assert backend.synchronous == "NORMAL"
    assert backend.max_value_size == 64 * 1024 * 1024
    connection = backend._connection()
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert Path(path).exists()


def test_arguments_are_parsed(path: str) -> None:
    backend = SQLiteBackend({"filename": path, "busy_timeout": "0.5",
                             "synchronous": "full", "max_value_size": "100"})
    assert backend.busy_timeout == 0.5
    assert backend.synchronous == "FULL"
    assert backend.max_value_size == 100
    assert backend._connection().execute("PRAGMA synchronous").fetchone()[0] == 2


def test_unknown_argument_lists_the_valid_ones(path: str) -> None:
    with pytest.raises(exception.ConfigurationError) as raised:
        SQLiteBackend({"filename": path, "timeout": 3})
    message = str(raised.value)
    assert "timeout" in message
    for name in ("busy_timeout", "filename", "max_value_size", "synchronous"):
        assert name in message


@pytest.mark.parametrize("arguments", [
    {"busy_timeout": -1},
    {"synchronous": "EXTRA"},
    {"filename": ":memory:"},
    {"filename": ""},
])
def test_bad_argument_values_are_rejected(path: str, arguments: dict[str, Any]) -> None:
    with pytest.raises(exception.ConfigurationError) as raised:
        SQLiteBackend({"filename": path, **arguments})
    assert next(iter(arguments)) in str(raised.value)


# -- unusable files ---------------------------------------------------------------


def test_unopenable_path_is_unavailable_naming_the_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-dir" / "x.sqlite3")
    with pytest.raises(exception.BackendUnavailable) as raised:
        SQLiteBackend({"filename": missing})
    assert missing in str(raised.value)
    assert isinstance(raised.value, ConnectionError)


def test_directory_is_unavailable_naming_it(tmp_path: Path) -> None:
    with pytest.raises(exception.BackendUnavailable) as raised:
        SQLiteBackend({"filename": str(tmp_path)})
    assert str(tmp_path) in str(raised.value)


def test_non_database_file_is_unavailable_naming_it(path: str) -> None:
    Path(path).write_bytes(b"this is a text file, not a database\n" * 100)
    with pytest.raises(exception.BackendUnavailable) as raised:
        SQLiteBackend({"filename": path})
    assert path in str(raised.value)


def test_newer_schema_is_refused(path: str) -> None:
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA user_version=99")
    connection.close()
    with pytest.raises(exception.BackendUnavailable) as raised:
        SQLiteBackend({"filename": path})
    assert path in str(raised.value)
    assert "99" in str(raised.value)


def test_locked_past_busy_timeout_is_unavailable(path: str) -> None:
    backend = SQLiteBackend({"filename": path, "busy_timeout": 0})
    backend.plain_set("k", b"old", None)
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(exception.BackendUnavailable) as raised:
            backend.plain_set("k", b"new", None)
        assert path in str(raised.value)
        assert "locked" in str(raised.value)
        with pytest.raises(exception.BackendUnavailable):
            backend.acquire_lease("k", "t", 5)
        # WAL: a writer holding the lock does not block readers.
        assert backend.get_serialized("k") == b"old"
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    # The failed calls left no transaction open behind them.
    backend.plain_set("k", b"new", None)
    assert backend.get_serialized("k") == b"new"


def test_open_waits_for_a_writer_blocking_the_switch_to_wal(path: str) -> None:
    # A writer holding a file that is still in rollback-journal mode makes the
    # switch to WAL fail at once (SQLite's busy handler is not called for it),
    # which is what happens when several processes create one file together.
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE unrelated (x)")
    with pytest.raises(exception.BackendUnavailable) as raised:
        SQLiteBackend({"filename": path, "busy_timeout": 0})
    assert path in str(raised.value)
    finisher = threading.Timer(0.1, writer.execute, args=("COMMIT",))
    finisher.start()
    try:
        backend = SQLiteBackend({"filename": path, "busy_timeout": 30})
    finally:
        finisher.join()
        writer.close()
    assert backend._connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    backend.plain_set("k", b"v", None)
    assert backend.get_serialized("k") == b"v"


# -- data -------------------------------------------------------------------------


def test_set_get_delete(backend: SQLiteBackend) -> None:
    assert backend.get_serialized("k") is NO_VALUE
    backend.plain_set("k", b"v1", None)
    assert backend.get_serialized("k") == b"v1"
    backend.plain_set("k", b"v2", None)
    assert backend.get_serialized("k") == b"v2"
    assert backend.plain_delete("k") is True
    assert backend.plain_delete("k") is False
    assert backend.get_serialized("k") is NO_VALUE


def test_keys_are_exact_strings(backend: SQLiteBackend) -> None:
    keys = ["a", "a\x00b", "a\x00c", "ünïcødé ☃", "", "A"]
    for index, key in enumerate(keys):
        backend.plain_set(key, str(index).encode(), None)
    assert backend.get_serialized_multi(keys) == [str(i).encode() for i in range(len(keys))]


def test_get_multi_keeps_order_duplicates_and_gaps(backend: SQLiteBackend) -> None:
    backend.plain_set_multi({"a": b"1", "b": b"2"}, None)
    assert backend.get_serialized_multi(["b", "x", "a", "b"]) == [b"2", NO_VALUE, b"1", b"2"]
    assert backend.get_serialized_multi([]) == []


def test_get_multi_beyond_one_statement(backend: SQLiteBackend) -> None:
    mapping = {f"key{i}": f"{i}".encode() for i in range(1234)}
    backend.plain_set_multi(mapping, None)
    keys = [*mapping, "missing"]
    assert backend.get_serialized_multi(keys) == [*mapping.values(), NO_VALUE]


@pytest.mark.parametrize("json_each", [True, False], ids=["json_each", "select_in"])
def test_get_multi_reads_agree(backend: SQLiteBackend, clock: FakeClock,
                               monkeypatch: pytest.MonkeyPatch, json_each: bool) -> None:
    # The two reads of get_multi (keys listed as JSON, or SELECT ... IN) give
    # the same answers, whatever the keys: order, repeats, gaps, expiry.
    monkeypatch.setattr(sqlite_module, "_JSON_EACH", json_each)
    plain = [f"k{i}" for i in range(40)] + ["", "ünïcødé ☃", "a b", "{x}", "'", "[1]"]
    awkward = ['q"uote', "back\\slash", "new\nline", "nul\x00", "\x7f", "\u2028"]
    for index, key in enumerate(plain + awkward):
        backend.plain_set(key, b"v%d" % index, 5.0 if key == "k3" else None)
    expected = {key: b"v%d" % index for index, key in enumerate(plain + awkward)}
    clock.advance(6.0)  # k3 expires
    for keys in (plain, awkward, plain + awkward,
                 ["k1", "gone", "k1", "k3", *reversed(plain)]):
        assert backend.get_serialized_multi(keys) == [
            NO_VALUE if key in ("k3", "gone") else expected[key] for key in keys]


def test_get_multi_lists_plain_keys_as_json(backend: SQLiteBackend,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Keys that need no escaping take the one-text read; a key JSON would have
    # to escape (or would cut, at a NUL) takes SELECT ... IN.
    backend.plain_set_multi({"a": b"1", 'q"': b"2"}, None)
    calls: list[int] = []
    real = sqlite_module._get_many
    monkeypatch.setattr(sqlite_module, "_get_many", lambda n: calls.append(n) or real(n))
    assert backend.get_serialized_multi(["a", "b", "a"]) == [b"1", NO_VALUE, b"1"]
    assert calls == [] and sqlite_module._JSON_EACH
    assert backend.get_serialized_multi(["a", 'q"']) == [b"1", b"2"]
    assert calls == [2]


def test_delete_multi_ignores_missing(backend: SQLiteBackend) -> None:
    backend.plain_set_multi({"a": b"1", "b": b"2", "c": b"3"}, None)
    backend.delete_multi(["a", "c", "zzz"])
    assert backend.get_serialized_multi(["a", "b", "c"]) == [NO_VALUE, b"2", NO_VALUE]


def test_values_survive_reopen_and_other_instances(path: str) -> None:
    first = SQLiteBackend({"filename": path})
    first.plain_set("k", b"\x00\xffbytes", None)
    fence = first.acquire_lease("k", "t", None)
    first.close()
    second = SQLiteBackend({"filename": path})
    assert second.get_serialized("k") == b"\x00\xffbytes"
    assert second.release_lease("k", "t") is True
    assert second.acquire_lease("k", "u", 5) == fence + 1  # type: ignore[operator]


def test_values_survive_process_restart(path: str) -> None:
    script = textwrap.dedent("""
        import sys
        from kvs.backends.sqlite import SQLiteBackend
        backend = SQLiteBackend({"filename": sys.argv[1]})
        if sys.argv[2] == "write":
            backend.plain_set("k", b"from a dead process", None)
            print(backend.acquire_lease("lease", "writer", None))
        else:
            print(backend.get_serialized("k").decode())
            print(backend.lease_info("lease").fence)
    """)
    written = subprocess.run([sys.executable, "-c", script, path, "write"],
                             capture_output=True, text=True, check=True, timeout=60)
    read = subprocess.run([sys.executable, "-c", script, path, "read"],
                          capture_output=True, text=True, check=True, timeout=60)
    assert written.stdout.split() == ["1"]
    assert read.stdout.splitlines() == ["from a dead process", "1"]


# -- TTLs -------------------------------------------------------------------------


def test_ttl_expires_on_read(backend: SQLiteBackend, clock: FakeClock) -> None:
    backend.plain_set("short", b"1", 10)
    backend.plain_set_multi({"multi": b"2"}, 10)
    backend.plain_set("forever", b"3", None)
    clock.advance(9.9)
    assert backend.get_serialized_multi(["short", "multi", "forever"]) == [b"1", b"2", b"3"]
    clock.advance(0.2)
    assert backend.get_serialized("short") is NO_VALUE
    assert backend.get_serialized_multi(["short", "multi", "forever"]) == [
        NO_VALUE, NO_VALUE, b"3"]
    assert backend.plain_delete("short") is False  # expired counts as missing
    backend.plain_set("short", b"again", None)  # and can be written again
    assert backend.get_serialized("short") == b"again"


def test_dogpile_writes_are_plain_and_never_expire(backend: SQLiteBackend,
                                                   clock: FakeClock) -> None:
    # dogpile's calls carry no TTL: nothing ambient can give them one.
    backend.set_serialized("k", b"v")
    backend.set_serialized_multi({"m": b"v"})
    clock.advance(10**6)
    assert backend.get_serialized_multi(["k", "m"]) == [b"v", b"v"]


def test_expired_rows_are_purged_by_writes(backend: SQLiteBackend, path: str,
                                          clock: FakeClock) -> None:
    backend.purge_interval = 0.0
    backend.plain_set_multi({f"old{i}": b"x" for i in range(5)}, 1)
    backend.plain_set("keep", b"x", None)
    clock.advance(2)
    assert len(raw_rows(path, "kvs_data")) == 6  # reads never purge
    assert backend.get_serialized("old1") is NO_VALUE
    backend.plain_set("other", b"y", None)
    assert [row[0] for row in raw_rows(path, "kvs_data")] == ["keep", "other"]


# -- leases -----------------------------------------------------------------------


def test_lease_is_exclusive_and_retry_keeps_the_fence(backend: SQLiteBackend) -> None:
    assert backend.acquire_lease("k", "alice", 10) == 1
    assert backend.acquire_lease("k", "bob", 10) is None
    assert backend.acquire_lease("k", "alice", 10) == 1  # retry after a lost reply
    info = backend.lease_info("k")
    assert info is not None
    assert (info.token, info.fence) == ("alice", 1)
    assert info.remaining is not None and 0 < info.remaining <= 10
    assert backend.lease_info("other") is None


def test_fence_grows_across_release_expiry_and_break(backend: SQLiteBackend,
                                                     clock: FakeClock) -> None:
    assert backend.acquire_lease("k", "a", 5) == 1
    assert backend.release_lease("k", "a") is True
    assert backend.lease_info("k") is None
    assert backend.acquire_lease("k", "b", 5) == 2
    clock.advance(6)
    assert backend.lease_info("k") is None
    assert backend.acquire_lease("k", "b", 5) == 3  # same token, but a new lease
    assert backend.break_lease("k") is True
    assert backend.break_lease("k") is False
    assert backend.acquire_lease("k", "c", None) == 4
    assert backend.acquire_lease("other", "c", None) == 1  # fences are per key


def test_release_and_extend_never_touch_another_lease(backend: SQLiteBackend,
                                                      clock: FakeClock) -> None:
    backend.acquire_lease("k", "owner", 10)
    assert backend.release_lease("k", "intruder") is False
    assert backend.extend_lease("k", "intruder", 100) is False
    info = backend.lease_info("k")
    assert info is not None and info.token == "owner" and info.remaining == 10
    assert backend.extend_lease("k", "owner", 5) is True
    assert backend.lease_info("k").remaining == 15  # type: ignore[union-attr]
    clock.advance(16)
    # Expired: the former owner can neither extend nor release it.
    assert backend.extend_lease("k", "owner", 5) is False
    assert backend.release_lease("k", "owner") is False
    assert backend.release_lease("missing", "owner") is False


def test_lease_without_expiry(backend: SQLiteBackend, clock: FakeClock) -> None:
    backend.acquire_lease("k", "a", None)
    clock.advance(10**9)
    assert backend.lease_info("k").remaining is None  # type: ignore[union-attr]
    assert backend.extend_lease("k", "a", 5) is True
    assert backend.lease_info("k").remaining is None  # type: ignore[union-attr]
    assert backend.fenced_set("k", b"v", "a", None) is Fenced.WRITTEN


def test_fenced_write_refused_after_expiry_and_takeover(backend: SQLiteBackend,
                                                        clock: FakeClock) -> None:
    backend.plain_set("k", b"before", None)
    assert backend.acquire_lease("k", "old", 5) == 1
    assert backend.fenced_set("k", b"old-1", "old", None) is Fenced.WRITTEN
    clock.advance(5.01)
    # Expired, nobody else yet: still refused.
    assert backend.fenced_set("k", b"old-2", "old", None) is Fenced.LEASE_LOST
    assert backend.get_serialized("k") == b"old-1"
    assert backend.acquire_lease("k", "new", 5) == 2
    assert backend.fenced_set("k", b"new-1", "new", None) is Fenced.WRITTEN
    # The former holder writes, deletes, writes-and-releases: nothing lands.
    assert backend.fenced_set("k", b"old-3", "old", None) is Fenced.LEASE_LOST
    assert backend.fenced_delete("k", "old") is Fenced.LEASE_LOST
    assert backend.fenced_set_and_release("k", b"old-4", "old", None) is Fenced.LEASE_LOST
    assert backend.get_serialized("k") == b"new-1"
    info = backend.lease_info("k")
    assert info is not None and (info.token, info.fence) == ("new", 2)


def test_fenced_write_needs_a_lease(backend: SQLiteBackend) -> None:
    assert backend.fenced_set("k", b"v", "nobody", None) is Fenced.LEASE_LOST
    assert backend.fenced_delete("k", "nobody") is Fenced.LEASE_LOST
    assert backend.get_serialized("k") is NO_VALUE


def test_fenced_delete_outcomes(backend: SQLiteBackend) -> None:
    backend.acquire_lease("k", "t", 10)
    assert backend.fenced_delete("k", "t") is Fenced.MISSING
    backend.plain_set("k", b"v", None)
    assert backend.fenced_delete("k", "t") is Fenced.WRITTEN
    assert backend.get_serialized("k") is NO_VALUE
    assert backend.lease_info("k") is not None  # deleting data keeps the lease


def test_fenced_set_with_ttl(backend: SQLiteBackend, clock: FakeClock) -> None:
    backend.acquire_lease("k", "t", None)
    assert backend.fenced_set("k", b"v", "t", 3) is Fenced.WRITTEN
    clock.advance(4)
    assert backend.get_serialized("k") is NO_VALUE


def test_fenced_calls_take_the_token_and_return_the_outcome(backend: SQLiteBackend) -> None:
    backend.acquire_lease("k", "mine", 10)
    assert backend.fenced_set("k", b"x", "theirs", None) is Fenced.LEASE_LOST
    assert backend.get_serialized("k") is NO_VALUE
    assert backend.fenced_set("k", b"y", "mine", None) is Fenced.WRITTEN
    assert backend.fenced_delete("k", "mine") is Fenced.WRITTEN
    assert backend.fenced_delete("k", "mine") is Fenced.MISSING
    backend.plain_set("p", b"z", None)
    assert backend.plain_delete("p") is True
    assert backend.plain_delete("p") is False


def test_acquire_and_get_then_set_and_release(backend: SQLiteBackend) -> None:
    assert backend.acquire_lease_and_get("k", "a", 10) == (1, NO_VALUE)
    assert backend.fenced_set_and_release("k", b"1", "a", None) is Fenced.WRITTEN
    assert backend.lease_info("k") is None
    assert backend.acquire_lease_and_get("k", "b", 10) == (2, b"1")
    assert backend.acquire_lease_and_get("k", "c", 10) == (None, NO_VALUE)
    assert backend.acquire_lease_and_get("k", "b", 10) == (2, b"1")  # retry


# -- sizes and atomicity ---------------------------------------------------------


def test_oversized_values_are_refused_before_any_write(path: str) -> None:
    backend = SQLiteBackend({"filename": path, "max_value_size": 8})
    backend.acquire_lease("k", "t", 10)
    big = b"x" * 9
    calls = [
        lambda: backend.plain_set("k", big, None),
        lambda: backend.set_serialized("k", big),
        lambda: backend.plain_set_multi({"a": b"ok", "k": big}, None),
        lambda: backend.set_serialized_multi({"a": b"ok", "k": big}),
        lambda: backend.fenced_set("k", big, "t", None),
        lambda: backend.fenced_set_and_release("k", big, "t", None),
    ]
    for call in calls:
        with pytest.raises(exception.ValueTooLarge) as raised:
            call()
        assert "'k'" in str(raised.value)
    assert backend.get_serialized_multi(["a", "k"]) == [NO_VALUE, NO_VALUE]
    assert backend.lease_info("k").token == "t"  # type: ignore[union-attr]
    backend.plain_set("k", b"x" * 8, None)  # the limit itself is fine
    assert backend.get_serialized("k") == b"x" * 8


def test_max_value_size_is_capped_by_the_backend_limit(path: str) -> None:
    backend = SQLiteBackend({"filename": path, "max_value_size": 2**40})
    assert backend.max_value_size == SQLiteBackend.backend_value_limit


def test_set_multi_is_all_or_nothing(backend: SQLiteBackend) -> None:
    backend.plain_set("a", b"old", None)
    # The third value cannot be bound by SQLite: the statement fails midway,
    # after "a" and "b" were written inside the transaction.
    mapping: dict[str, Any] = {"a": b"new", "b": b"new", "c": [1, 2]}
    with pytest.raises(sqlite3.Error):
        backend.plain_set_multi(mapping, None)
    assert backend.get_serialized_multi(["a", "b", "c"]) == [b"old", NO_VALUE, NO_VALUE]
    assert not backend._connection().in_transaction


# -- concurrency ------------------------------------------------------------------


def _take_fences(backend: SQLiteBackend, key: str, count: int, results: Any) -> None:
    """Forked worker: acquire and release ``count`` times, report the fences."""
    token = f"worker-{multiprocessing.current_process().pid}"
    fences: list[int] = []
    while len(fences) < count:
        fence = backend.acquire_lease(key, token, 30)
        if fence is None:
            backend.wait_for_release(key, 1.0)
            continue
        fences.append(fence)
        assert backend.release_lease(key, token)
    results.put(fences)


def _increment(backend: SQLiteBackend, key: str, count: int, results: Any) -> None:
    """Forked worker: ``count`` fenced read-modify-writes of a decimal counter."""
    token = f"worker-{multiprocessing.current_process().pid}"
    done = 0
    while done < count:
        fence, value = backend.acquire_lease_and_get(key, token, 30)
        if fence is None:
            backend.wait_for_release(key, 1.0)
            continue
        current = 0 if value is NO_VALUE else int(value)  # type: ignore[arg-type]
        outcome = backend.fenced_set_and_release(key, str(current + 1).encode(), token, None)
        assert outcome is Fenced.WRITTEN
        done += 1
    results.put(done)


def _report_connection(backend: SQLiteBackend, key: str, count: int, results: Any) -> None:
    """Forked worker: which connection object does the inherited backend use?"""
    backend.plain_set(key, b"from the child", None)
    results.put(id(backend._connection()))


def _run_forked(target: Any, backend: SQLiteBackend, workers: int, count: int) -> list[Any]:
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [context.Process(target=target, args=(backend, "shared", count, results))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    collected = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return collected


@pytest.mark.skipif(sys.platform == "win32", reason="needs fork")
def test_fences_strictly_increase_across_processes(backend: SQLiteBackend) -> None:
    # The parent's connection is open before the fork: children must re-open.
    assert backend.acquire_lease("shared", "parent", 30) == 1
    assert backend.release_lease("shared", "parent")
    per_process = _run_forked(_take_fences, backend, workers=3, count=40)
    for fences in per_process:
        assert fences == sorted(set(fences))  # strictly increasing in each process
    every = sorted(f for fences in per_process for f in fences)
    assert every == list(range(2, 2 + 3 * 40))  # never reused, no gaps
    # The parent's own connection still works after the children are gone.
    assert backend.acquire_lease("shared", "parent", 30) == 2 + 3 * 40


@pytest.mark.skipif(sys.platform == "win32", reason="needs fork")
def test_forked_child_opens_its_own_connection(backend: SQLiteBackend) -> None:
    parent_connection = id(backend._connection())
    [child_connection] = _run_forked(_report_connection, backend, workers=1, count=1)
    # The parent's connection object is still alive in the child, so an equal
    # id means the child used it instead of opening its own.
    assert child_connection != parent_connection
    assert backend.get_serialized("shared") == b"from the child"


def _report_inherited(backend: SQLiteBackend, key: str, count: int, results: Any) -> None:
    """Forked worker: are the connections inherited from the parent still open?"""
    import gc

    gc.collect()  # the other threads' thread-local data is gone by now
    still_open = []
    for connection in sqlite_module._inherited:
        try:
            connection.in_transaction  # noqa: B018  (raises once closed)
            still_open.append(True)
        except sqlite3.ProgrammingError:
            still_open.append(False)
    # Reads work in the child (its own connection) while the parent writes.
    results.put((still_open, backend.get_serialized("held")))


@pytest.mark.skipif(sys.platform == "win32", reason="needs fork")
def test_forked_child_never_closes_the_parents_connections(
        backend: SQLiteBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another thread of the parent sits in a write transaction during the fork;
    # closing its copy in the child would roll back in shared WAL state.  The
    # fork waits FORK_WAIT for that thread (30 s), then forks anyway: 2 s here.
    monkeypatch.setattr(sqlite_module, "FORK_WAIT", 2.0)
    opened = threading.Event()
    finish = threading.Event()

    def write_and_wait(connection: sqlite3.Connection) -> None:
        connection.execute(sqlite_module._UPSERT_DATA, ("held", b"parent", None))
        opened.set()
        finish.wait(60)

    def hold_a_transaction() -> None:
        backend._write(write_and_wait)
        backend.close()

    holder = threading.Thread(target=hold_a_transaction)
    holder.start()
    try:
        assert opened.wait(60)
        reader = SQLiteBackend({"filename": backend.filename})
        [(still_open, seen)] = _run_forked(_report_inherited, reader, workers=1, count=1)
    finally:
        finish.set()
        holder.join(60)
    assert len(still_open) >= 3  # the holder's, the main thread's and the reader's
    assert all(still_open)
    assert seen is NO_VALUE  # not committed yet when the child looked
    assert backend.get_serialized("held") == b"parent"  # committed by the parent after


@pytest.mark.skipif(sys.platform == "win32", reason="needs fork")
def test_no_lost_updates_across_processes(backend: SQLiteBackend) -> None:
    done = _run_forked(_increment, backend, workers=3, count=50)
    assert done == [50, 50, 50]
    assert backend.get_serialized("shared") == b"150"


def _open_fresh_file(path: str, barrier: Any, results: Any) -> None:
    """Forked worker: open a file that others are creating at the same moment."""
    barrier.wait()
    try:
        backend = SQLiteBackend({"filename": path})
        backend.plain_set(f"opened-by-{multiprocessing.current_process().pid}", b"", None)
        results.put("ok")
    except exception.KVSError as error:
        results.put(str(error))


@pytest.mark.skipif(sys.platform == "win32", reason="needs fork")
def test_many_processes_create_one_file_together(tmp_path: Path) -> None:
    # Switching a new file to WAL reports "locked" without waiting; several
    # rounds, because the collision only happens when the timing lines up.
    context = multiprocessing.get_context("fork")
    for attempt in range(8):
        path = str(tmp_path / f"fresh{attempt}.sqlite3")
        barrier = context.Barrier(8)
        results = context.Queue()
        processes = [context.Process(target=_open_fresh_file, args=(path, barrier, results))
                     for _ in range(8)]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        assert outcomes == ["ok"] * 8
        assert len(raw_rows(path, "kvs_data")) == 8


def test_no_lost_updates_across_threads(backend: SQLiteBackend) -> None:
    failures: list[BaseException] = []

    def work(name: str) -> None:
        try:
            done = 0
            while done < 40:
                fence = backend.acquire_lease("counter", name, 30)
                if fence is None:
                    backend.wait_for_release("counter", 1.0)
                    continue
                value = backend.get_serialized("counter")
                current = 0 if value is NO_VALUE else int(value)  # type: ignore[arg-type]
                assert backend.fenced_set("counter", str(current + 1).encode(), name,
                                          None) is Fenced.WRITTEN
                assert backend.release_lease("counter", name)
                done += 1
            backend.close()
        except BaseException as error:  # reported to the main thread below
            failures.append(error)

    threads = [threading.Thread(target=work, args=(f"thread-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures
    assert backend.get_serialized("counter") == b"240"


def test_wait_for_release_returns_when_released(backend: SQLiteBackend) -> None:
    backend.acquire_lease("k", "holder", 60)
    releaser = threading.Timer(0.05, backend.release_lease, args=("k", "holder"))
    releaser.start()
    try:
        backend.wait_for_release("k", 30)  # generous: only "does not hang"
        assert backend.lease_info("k") is None
    finally:
        releaser.join()


def test_wait_for_release_gives_up_at_the_timeout(backend: SQLiteBackend) -> None:
    backend.acquire_lease("k", "holder", 60)
    started = time.monotonic()
    backend.wait_for_release("k", 0.05)
    assert time.monotonic() - started < 10  # returned, still held
    assert backend.lease_info("k").token == "holder"  # type: ignore[union-attr]
    backend.wait_for_release("free", 30)  # free: returns at once


def test_relative_filename_is_resolved_at_configure(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # A thread that first touches the store after a chdir must open the same
    # file: otherwise a second holder gets the same lease (fence 1 again).
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    monkeypatch.chdir(first)
    backend = SQLiteBackend({"filename": "relative.sqlite3"})
    assert backend.filename == str(first / "relative.sqlite3")
    assert backend.acquire_lease("k", "a", 30) == 1
    monkeypatch.chdir(second)
    fences: list[int | None] = []
    thread = threading.Thread(target=lambda: fences.append(backend.acquire_lease("k", "b", 30)))
    thread.start()
    thread.join()
    assert fences == [None]  # held by "a" in the one file
    assert not (second / "relative.sqlite3").exists()


def _stored_keys(filename: str) -> list[str]:
    db = sqlite3.connect(filename)
    try:
        return [row[0] for row in db.execute("SELECT key FROM kvs_data ORDER BY key")]
    finally:
        db.close()


def test_new_files_keep_keys_as_given_and_old_files_keep_sha1(tmp_path: Path) -> None:
    import kvs
    import kvs.testing
    from kvs import manglers

    new, old = str(tmp_path / "new.sqlite3"), str(tmp_path / "old.sqlite3")
    # A file as the first kvs release created it: same tables, schema version 1.
    db = sqlite3.connect(old)
    db.executescript(sqlite_module._SCHEMA)
    db.execute("PRAGMA user_version=1")
    db.close()
    with kvs.testing.isolated_stores():
        for name, filename in (("new", new), ("old", old)):
            store = kvs.get_key_value_store(name)
            store.configure("kvs.sqlite", filename=filename, key_prefix="p")
            store.set_multi({"b": 2, "a": 1})
            assert store.get_multi(["a", "b"]) == [1, 2]
    assert _stored_keys(new) == ["p:a", "p:b"]
    assert sorted(_stored_keys(old)) == sorted(
        "p:" + manglers.sha1_mangle_key(key) for key in ("a", "b"))
    # Each file keeps its version: the layout of its keys never changes under it.
    for filename, version in ((new, 2), (old, 1)):
        db = sqlite3.connect(filename)
        assert db.execute("PRAGMA user_version").fetchone() == (version,)
        db.close()


def test_sealed_stores_hash_names_on_sqlite_too(tmp_path: Path) -> None:
    import kvs
    import kvs.testing

    filename = str(tmp_path / "sealed.sqlite3")
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store("sealed")
        store.configure("kvs.sqlite", filename=filename, key_prefix="p",
                        security_strategy="mac", secret_key="s" * 32)
        store.set("session:alice", 1)
    [stored] = _stored_keys(filename)
    assert "alice" not in stored
