"""A Hypothesis state machine over the lease contract, on a fake clock.

Several clients acquire (fresh or retried tokens), write, delete, release,
extend and break leases on two keys while the clock jumps forward; a plain
model says what must happen and the backend must agree at every step.  Run on
``kvs.memory``, ``kvs.sqlite`` and ``kvs.redis`` over fakeredis with Lua.

Invariants, checked after every step:

* at most one valid lease per key, and it is the one the model expects
  (same token, same fence, same remaining time within 5 ms);
* every accepted fenced write came from the holder of the valid lease, and
  every write by anyone else was refused (the stored value is always the last
  accepted write);
* fences strictly increase per key, and a retried acquire keeps its fence.

The fake clock: the backends read time directly, so the test replaces the
``time`` module *seen by each backend module* with :class:`FakeClock` (a
``pytest.MonkeyPatch`` per example, undone in ``teardown``):

* ``kvs.backends.memory.time``: ``monotonic()`` for every deadline;
* ``kvs.backends.sqlite.time``: ``time()`` behind ``_now()`` (stored expiry)
  and ``monotonic()`` for the purge schedule;
* ``fakeredis._socket._base.time``: fakeredis sets each database's ``time``
  from ``time.time()`` before running a command, and every expiry (``PX``,
  ``PEXPIRE``, ``PTTL``, lazy deletion) compares against that value, so
  patching this one module moves fakeredis's server clock.  Lua scripts run
  inside one command, so they see one frozen time, as in real Redis.

The clock never stops within 10 ms of a lease's expiry: the backends differ on
whether a lease is still alive at exactly its deadline (memory says no,
fakeredis says yes), and Redis rounds TTLs to milliseconds.
"""

from __future__ import annotations

import shutil
import tempfile

import fakeredis
import pytest
from dogpile.cache.api import NO_VALUE
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from kvs.backends import memory as memory_module
from kvs.backends import sqlite as sqlite_module
from kvs.backends.base import Fenced, LeaseBackend
from kvs.backends.memory import MemoryBackend
from kvs.backends.redis import RedisBackend
from kvs.backends.sqlite import SQLiteBackend

KEYS = ("alpha", "beta")
CLIENTS = (0, 1, 2)
#: Distance the clock keeps from any lease deadline (see the module docstring).
BOUNDARY = 0.010


class FakeClock:
    """Stands in for the ``time`` module of one backend module."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def monotonic_ns(self) -> int:
        return int(self.now * 1e9)

    def time_ns(self) -> int:
        return int(self.now * 1e9)

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class Lease:
    """The model's view of one key."""

    def __init__(self) -> None:
        self.token: str | None = None
        self.expires: float | None = None
        self.fence = 0
        self.value: bytes | None = None

    def valid(self, now: float) -> bool:
        return self.token is not None and (self.expires is None or now < self.expires)


