"""kvs.testing.contract, the lease contract suite shipped for third-party backends,
run on every kvs backend (so the suite is known to pass on a correct backend)."""

from __future__ import annotations

import pytest
from dogpile.cache.region import _backend_loader

from kvs.backends.base import LeaseBackend
from kvs.testing.contract import LeaseBackendContract

#: One configuration of each kvs backend (TLS, ACL and several servers change how a
#: backend connects, which the rest of the contract suite covers, not its leases).
BACKENDS = ["memory", "sqlite", "memcached", "redis", "redis_sentinel", "redis_cluster", "etcd"]


class TestEveryKvsBackend(LeaseBackendContract):
    @pytest.fixture(autouse=True, params=BACKENDS)
    def _backend_from_fixtures(self, request: pytest.FixtureRequest) -> None:
        backend_name = request.param
        self._config = dict(request.getfixturevalue(f"{backend_name}_backend_config"))
        # memcached and etcd count whole seconds and pad leases; memory instances
        # share nothing.
        self.expiry_slack = {"kvs.memcached": 2.6, "kvs.etcd": 2.2}.get(
            self._config["backing_store"], 0.3)
        self.shared = backend_name != "memory"

    def make_backend(self) -> LeaseBackend:
        config = dict(self._config)
        return _backend_loader.load(config.pop("backing_store"))(config)  # type: ignore[no-any-return]


class TestABrokenBackendFails:
    """The suite can fail: a backend that ignores the lease on fenced writes is caught."""

    def test_the_suite_catches_an_unfenced_write(self) -> None:
        from kvs.backends.base import Fenced
        from kvs.backends.memory import MemoryBackend

        class Unfenced(MemoryBackend):
            def fenced_set(self, key: str, value: bytes, token: str,
                           ttl: float | None) -> Fenced:
                self.plain_set(key, value, ttl)
                return Fenced.WRITTEN

        class Suite(LeaseBackendContract):
            def make_backend(self) -> LeaseBackend:
                return Unfenced({})

        suite = Suite()
        with pytest.raises(AssertionError):
            suite.test_fenced_writes_land_only_for_the_holder(suite.make_backend(), "k")
