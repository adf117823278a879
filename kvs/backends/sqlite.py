"""``kvs.sqlite``: the embedded default backend, one SQLite file on one host.

Every process and thread that opens the same file sees the same keys, leases
and fences.  The file is in WAL mode, so readers never block the writer and the
writer never blocks readers; writers queue on SQLite's write lock for at most
``busy_timeout`` seconds.

Layout (two tables, created on first open)::

    kvs_data   key -> value (bytes), expires
    kvs_lease  key -> token (NULL when free), expires, fence

Keys are the store's keys as given (prefixed), not hashed: see ``plain_keys``.

Every write, and every lease call, is one ``BEGIN IMMEDIATE`` transaction or
one write statement on its own (which SQLite runs the same way): it takes the
write lock first, then reads the lease row, then writes.  So the lease check
and the write it guards are one atomic step for every process on the host, and
a fenced write never lands under a lease that expired or moved.

A lease row is never deleted: releasing it only clears the token, so the fence
counter of a key keeps growing across releases, expiries and processes.

Stored expiry times are wall-clock ``time.time()`` seconds, because they must
mean the same thing to every process and survive a reboot.  They are compared
in the backend only, inside the transaction, never against a client's view.
An expired row reads as missing; write transactions purge expired data rows
now and then.

Arguments:

``filename``
    Path of the database file (default ``kvs.sqlite3``; ``~`` is expanded).
    A relative path is resolved against the working directory *at configure
    time*, so a later ``chdir`` never makes a thread open another file.
    Created if missing; its directory must exist.
``busy_timeout``
    Seconds a call waits for another connection's write lock before raising
    :class:`~kvs.exception.BackendUnavailable` (default 5.0; 0 fails at once).
``synchronous``
    SQLite's ``PRAGMA synchronous``: ``OFF``, ``NORMAL`` (default) or ``FULL``.
    In WAL mode ``NORMAL`` never corrupts the file and keeps every commit
    across a crash of the *process*, but a power loss or OS crash may undo the
    last commits before the next checkpoint: recent values, and lease
    acquisitions with them, so a fence number may be handed out twice after a
    power cut.  ``FULL`` syncs the WAL on every commit and keeps each commit
    across power loss, at the cost of one fsync per write.  ``OFF`` never syncs:
    a power loss may corrupt the file.
``max_value_size``
    Largest serialized value in bytes (default and ceiling: 64 MiB).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import operator
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, NoReturn, TypeVar

from dogpile.cache.api import NO_VALUE, NoValue

from kvs import exception
from kvs.backends.base import ArgumentSpec, Fenced, LeaseBackend, LeaseInfo
from kvs.errors import Translating

LOG = logging.getLogger(__name__)

#: The oldest SQLite library kvs runs on (``DELETE ... RETURNING``).
MIN_SQLITE_VERSION = (3, 35, 0)

#: Bumped when the file's layout changes; stored in ``PRAGMA user_version``.
#: 1: the tables below, keys SHA-1 hashed by the store (kvs's default then).
#: 2: the same tables, keys stored as given (see ``SQLiteBackend.plain_keys``).
_SCHEMA_VERSION = 2
#: The versions this kvs opens; a file keeps its version (and key layout).
_KNOWN_VERSIONS = (1, 2)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kvs_data (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    expires REAL
);
CREATE INDEX IF NOT EXISTS kvs_data_expires ON kvs_data (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS kvs_lease (
    key TEXT PRIMARY KEY NOT NULL,
    token TEXT,
    expires REAL,
    fence INTEGER NOT NULL
) WITHOUT ROWID;
"""

_LIVE_DATA = "(expires IS NULL OR expires > ?)"
_LIVE_LEASE = "token IS NOT NULL AND (expires IS NULL OR expires > ?)"
_UPSERT_DATA = (
    "INSERT INTO kvs_data (key, value, expires) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires"
)
# SQLite allows 32766 bound parameters per statement; stay well below.
_CHUNK = 500
# Expired data rows deleted per purge, so one write never pays for a backlog.
_PURGE_BATCH = 1000


class _Connection(sqlite3.Connection):
    """A connection that can be weakly referenced (the builtin one cannot).

    Closed inside the fork gate, also when it is garbage-collected (a thread
    that ends drops its connection): closing takes SQLite's locks too.
    """

    def __del__(self) -> None:
        _gate.enter()
        try:
            self.close()
        except sqlite3.Error:
            pass
        finally:
            _gate.exit()