class LeaseMachine(RuleBasedStateMachine):
    """Clients against one backend; subclasses say which backend."""

    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.patch = pytest.MonkeyPatch()
        self.workdir: str | None = None
        self.backend = self.make_backend()
        self.model = {key: Lease() for key in KEYS}
        self.tokens: dict[tuple[int, str], str] = {}
        self.issued = 0

    def make_backend(self) -> LeaseBackend:
        if self.kind == "memory":
            self.patch.setattr(memory_module, "time", self.clock)
            return MemoryBackend({})
        if self.kind == "sqlite":
            self.patch.setattr(sqlite_module, "time", self.clock)
            self.workdir = tempfile.mkdtemp(prefix="kvs-lease-sm-")
            return SQLiteBackend({"filename": f"{self.workdir}/leases.sqlite3"})
        import fakeredis._socket._base as fake_socket

        self.patch.setattr(fake_socket, "time", self.clock)
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        assert client.eval("return 1", 0) == 1, "fakeredis needs the [lua] extra"
        return RedisBackend({"client": client})

    def teardown(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()
        self.patch.undo()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- helpers ------------------------------------------------------------

    def token_for(self, client: int, key: str, fresh: bool) -> str:
        if fresh or (client, key) not in self.tokens:
            self.issued += 1
            self.tokens[client, key] = f"client{client}-{self.issued}"
        return self.tokens[client, key]

    @property
    def now(self) -> float:
        return self.clock.now

    # -- rules --------------------------------------------------------------

    @rule(client=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS),
          ttl=st.sampled_from([0.5, 1.0, 2.5, None]), retry=st.booleans())
    def acquire(self, client: int, key: str, ttl: float | None, retry: bool) -> None:
        token = self.token_for(client, key, fresh=not retry)
        lease = self.model[key]
        fence = self.backend.acquire_lease(key, token, ttl)
        if lease.valid(self.now) and lease.token != token:
            assert fence is None, f"{token} got a lease {lease.token} holds"
            return
        assert fence is not None, f"{token} refused a free (or its own) lease"
        if lease.valid(self.now):
            assert fence == lease.fence, "a retried acquire must keep its fence"
        else:
            assert fence > lease.fence, "fences must strictly increase"
        lease.token, lease.fence = token, fence
        lease.expires = None if ttl is None else self.now + ttl

    @rule(client=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS))
    def release(self, client: int, key: str) -> None:
        token = self.token_for(client, key, fresh=False)
        lease = self.model[key]
        ours = lease.valid(self.now) and lease.token == token
        assert self.backend.release_lease(key, token) is ours
        if ours:
            lease.token = lease.expires = None

    @rule(client=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS),
          seconds=st.sampled_from([0.25, 1.0]))
    def extend(self, client: int, key: str, seconds: float) -> None:
        token = self.token_for(client, key, fresh=False)
        lease = self.model[key]
        ours = lease.valid(self.now) and lease.token == token
        assert self.backend.extend_lease(key, token, seconds) is ours
        if ours and lease.expires is not None:
            lease.expires += seconds

    @rule(client=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS),
          number=st.integers(0, 10**6))
    def write(self, client: int, key: str, number: int) -> None:
        token = self.token_for(client, key, fresh=False)
        lease = self.model[key]
        value = f"{client}:{number}".encode()
        outcome = self.backend.fenced_set(key, value, token, None)
        if lease.valid(self.now) and lease.token == token:
            assert outcome is Fenced.WRITTEN
            lease.value = value
        else:
            assert outcome is Fenced.LEASE_LOST, f"write by non-holder {token} accepted"

    @rule(client=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS))
    def delete(self, client: int, key: str) -> None:
        token = self.token_for(client, key, fresh=False)
        lease = self.model[key]
        outcome = self.backend.fenced_delete(key, token)
        if not (lease.valid(self.now) and lease.token == token):
            assert outcome is Fenced.LEASE_LOST, f"delete by non-holder {token} accepted"
        elif lease.value is None:
            assert outcome is Fenced.MISSING
        else:
            assert outcome is Fenced.WRITTEN
            lease.value = None

    @rule(key=st.sampled_from(KEYS))
    def break_lease(self, key: str) -> None:
        lease = self.model[key]
        assert self.backend.break_lease(key) is lease.valid(self.now)
        lease.token = lease.expires = None

    @rule(seconds=st.sampled_from([0.05, 0.3, 0.7, 1.3, 3.0]))
    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        deadlines = [lease.expires for lease in self.model.values()
                     if lease.token is not None and lease.expires is not None]
        while any(abs(target - deadline) < BOUNDARY for deadline in deadlines):
            target += BOUNDARY
        self.clock.now = target

    # -- invariants ---------------------------------------------------------

    @invariant()
    def backend_agrees_with_model(self) -> None:
        for key, lease in self.model.items():
            info = self.backend.lease_info(key)
            if not lease.valid(self.now):
                assert info is None, f"{key}: expired or released lease still shown: {info}"
                continue
            assert info is not None, f"{key}: the valid lease of {lease.token} is gone"
            assert (info.token, info.fence) == (lease.token, lease.fence)
            if lease.expires is None:
                assert info.remaining is None
            else:
                assert info.remaining is not None
                assert abs(info.remaining - (lease.expires - self.now)) < 0.005
            stored = self.backend.get_serialized(key)
            assert (None if stored is NO_VALUE else stored) == lease.value


MACHINE_SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow])


class MemoryLeases(LeaseMachine):
    kind = "memory"


class SQLiteLeases(LeaseMachine):
    kind = "sqlite"


class FakeRedisLeases(LeaseMachine):
    kind = "redis"


TestMemoryLeases = MemoryLeases.TestCase
TestMemoryLeases.settings = MACHINE_SETTINGS
TestSQLiteLeases = SQLiteLeases.TestCase
TestSQLiteLeases.settings = MACHINE_SETTINGS
TestFakeRedisLeases = FakeRedisLeases.TestCase
TestFakeRedisLeases.settings = MACHINE_SETTINGS


def test_fake_clock_moves_fakeredis_expiry() -> None:
    """The seam itself: a PX lease on fakeredis expires when the fake clock says so."""
    machine = FakeRedisLeases()
    try:
        first = machine.backend.acquire_lease("k", "a", 1.0)
        assert first is not None
        machine.clock.now += 0.99
        assert machine.backend.lease_info("k") is not None
        machine.clock.now += 0.02
        assert machine.backend.lease_info("k") is None
        second = machine.backend.acquire_lease("k", "b", 1.0)
        assert second is not None and second > first
    finally:
        machine.teardown()
