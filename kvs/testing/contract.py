"""The lease contract as a test suite, for any kvs backend (yours too).

In the way dogpile ships ``dogpile.testing.fixtures``: subclass
:class:`LeaseBackendContract` in a pytest module, say how to build your
backend, and pytest runs every promise of :mod:`kvs.backends.base` against it::

    from kvs.testing.contract import LeaseBackendContract

    class TestMyBackend(LeaseBackendContract):
        backend = "mypkg.lease_backend"          # a registered dogpile backend name
        arguments = {"url": "myserver://127.0.0.1:7000"}

Override :meth:`LeaseBackendContract.make_backend` instead when the
arguments come from fixtures (servers started by the test run).  Every test
works on keys of its own (``contract:<random>``), so the suite can share a
server with other tests.

Class attributes:

``expiry_slack``
    Seconds a backend may keep a lease or value past its TTL (memcached
    counts whole seconds: 2.5).  Tests wait ``ttl + expiry_slack``.
``shared``
    False for a backend whose instances share no data (kvs.memory): the
    tests that need two instances on one data space are skipped.

Each test states one promise in its name and docstring; the suite needs
pytest and nothing else.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from dogpile.cache.api import NO_VALUE, CacheMutex
from dogpile.cache.region import _backend_loader

from kvs import exception
from kvs.backends.base import Fenced, LeaseBackend

__all__ = ["LeaseBackendContract"]

_VALUE = b'{"ct":1.0,"v":2}|\xa5value'


class LeaseBackendContract:
    """pytest tests of the lease contract; subclass with ``backend``/``arguments``."""

    backend: ClassVar[str] = ""
    arguments: ClassVar[Mapping[str, Any]] = {}
    expiry_slack: ClassVar[float] = 0.3
    shared: ClassVar[bool] = True

    def make_backend(self) -> LeaseBackend:
        """A new backend instance (override when arguments come from fixtures)."""
        if not self.backend:
            raise NotImplementedError("set `backend` (and `arguments`) or override make_backend")
        return _backend_loader.load(self.backend)(dict(self.arguments))  # type: ignore[no-any-return]

    # -- helpers -------------------------------------------------------------

    @pytest.fixture
    def lb(self) -> LeaseBackend:
        backend = self.make_backend()
        assert isinstance(backend, LeaseBackend), "a kvs backend derives from LeaseBackend"
        return backend

    @pytest.fixture
    def key(self) -> str:
        return f"contract:{os.urandom(8).hex()}"

    @staticmethod
    def token() -> str:
        return os.urandom(16).hex()

    def wait_past(self, ttl: float) -> None:
        time.sleep(ttl + self.expiry_slack)

    # -- data ----------------------------------------------------------------

    def test_missing_keys_read_as_no_value(self, lb: LeaseBackend, key: str) -> None:
        assert lb.get_serialized(key) is NO_VALUE
        assert lb.get_serialized_multi([key, key + "b"]) == [NO_VALUE, NO_VALUE]
        assert lb.plain_delete(key) is False

    def test_plain_writes_store_bytes_as_given(self, lb: LeaseBackend, key: str) -> None:
        lb.plain_set(key, _VALUE, None)
        assert bytes(lb.get_serialized(key)) == _VALUE  # type: ignore[arg-type]
        lb.plain_set_multi({key + "a": b"1", key + "b": b"2"}, None)
        got = lb.get_serialized_multi([key + "a", key + "missing", key + "b"])
        assert [bytes(v) if v is not NO_VALUE else v for v in got] == [b"1", NO_VALUE, b"2"]
        assert lb.plain_delete(key) is True and lb.get_serialized(key) is NO_VALUE
        lb.delete_multi([key + "a", key + "b", key + "never"])
        assert lb.get_serialized_multi([key + "a", key + "b"]) == [NO_VALUE, NO_VALUE]

    def test_a_value_with_a_ttl_expires(self, lb: LeaseBackend, key: str) -> None:
        lb.plain_set(key, b"soon", 0.5)
        lb.plain_set(key + "kept", b"kept", None)
        assert bytes(lb.get_serialized(key)) == b"soon"  # type: ignore[arg-type]
        self.wait_past(0.5)
        assert lb.get_serialized(key) is NO_VALUE
        assert bytes(lb.get_serialized(key + "kept")) == b"kept"  # type: ignore[arg-type]

    def test_oversized_values_are_refused_and_nothing_changes(self, key: str) -> None:
        backend = self._limited()
        backend.plain_set(key, b"old", None)
        with pytest.raises(exception.ValueTooLarge):
            backend.plain_set(key, b"x" * 65, None)
        with pytest.raises(exception.ValueTooLarge):
            backend.plain_set_multi({key: b"x" * 65, key + "b": b"small"}, None)
        assert bytes(backend.get_serialized(key)) == b"old"  # type: ignore[arg-type]
        assert backend.get_serialized(key + "b") is NO_VALUE

    def _limited(self) -> LeaseBackend:
        backend = self.make_backend()
        backend.max_value_size = 64  # what the max_value_size argument sets
        return backend

    # -- leases --------------------------------------------------------------

    def test_a_free_lease_is_granted_with_a_fence(self, lb: LeaseBackend, key: str) -> None:
        holder = self.token()
        fence = lb.acquire_lease(key, holder, 5)
        assert isinstance(fence, int)
        info = lb.lease_info(key)
        assert info is not None and info.token == holder and info.fence == fence
        assert info.remaining is not None and 0 < info.remaining <= 5 + 3  # padding allowed

    def test_a_held_lease_is_refused_to_others(self, lb: LeaseBackend, key: str) -> None:
        holder, other = self.token(), self.token()
        assert lb.acquire_lease(key, holder, 5) is not None
        assert lb.acquire_lease(key, other, 5) is None
        assert lb.lease_info(key).token == holder  # type: ignore[union-attr]

    def test_the_holder_may_acquire_again(self, lb: LeaseBackend, key: str) -> None:
        """A retried acquire (its reply was lost) succeeds for the same token."""
        holder = self.token()
        assert lb.acquire_lease(key, holder, 5) is not None
        assert lb.acquire_lease(key, holder, 5) is not None
        assert lb.lease_info(key).token == holder  # type: ignore[union-attr]

    def test_fences_strictly_increase_across_grants(self, lb: LeaseBackend, key: str) -> None:
        fences = []
        for _ in range(5):
            holder = self.token()
            fence = lb.acquire_lease(key, holder, 5)
            assert fence is not None
            fences.append(fence)
            assert lb.release_lease(key, holder) is True
        assert fences == sorted(fences) and len(set(fences)) == 5

    def test_only_the_holder_releases(self, lb: LeaseBackend, key: str) -> None:
        holder, other = self.token(), self.token()
        lb.acquire_lease(key, holder, 5)
        assert lb.release_lease(key, other) is False
        assert lb.lease_info(key).token == holder  # type: ignore[union-attr]
        assert lb.release_lease(key, holder) is True
        assert lb.lease_info(key) is None
        assert lb.release_lease(key, holder) is False

    def test_only_the_holder_extends(self, lb: LeaseBackend, key: str) -> None:
        holder, other = self.token(), self.token()
        lb.acquire_lease(key, holder, 1)
        assert lb.extend_lease(key, other, 10) is False
        assert lb.extend_lease(key, holder, 10) is True
        remaining = lb.lease_info(key).remaining  # type: ignore[union-attr]
        assert remaining is not None and remaining > 5

    def test_an_expired_lease_can_be_taken(self, lb: LeaseBackend, key: str) -> None:
        first, second = self.token(), self.token()
        fence = lb.acquire_lease(key, first, 0.4)
        self.wait_past(0.4)
        later = lb.acquire_lease(key, second, 5)
        assert later is not None and fence is not None and later > fence
        assert lb.release_lease(key, first) is False      # the old holder is out
        assert lb.extend_lease(key, first, 5) is False
        assert lb.fenced_set(key, b"late", first, None) is Fenced.LEASE_LOST
        assert lb.get_serialized(key) is NO_VALUE

    def test_persisted_leases_do_not_expire(self, lb: LeaseBackend, key: str) -> None:
        holder = self.token()
        lb.acquire_lease(key, holder, 0.4)
        assert lb.persist_lease(key, self.token()) is False
        assert lb.persist_lease(key, holder) is True
        self.wait_past(0.4)
        info = lb.lease_info(key)
        assert info is not None and info.token == holder and info.remaining is None
        assert lb.acquire_lease(key, self.token(), 5) is None

    def test_break_lease_frees_the_key(self, lb: LeaseBackend, key: str) -> None:
        holder = self.token()
        fence = lb.acquire_lease(key, holder, 5)
        assert lb.break_lease(key) is True
        assert lb.lease_info(key) is None
        assert lb.fenced_set(key, b"v", holder, None) is Fenced.LEASE_LOST
        taken = lb.acquire_lease(key, self.token(), 5)
        assert taken is not None and fence is not None and taken > fence
        assert lb.break_lease(key + "free") is False

    # -- fenced writes -------------------------------------------------------

    def test_fenced_writes_land_only_for_the_holder(self, lb: LeaseBackend, key: str) -> None:
        holder, other = self.token(), self.token()
        assert lb.fenced_set(key, b"nobody", holder, None) is Fenced.LEASE_LOST
        lb.acquire_lease(key, holder, 5)
        assert lb.fenced_set(key, b"intruder", other, None) is Fenced.LEASE_LOST
        assert lb.get_serialized(key) is NO_VALUE
        assert lb.fenced_set(key, b"mine", holder, None) is Fenced.WRITTEN
        assert bytes(lb.get_serialized(key)) == b"mine"  # type: ignore[arg-type]

    def test_fenced_delete(self, lb: LeaseBackend, key: str) -> None:
        holder, other = self.token(), self.token()
        lb.acquire_lease(key, holder, 5)
        assert lb.fenced_delete(key, holder) is Fenced.MISSING
        lb.fenced_set(key, b"v", holder, None)
        assert lb.fenced_delete(key, other) is Fenced.LEASE_LOST
        assert bytes(lb.get_serialized(key)) == b"v"  # type: ignore[arg-type]
        assert lb.fenced_delete(key, holder) is Fenced.WRITTEN
        assert lb.get_serialized(key) is NO_VALUE

    def test_a_fenced_write_with_a_ttl_expires(self, lb: LeaseBackend, key: str) -> None:
        holder = self.token()
        lb.acquire_lease(key, holder, 5)
        assert lb.fenced_set(key, b"v", holder, 0.5) is Fenced.WRITTEN
        self.wait_past(0.5)
        assert lb.get_serialized(key) is NO_VALUE

    def test_combined_calls_keep_the_contract(self, lb: LeaseBackend, key: str) -> None:
        holder, other = self.token(), self.token()
        lb.plain_set(key, b"before", None)
        fence, value = lb.acquire_lease_and_get(key, holder, 5)
        assert fence is not None and bytes(value) == b"before"  # type: ignore[arg-type]
        assert lb.acquire_lease_and_get(key, other, 5) == (None, NO_VALUE)
        assert lb.fenced_set_and_release(key, b"after", other, None) is Fenced.LEASE_LOST
        assert lb.fenced_set_and_release(key, b"after", holder, None) is Fenced.WRITTEN
        assert bytes(lb.get_serialized(key)) == b"after"  # type: ignore[arg-type]
        assert lb.lease_info(key) is None

    def test_only_one_of_many_threads_holds_the_lease(self, lb: LeaseBackend, key: str) -> None:
        winners: list[str] = []
        barrier = threading.Barrier(8)

        def contend() -> None:
            holder = self.token()
            barrier.wait()
            if lb.acquire_lease(key, holder, 5) is not None:
                winners.append(holder)

        threads = [threading.Thread(target=contend) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(winners) == 1 and lb.lease_info(key).token == winners[0]  # type: ignore[union-attr]

    def test_two_instances_share_leases(self, lb: LeaseBackend, key: str) -> None:
        if not self.shared:
            pytest.skip("this backend's instances share no data")
        other = self.make_backend()
        holder = self.token()
        lb.acquire_lease(key, holder, 5)
        assert other.acquire_lease(key, self.token(), 5) is None
        assert other.fenced_set(key, b"v", holder, None) is Fenced.WRITTEN
        assert bytes(lb.get_serialized(key)) == b"v"  # type: ignore[arg-type]

    # -- dogpile's side -------------------------------------------------------

    def test_get_mutex_is_the_lease(self, lb: LeaseBackend, key: str) -> None:
        mutex = lb.get_mutex(key)
        assert isinstance(mutex, CacheMutex)
        assert mutex.acquire(wait=False) is True
        try:
            assert lb.get_mutex(key).acquire(wait=False) is False
            assert lb.acquire_lease(key, self.token(), 5) is None
        finally:
            mutex.release()
        assert lb.lease_info(key) is None

    def test_ping(self, lb: LeaseBackend) -> None:
        lb.ping()