# -- fork safety --------------------------------------------------------------
# SQLite forbids using a connection in a child process, and closing one there
# may touch the WAL shared memory the parent is still using.  A forked child
# drops the other threads' thread-local data, which would garbage-collect (and
# so close) their connections.  To prevent that, every live connection is
# referenced strongly across fork and kept forever in the child, unused; each
# backend then opens fresh connections there (see ``_connection``).
_live_connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
_live_lock = threading.Lock()
_held_across_fork: list[_Connection] = []
_inherited: list[_Connection] = []



class _ForkGate:
    """Lets SQLite calls run freely, and makes a fork wait until none is in flight.

    Forking while another thread is inside SQLite copies that thread's file
    locks, in-process lock counts and library mutexes into the child, where
    nothing will ever release them: the child hangs in ``sqlite3.connect`` or
    finds the file "locked by another writer" forever.  So every call into
    SQLite runs inside the gate, and the fork hook waits (at most
    :data:`FORK_WAIT` seconds) until no other thread is inside, holding new
    callers back until the fork is done.

    Thread-safe without a lock on the hot path: a caller marks itself busy
    *before* it looks at the forking flag, and the forker raises the flag
    *before* it looks for busy callers, so under the GIL one of them always
    sees the other.  The busy marks are one list of thread idents (a thread
    inside several calls at once appears once per call): ``list.append`` and
    ``list.remove`` are single atomic steps under the GIL, and cheaper than a
    per-thread depth count.
    """

    def __init__(self) -> None:
        self.busy: list[int] = []  # one thread ident per call in flight
        self._forking = False
        self._forker = 0  # the thread that forks never waits for itself
        self._resume = threading.Event()
        self._resume.set()

    def enter(self) -> None:
        ident = threading.get_ident()
        self.busy.append(ident)
        if self._forking and ident != self._forker:
            self._hold(ident)

    def _hold(self, ident: int) -> None:
        """Wait out a fork, unless this thread is already inside (the fork waits for it)."""
        busy = self.busy
        if busy.count(ident) > 1:
            return
        while self._forking:
            busy.remove(ident)
            self._resume.wait()
            busy.append(ident)

    def exit(self) -> None:
        self.busy.remove(threading.get_ident())

    def before_fork(self) -> None:
        me = threading.get_ident()
        self._forker = me
        self._resume.clear()
        self._forking = True
        deadline = time.monotonic() + FORK_WAIT
        while any(ident != me for ident in list(self.busy)):
            if time.monotonic() >= deadline:
                LOG.warning("forking while a thread is still inside SQLite after %s s; the "
                            "child may find the file locked", FORK_WAIT)
                break
            time.sleep(0.0005)

    def after_fork_in_parent(self) -> None:
        self._forking = False
        self._resume.set()

    def after_fork_in_child(self) -> None:
        # The other threads are gone; only this one's own calls are real.
        me = threading.get_ident()
        self.busy = [ident for ident in self.busy if ident == me]
        self._forking = False
        self._resume = threading.Event()
        self._resume.set()


#: Longest a fork waits for calls in flight (a writer waits at most busy_timeout).
FORK_WAIT = 30.0

_gate = _ForkGate()


#: Forks from several threads at once take turns: the gate stays closed for
#: the whole of each one.
_fork_lock = threading.Lock()

#: Counts forks into this process: a connection opened under another number
#: belongs to the parent.
_generation = 0


# The locks are held across fork so that the child never inherits them locked.
def _before_fork() -> None:
    _fork_lock.acquire()
    _gate.before_fork()
    _live_lock.acquire()
    _held_across_fork.extend(_live_connections)


def _after_fork_in_parent() -> None:
    _held_across_fork.clear()
    _live_lock.release()
    _gate.after_fork_in_parent()
    _fork_lock.release()


def _after_fork_in_child() -> None:
    global _generation
    _generation += 1  # every backend opens fresh connections in the child
    _inherited.extend(_held_across_fork)
    _held_across_fork.clear()
    _live_connections.clear()
    _live_lock.release()
    _gate.after_fork_in_child()
    _fork_lock.release()


