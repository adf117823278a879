"""A Hypothesis state machine over KeyValueStore itself, with proxies in the path.

``test_lease_state_machine.py`` drives backends directly, so it never sees
the store's write path.  This one drives the public API (``get_lock``,
``set``/``delete`` with ``lock=``, ``break_lock``, ``update``, ``release``)
on stores whose proxy list holds a thread-hopping :class:`LeaseProxy`
(alone, and under a compressing one), on ``kvs.memory``, ``kvs.sqlite`` and
``kvs.redis`` over fakeredis with Lua.

Leases are long (60 s), so none expires during a run: a lease is lost only
by ``break_lock``, which the model follows exactly.  Invariants, checked
after every step:

* at most one valid lease per key, and it is the model's holder;
* every accepted locked write came from the valid holder (a write by anyone
  else raised ``LeaseLost``), checked in the rules;
* ``get`` equals the last accepted write (or ``NotFound``);
* no locked call returns normally without its write having landed: right
  after each accepted write, the backend itself (below the proxies) holds it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import kvs
import kvs.testing
from kvs import exception
from tests.contract.test_write_path import Compressing, LeaseThreadHop

KEYS = ("alpha", "beta")
CLIENTS = (0, 1, 2)
MISSING = object()

STACKS = {
    "thread hop": [LeaseThreadHop],
    "compress over thread hop": [Compressing, LeaseThreadHop],
}


@contextlib.contextmanager
def make_store(backend: str, proxies: list[Any]) -> Iterator[kvs.KeyValueStore]:
    args: dict[str, Any] = {"proxy_list": list(proxies), "lock_timeout": 60,
                            "lock_wait_timeout": 0}
    if backend == "fakeredis":
        with kvs.testing.fakeredis_store("machine", **args) as store:
            yield store
        return
    directory = tempfile.mkdtemp(prefix="kvs-store-machine-")
    try:
        with kvs.testing.isolated_stores():
            store = kvs.get_key_value_store("machine")
            if backend == "sqlite":
                args["filename"] = f"{directory}/machine.sqlite3"
            store.configure(f"kvs.{backend}", **args)
            yield store
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class StoreMachine(RuleBasedStateMachine):
    backend = "memory"
    stack = "thread hop"

    def __init__(self) -> None:
        super().__init__()
        self._context = make_store(self.backend, STACKS[self.stack])
        self.store = self._context.__enter__()
        self.raw = self.store.region.actual_backend
        self.locks: dict[tuple[int, str], kvs.KeyValueStoreLock] = {}
        #: key -> token of the valid lease, as the model sees it
        self.holder: dict[str, str | None] = {key: None for key in KEYS}
        #: key -> last accepted value
        self.value: dict[str, Any] = {key: MISSING for key in KEYS}
        self.counter = 0

    def teardown(self) -> None:
        self._context.__exit__(None, None, None)

    def _landed(self, key: str) -> bool:
        """The backend itself, below the proxies, holds something for ``key``."""
        from dogpile.cache.api import NO_VALUE
        return self.raw.get_serialized(self.store.backend_key(key)) is not NO_VALUE

    @rule(client=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS))
    def acquire(self, client: int, key: str) -> None:
        lock = self.locks.get((client, key))
        if lock is not None and lock.active:
            return  # not re-entrant
        lock = self.store.get_lock(key)
        if self.holder[key] is None:
            lock.acquire()
            self.holder[key] = lock.token
            self.locks[(client, key)] = lock
        else:
            with pytest.raises(exception.LockAcquireTimeout):
                lock.acquire()

    @rule(client=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS))
    def locked_set(self, client: int, key: str) -> None:
        lock = self.locks.get((client, key))
        if lock is None or not lock.active:
            return
        self.counter += 1
        value = {"n": self.counter, "by": client}
        if lock.token == self.holder[key]:
            self.store.set(key, value, lock=lock)
            self.value[key] = value
            assert self._landed(key)
        else:
            before = self.value[key]
            with pytest.raises(exception.LeaseLost):
                self.store.set(key, value, lock=lock)
            assert self.value[key] is before

    @rule(client=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS))
    def locked_delete(self, client: int, key: str) -> None:
        lock = self.locks.get((client, key))
        if lock is None or not lock.active:
            return
        if lock.token != self.holder[key]:
            with pytest.raises(exception.LeaseLost):
                self.store.delete(key, lock=lock)
        elif self.value[key] is MISSING:
            with pytest.raises(exception.NotFound):
                self.store.delete(key, lock=lock)
        else:
            self.store.delete(key, lock=lock)
            self.value[key] = MISSING
            assert not self._landed(key)

    @rule(client=st.sampled_from(CLIENTS), key=st.sampled_from(KEYS))
    def release(self, client: int, key: str) -> None:
        lock = self.locks.pop((client, key), None)
        if lock is None:
            return
        lock.release()
        if lock.token == self.holder[key]:
            self.holder[key] = None

    @rule(key=st.sampled_from(KEYS))
    def break_lock(self, key: str) -> None:
        assert self.store.break_lock(key) is (self.holder[key] is not None)
        self.holder[key] = None

    @rule(key=st.sampled_from(KEYS))
    def update(self, key: str) -> None:
        if self.holder[key] is not None:
            with pytest.raises(exception.LockAcquireTimeout):
                self.store.update(key, lambda v: v, default=None)
            return
        self.counter += 1
        new = {"n": self.counter, "by": "update"}
        assert self.store.update(key, lambda _old: new, default=None) == new
        self.value[key] = new
        assert self._landed(key)

    @invariant()
    def one_valid_lease_which_is_the_models(self) -> None:
        for key in KEYS:
            info = self.store.lease_info(key)
            assert (None if info is None else info.token) == self.holder[key]

    @invariant()
    def get_equals_last_accepted_write(self) -> None:
        for key in KEYS:
            if self.value[key] is MISSING:
                assert not self.store.exists(key)
            else:
                assert self.store.get(key) == self.value[key]


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("backend", ["memory", "sqlite", "fakeredis"])
def test_store_with_proxies_keeps_the_lease_contract(backend: str, stack: str) -> None:
    machine = type(f"StoreMachine_{backend}", (StoreMachine,),
                   {"backend": backend, "stack": stack})
    runner = machine.TestCase
    runner.settings = settings(max_examples=25, stateful_step_count=30, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow])
    runner("runTest").runTest()