class _Calls:
    """``with backend._calls:`` around every use of SQLite: the fork gate, then
    this file's error translation (see :mod:`kvs.errors`)."""

    __slots__ = ("_translating",)

    def __init__(self, translating: Translating) -> None:
        self._translating = translating

    def __enter__(self) -> None:
        _gate.enter()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        _gate.exit()
        self._translating.__exit__(exc_type, exc, tb)

    def raise_for(self, exc: Exception) -> NoReturn:
        """Raise the translation of ``exc`` (or ``exc``): the block form, written out."""
        self._translating.__exit__(type(exc), exc, exc.__traceback__)
        raise exc


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


def _now() -> float:
    """Wall-clock seconds: the only clock stored in the file (tests move it)."""
    return time.time()


def _expiry(now: float, ttl: float | None) -> float | None:
    return None if ttl is None else now + ttl


_T = TypeVar("_T")

# An enum member is looked up through its class on every access (about 70 ns):
# the hot paths use these names instead.
_WRITTEN, _LEASE_LOST = Fenced.WRITTEN, Fenced.LEASE_LOST

_GET_LIVE = f"SELECT value FROM kvs_data WHERE key = ? AND {_LIVE_DATA}"
_HOLDS = f"SELECT 1 FROM kvs_lease WHERE key = ? AND token = ? AND {_LIVE_LEASE}"
_LEASED = f"SELECT 1 FROM kvs_lease WHERE key = ? AND {_LIVE_LEASE}"
# A grant: only when no live lease is there (one statement for a known key).
_GRANT = (f"UPDATE kvs_lease SET token = ?, expires = ?, fence = fence + 1 "
          f"WHERE key = ? AND NOT ({_LIVE_LEASE}) RETURNING fence")
_FIRST_GRANT = ("INSERT INTO kvs_lease (key, token, expires, fence) VALUES (?, ?, ?, 1) "
                "ON CONFLICT (key) DO NOTHING RETURNING fence")
# update()'s read: whether another holder's lease is live, and the value, in
# one statement.  update() takes no lease row: its transaction is the exclusion.
_LEASED_AND_VALUE = (
    "SELECT (SELECT 1 FROM kvs_lease WHERE key = ?1 AND token IS NOT NULL "
    "AND (expires IS NULL OR expires > ?2)), "
    "(SELECT value FROM kvs_data WHERE key = ?1 AND (expires IS NULL OR expires > ?2))")
# A fenced write in one statement: the upsert of the value, only while the
# token's lease is live.  (SQLite needs the WHERE to parse INSERT ... SELECT
# ... ON CONFLICT.)
_FENCED_UPSERT = (
    "INSERT INTO kvs_data (key, value, expires) SELECT ?1, ?2, ?3 WHERE EXISTS ("
    "SELECT 1 FROM kvs_lease WHERE key = ?1 AND token = ?4 "
    "AND (expires IS NULL OR expires > ?5)) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires")
_RELEASE = ("UPDATE kvs_lease SET token = NULL, expires = NULL "
            f"WHERE key = ? AND token = ? AND {_LIVE_LEASE}")


@functools.lru_cache(maxsize=64)
def _get_many(count: int) -> str:
    return (f"SELECT key, value FROM kvs_data WHERE key IN ({', '.join('?' * count)}) "
            f"AND {_LIVE_DATA}")


# get_multi's read of keys listed as a JSON array: one row per key, in the
# array's order (ORDER BY: SQL guarantees no order without it), the value or
# NULL (values are NOT NULL) when the key is missing or expired.  One bound
# text instead of a parameter per key, and no key column to read back and
# match: about half of what the SELECT ... IN costs for 100 keys.
_GET_LISTED = (
    "SELECT d.value FROM json_each(?1) AS j LEFT JOIN kvs_data AS d "
    "ON d.key = j.value AND (d.expires IS NULL OR d.expires > ?2) ORDER BY j.key")


def _has_json_each() -> bool:
    """json_each is built into SQLite since 3.38, a compile option before."""
    connection = sqlite3.connect(":memory:")
    try:
        connection.execute("SELECT 1 FROM json_each('[]')")
    except sqlite3.Error:
        return False
    finally:
        connection.close()
    return True


#: Whether _GET_LISTED can run here (else get_multi uses SELECT ... IN).
_JSON_EACH = _has_json_each()
_first = operator.itemgetter(0)


# The work of each write transaction, run by SQLiteBackend._write.

def _nothing(connection: sqlite3.Connection) -> None:
    """A write transaction's work when it exists only for its purge."""


def _upsert(connection: sqlite3.Connection, key: str, value: bytes, ttl: float | None) -> None:
    connection.execute(_UPSERT_DATA, (key, value, _expiry(_now(), ttl)))


def _upsert_many(connection: sqlite3.Connection, mapping: Mapping[str, bytes],
                 ttl: float | None) -> None:
    expires = _expiry(_now(), ttl)
    connection.executemany(_UPSERT_DATA,
                           [(key, value, expires) for key, value in mapping.items()])


def _delete_live(connection: sqlite3.Connection, key: str) -> bool:
    """Delete ``key``; say whether it held a live (unexpired) value."""
    row = connection.execute(
        "DELETE FROM kvs_data WHERE key = ? RETURNING expires", (key,)).fetchone()
    return row is not None and (row[0] is None or row[0] > _now())


def _delete_many(connection: sqlite3.Connection, keys: Sequence[str]) -> None:
    connection.executemany("DELETE FROM kvs_data WHERE key = ?", [(key,) for key in keys])


def _holds(connection: sqlite3.Connection, key: str, token: str) -> bool:
    return connection.execute(_HOLDS, (key, token, _now())).fetchone() is not None


def _acquire(connection: sqlite3.Connection, key: str, token: str,
             ttl: float | None) -> int | None:
    now = _now()
    expires = _expiry(now, ttl)
    row = connection.execute(_GRANT, (token, expires, key, now)).fetchone()
    if row is None:
        row = connection.execute(_FIRST_GRANT, (key, token, expires)).fetchone()
    if row is not None:
        return int(row[0])
    # A live lease is there: a retry of an acquire whose reply was lost keeps
    # its lease and its fence; anyone else's holds.
    row = connection.execute(
        "UPDATE kvs_lease SET expires = ? WHERE key = ? AND token = ? RETURNING fence",
        (expires, key, token)).fetchone()
    return None if row is None else int(row[0])


def _release(connection: sqlite3.Connection, key: str, token: str) -> bool:
    # Keep the row: its fence must outlive the lease.
    return connection.execute(_RELEASE, (key, token, _now())).rowcount == 1


def _extend(connection: sqlite3.Connection, key: str, token: str, ttl: float) -> bool:
    # NULL + ttl stays NULL: a lease without expiry keeps having none.
    return connection.execute(
        f"UPDATE kvs_lease SET expires = expires + ? WHERE key = ? AND token = ? "
        f"AND {_LIVE_LEASE}", (ttl, key, token, _now())).rowcount == 1


def _persist(connection: sqlite3.Connection, key: str, token: str) -> bool:
    return connection.execute(
        f"UPDATE kvs_lease SET expires = NULL WHERE key = ? AND token = ? AND {_LIVE_LEASE}",
        (key, token, _now())).rowcount == 1


def _fenced_delete(connection: sqlite3.Connection, key: str, token: str) -> Fenced:
    if not _holds(connection, key, token):
        return Fenced.LEASE_LOST
    return Fenced.WRITTEN if _delete_live(connection, key) else Fenced.MISSING


def _acquire_and_get(connection: sqlite3.Connection, key: str, token: str,
                     ttl: float | None) -> tuple[int | None, bytes | NoValue]:
    fence = _acquire(connection, key, token, ttl)
    if fence is None:
        return None, NO_VALUE
    row = connection.execute(_GET_LIVE, (key, _now())).fetchone()
    return fence, NO_VALUE if row is None else row[0]


def _fenced_set_and_release(connection: sqlite3.Connection, key: str, value: bytes,
                            token: str, ttl: float | None) -> Fenced:
    if not _holds(connection, key, token):
        return Fenced.LEASE_LOST
    _upsert(connection, key, value, ttl)
    _release(connection, key, token)
    return Fenced.WRITTEN


def _break(connection: sqlite3.Connection, key: str) -> bool:
    return connection.execute(
        f"UPDATE kvs_lease SET token = NULL, expires = NULL WHERE key = ? AND {_LIVE_LEASE}",
        (key, _now())).rowcount == 1


class SQLiteBackend(LeaseBackend):
    """One SQLite file, shared by every process and thread on the host."""

    name = "kvs.sqlite"
    arguments = {
        **LeaseBackend.arguments,
        "filename": ArgumentSpec("str", default="kvs.sqlite3"),
        "busy_timeout": ArgumentSpec("float", default=5.0, minimum=0),
        "synchronous": ArgumentSpec("str", default="NORMAL", choices=("OFF", "NORMAL", "FULL")),
    }
    backend_value_limit = 64 * 1024 * 1024

    #: Seconds between purges of expired rows, per backend instance.
    purge_interval: float = 30.0

    #: Keys stored as given (after the store's prefix), not SHA-1 hashed:
    #: SQLite has no key-length limit, and hashing would scatter neighbouring
    #: keys over the B-tree (a get_multi of 100 of them costs 1.4x as much).
    #: Set per file when it is opened: files created by an older kvs (schema
    #: version 1) keep their SHA-1 keys.
    plain_keys = True

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        super().__init__(arguments)
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise exception.ConfigurationError(
                f"{self.name} needs SQLite {'.'.join(map(str, MIN_SQLITE_VERSION))} or newer "
                f"(DELETE ... RETURNING); this Python has SQLite {sqlite3.sqlite_version}",
                option="backend")
        filename = self.options["filename"]
        if not filename or filename == ":memory:" or filename.startswith("file:"):
            raise exception.ConfigurationError(
                f"backend argument 'filename' must be the path of a file for {self.name}, "
                f"got {filename!r}", option="filename")
        # Absolute now: a thread that first touches the store after the process
        # changes directory must open the same file.
        self.filename: str = os.path.abspath(os.path.expanduser(filename))
        self.busy_timeout: float = self.options["busy_timeout"]
        self._errors = _Calls(Translating(self.translate_file_error))
        self.synchronous: str = self.options["synchronous"]
        if self.max_value_size is not None and self.max_value_size > self.backend_value_limit:
            self.max_value_size = self.backend_value_limit
        self._local = threading.local()
        self._next_purge = 0.0
        # Open now, so a bad path or a foreign file fails at configure time.
        self._connection()

    @classmethod
    def parse_arguments(cls, arguments: Mapping[str, Any]) -> dict[str, Any]:
        arguments = dict(arguments)
        if isinstance(arguments.get("synchronous"), str):
            arguments["synchronous"] = arguments["synchronous"].strip().upper()
        return super().parse_arguments(arguments)

    # -- connections and transactions ----------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use and again after fork."""
        local = self._local
        if getattr(local, "generation", -1) != _generation:
            # A new thread, a closed connection or a forked child (getpid()
            # would be a system call on every use; the fork hook counts).
            local.connection = self._open()
            # One cursor kept for single-row reads: a cursor object per call
            # costs a tenth of a read.  Each read steps its row to the end, so
            # the statement is reset and holds no snapshot between calls.
            local.reader = local.connection.cursor()
            # And one for the single write statements of _write_counting and
            # _write_returning (every lease grant, release and locked write).
            # Each steps its statement to the end, which commits it.
            local.writer = local.connection.cursor()
            local.generation = _generation
        connection: sqlite3.Connection = local.connection
        return connection

    def _open(self) -> sqlite3.Connection:
        with self._errors:
            # isolation_level=None: the module never opens transactions on its
            # own; every transaction below is an explicit BEGIN.
            connection = sqlite3.connect(self.filename, timeout=self.busy_timeout,
                                         isolation_level=None, factory=_Connection)
            try:
                self._prepare(connection)
            except BaseException:
                connection.close()
                raise
        with _live_lock:
            _live_connections.add(connection)  # type: ignore[arg-type]
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            mode = self._switch_to_wal(connection)
            if mode != "wal":
                # Still correct (writes take the same lock), but readers now
                # wait for writers.  Happens on file systems without mmap.
                LOG.warning("SQLite file %r cannot use WAL mode; using %s", self.filename, mode)
        connection.execute(f"PRAGMA synchronous={self.synchronous}")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version not in _KNOWN_VERSIONS:
            version = self._create_schema(connection)
        self.plain_keys = version >= 2

    def _create_schema(self, connection: sqlite3.Connection) -> int:
        """Create the tables in a new file (another process may be doing it too)."""
        connection.execute("BEGIN IMMEDIATE")
        try:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise exception.BackendUnavailable(
                    f"SQLite file {self.filename!r} has kvs schema version {version}; "
                    f"this kvs knows only up to {_SCHEMA_VERSION}", file=self.filename)
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        connection.execute(statement)
                connection.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
                version = _SCHEMA_VERSION
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return int(version)

    def _switch_to_wal(self, connection: sqlite3.Connection) -> str:
        """Set WAL mode, retrying while other connections open the new file.

        Switching needs the file to itself, and SQLite reports "locked" at once
        for it instead of calling the busy handler; so several processes
        opening a fresh file together would fail without this loop.
        """
        deadline = time.monotonic() + self.busy_timeout
        delay = 0.001
        while True:
            try:
                return str(connection.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def close(self) -> None:
        """Close the calling thread's connection; the next call opens a new one."""
        local = self._local
        connection = getattr(local, "connection", None)
        if connection is not None and getattr(local, "generation", -1) == _generation:
            with self._errors:
                connection.close()
        local.connection = local.reader = local.writer = None
        local.generation = -1

    def translate_file_error(self, exc: Exception) -> exception.KVSError | None:
        """BackendUnavailable naming the file for SQLite's operational errors.

        This file's translation (see :mod:`kvs.errors`), applied by
        ``with self._errors:``.  Programming and integrity errors are bugs in
        this module, not states of the file: they pass through.
        """
        if isinstance(exc, (sqlite3.ProgrammingError, sqlite3.IntegrityError)) or \
                not isinstance(exc, sqlite3.DatabaseError):
            return None
        if "locked" in str(exc) or "busy" in str(exc):
            message = (f"SQLite file {self.filename!r} stayed locked by another writer "
                       f"for more than busy_timeout={self.busy_timeout} s")
        else:
            message = f"SQLite file {self.filename!r} cannot be used: {exc}"
        return exception.BackendUnavailable(message, file=self.filename)

    def _write(self, work: Callable[..., _T], *args: Any) -> _T:
        """``work(connection, *args)`` in a write transaction; its result.

        The write lock is taken (``BEGIN IMMEDIATE``) before anything is read.
        Called inside an ``update()``'s ``fn`` on this thread, whose
        transaction is still open, the work joins that transaction as a
        savepoint: it commits with the update, or not at all.
        """
        connection = self._connection()
        with self._errors:
            nested = connection.in_transaction
            connection.execute("SAVEPOINT kvs_nested" if nested else "BEGIN IMMEDIATE")
            try:
                if not nested and time.monotonic() >= self._next_purge:
                    self._purge(connection)
                result = work(connection, *args)
            except BaseException:
                self._roll_back(connection, nested)
                raise
            connection.execute("RELEASE kvs_nested" if nested else "COMMIT")
            return result

    def _write_counting(self, statement: str, args: tuple[Any, ...]) -> int:
        """One write statement on its own; the number of rows it changed.

        Atomic without a BEGIN: a write statement takes the file's write lock
        before it reads anything, exactly as ``BEGIN IMMEDIATE`` does, and
        commits when it ends (inside an update()'s ``fn`` it joins that
        transaction).  A due purge runs first, in a transaction of its own.
        """
        if time.monotonic() >= self._next_purge:
            self._write(_nothing)
        # Every lock release and locked write: _connection, the gate (enter and
        # exit too: a frame each) and the translation written out (see
        # get_serialized), on this thread's writer cursor (a cursor per call
        # costs as much as all this Python).
        local = self._local
        if getattr(local, "generation", -1) != _generation:
            self._connection()
        ident = threading.get_ident()
        gate = _gate
        gate.busy.append(ident)
        if gate._forking and ident != gate._forker:
            gate._hold(ident)
        try:
            return int(local.writer.execute(statement, args).rowcount)
        except Exception as exc:
            self._errors.raise_for(exc)
        finally:
            gate.busy.remove(ident)

    def _write_returning(self, statement: str, args: tuple[Any, ...]) -> Any:
        """:meth:`_write_counting` for a statement with ``RETURNING``: its first row or None.

        Fetching the row steps the statement to its end, which commits it.
        """
        if time.monotonic() >= self._next_purge:
            self._write(_nothing)
        local = self._local  # as in _write_counting
        if getattr(local, "generation", -1) != _generation:
            self._connection()
        ident = threading.get_ident()
        gate = _gate
        gate.busy.append(ident)
        if gate._forking and ident != gate._forker:
            gate._hold(ident)
        try:
            # At most one row: fetchone() steps on to the end, which commits.
            return local.writer.execute(statement, args).fetchone()
        except Exception as exc:
            self._errors.raise_for(exc)
        finally:
            gate.busy.remove(ident)

    @staticmethod
    def _roll_back(connection: sqlite3.Connection, nested: bool) -> None:
        if nested:
            connection.execute("ROLLBACK TO kvs_nested")
            connection.execute("RELEASE kvs_nested")
        elif connection.in_transaction:
            connection.execute("ROLLBACK")

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several SELECTs see one state of the file."""
        connection = self._connection()
        with self._errors:
            if connection.in_transaction:  # inside an update()'s fn: already one state
                yield connection
                return
            connection.execute("BEGIN")
            try:
                yield connection
            finally:
                if connection.in_transaction:
                    connection.execute("COMMIT")

    def _purge(self, connection: sqlite3.Connection) -> None:
        deleted = connection.execute(
            "DELETE FROM kvs_data WHERE rowid IN (SELECT rowid FROM kvs_data "
            "WHERE expires <= ? LIMIT ?)", (_now(), _PURGE_BATCH)).rowcount
        # A full batch means a backlog: purge again on the next write.
        self._next_purge = 0.0 if deleted >= _PURGE_BATCH else (
            time.monotonic() + self.purge_interval)

    # -- data ---------------------------------------------------------------

    def get_serialized(self, key: str) -> bytes | NoValue:  # type: ignore[override]
        # The hot path: the gate and the translation written out (see _Calls).
        # _gate.enter() and exit() are written out too (a frame each costs as
        # much as the header check of the decode).
        local = self._local
        if getattr(local, "generation", -1) != _generation:
            self._connection()
        ident = threading.get_ident()
        gate = _gate
        gate.busy.append(ident)
        if gate._forking and ident != gate._forker:
            gate._hold(ident)
        try:
            row = local.reader.execute(_GET_LIVE, (key, _now())).fetchone()
        except Exception as exc:
            self._errors.raise_for(exc)
        finally:
            gate.busy.remove(ident)
        return NO_VALUE if row is None else row[0]  # a BLOB reads as bytes: no copy

    def get_serialized_multi(self, keys: Sequence[str]) -> list[bytes | NoValue]:  # type: ignore[override]
        if not keys:
            return []
        listed: str | None
        try:
            listed = '","'.join(keys)
        except TypeError:  # a key that is not a str: bound as a parameter below
            listed = None
        # Keys that need no escaping in JSON are listed as they are (json.dumps
        # costs a sixth of the read); the others, rare, take SELECT ... IN
        # (JSON would also cut a key at a NUL character).
        if (_JSON_EACH and listed is not None and listed.isprintable()
                and listed.count('"') == 2 * len(keys) - 2 and "\\" not in listed):
            self._connection()
            with self._errors:  # one statement: one state of the file
                values = list(map(_first, self._local.reader.execute(
                    _GET_LISTED, (f'["{listed}"]', _now()))))
            if not all(values) and None in values:  # all(): see KeyValueStore.get_multi
                return [NO_VALUE if value is None else value for value in values]
            return values  # type: ignore[no-any-return]  # BLOBs read as bytes: no copy
        unique = list(dict.fromkeys(keys))
        found: dict[str, bytes] = {}
        if len(unique) <= _CHUNK:  # one statement is one state of the file already
            connection = self._connection()
            with self._errors:
                found.update(connection.execute(_get_many(len(unique)), (*unique, _now())))
            return [found.get(key, NO_VALUE) for key in keys]
        with self._snapshot() as connection:
            now = _now()
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start:start + _CHUNK]
                rows = connection.execute(_get_many(len(chunk)), (*chunk, now))
                found.update(rows)
        return [found.get(key, NO_VALUE) for key in keys]

    def plain_set(self, key: str, value: bytes, ttl: float | None) -> None:
        self.check_size(key, value)
        self._write(_upsert, key, value, ttl)

    def plain_set_multi(self, mapping: Mapping[str, bytes], ttl: float | None) -> None:
        self.check_sizes(mapping)
        self._write(_upsert_many, mapping, ttl)

    def plain_delete(self, key: str) -> bool:
        return self._write(_delete_live, key)

    def delete_multi(self, keys: Sequence[str]) -> None:  # type: ignore[override]
        self._write(_delete_many, keys)

    # -- leases -------------------------------------------------------------

    def acquire_lease(self, key: str, token: str, ttl: float | None) -> int | None:
        now = _now()
        row = self._write_returning(_GRANT, (token, None if ttl is None else now + ttl, key, now))
        if row is not None:  # the common case: a known key, free
            return int(row[0])
        # The first grant of a key, a retry, or a live lease: the full transaction.
        return self._write(_acquire, key, token, ttl)

    def release_lease(self, key: str, token: str) -> bool:
        # Keep the row: its fence must outlive the lease.
        return self._write_counting(_RELEASE, (key, token, _now())) == 1

    def extend_lease(self, key: str, token: str, ttl: float) -> bool:
        return self._write(_extend, key, token, ttl)

    def persist_lease(self, key: str, token: str) -> bool:
        return self._write(_persist, key, token)

    def fenced_set(self, key: str, value: bytes, token: str, ttl: float | None) -> Fenced:
        limit = self.max_value_size  # check_size and _expiry written out: every locked write
        if limit is not None and len(value) > limit:
            self.check_size(key, value)
        now = _now()
        written = self._write_counting(
            _FENCED_UPSERT, (key, value, None if ttl is None else now + ttl, token, now))
        return _WRITTEN if written else _LEASE_LOST

    def fenced_delete(self, key: str, token: str) -> Fenced:
        return self._write(_fenced_delete, key, token)

    def acquire_lease_and_get(
        self, key: str, token: str, ttl: float | None
    ) -> tuple[int | None, bytes | NoValue]:
        return self._write(_acquire_and_get, key, token, ttl)

    def fenced_set_and_release(self, key: str, value: bytes, token: str,
                               ttl: float | None) -> Fenced:
        self.check_size(key, value)
        return self._write(_fenced_set_and_release, key, value, token, ttl)

    updates_in_one_step = True

    def update_value(self, key: str, change: Callable[[bytes | NoValue], bytes],
                     ttl: float | None, lease_ttl: float | None) -> Fenced | None:
        """One ``BEGIN IMMEDIATE`` transaction: lease check and read, ``change``, write.

        The file's write lock is the exclusion: no other connection can lease
        or write anything until the commit, so ``change`` (the caller's ``fn``)
        runs inside the transaction, and no lease is granted, so no fence is
        handed out (the next grant's fence is still above every earlier one).
        """
        return self._write(self._update, key, change, ttl)

    def _update(self, connection: sqlite3.Connection, key: str,
                change: Callable[[bytes | NoValue], bytes], ttl: float | None) -> Fenced | None:
        now = _now()
        leased, stored = connection.execute(_LEASED_AND_VALUE, (key, now)).fetchone()
        if leased is not None:
            return None  # another holder's live lease: nothing changed
        changes = connection.total_changes
        value = change(NO_VALUE if stored is None else stored)
        if connection.total_changes != changes and \
                connection.execute(_LEASED, (key, _now())).fetchone() is not None:
            # change() itself (the caller's fn, in this transaction) took the
            # key's lease: its writes stand, this one does not.
            return Fenced.LEASE_LOST
        self.check_size(key, value)
        connection.execute(_UPSERT_DATA, (key, value, _expiry(now, ttl)))
        return Fenced.WRITTEN

    def lease_info(self, key: str) -> LeaseInfo | None:
        with self._errors:
            now = _now()
            row = self._connection().execute(
                f"SELECT token, expires, fence FROM kvs_lease WHERE key = ? AND {_LIVE_LEASE}",
                (key, now)).fetchone()
        if row is None:
            return None
        remaining = None if row[1] is None else max(0.0, row[1] - now)
        return LeaseInfo(token=row[0], fence=int(row[2]), remaining=remaining)

    def break_lease(self, key: str) -> bool:
        return self._write(_break, key)

    def wait_for_release(self, key: str, timeout: float) -> None:
        # Other processes cannot wake us, so poll: 1 ms doubling to 20 ms,
        # never sleeping past the timeout or the lease's own expiry.
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            lease = self.lease_info(key)
            left = deadline - time.monotonic()
            if lease is None or left <= 0:
                return
            pause = min(delay, left)
            if lease.remaining is not None:
                pause = min(pause, lease.remaining)
            time.sleep(pause)
            delay = min(delay * 2, 0.02)
