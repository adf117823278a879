"""Shared pytest wiring.

Every backend joins the contract suite (tests/contract) by providing a fixture
``<name>_backend_config`` in its own module under tests/fixtures, listed in
``pytest_plugins``, and its name in ``CONTRACT_BACKENDS``.  The fixture returns
the keyword arguments of ``KeyValueStore.configure()``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import kvs
import kvs.testing

pytest_plugins = [
    "tests.fixtures.memory",
    "tests.fixtures.sqlite",
    "tests.fixtures.memcached",
    "tests.fixtures.redis",
    "tests.fixtures.etcd",
]

CONTRACT_BACKENDS = [
    "memory",
    "sqlite",
    "memcached",
    "memcached_multi",
    "memcached_tls",
    "redis",
    "redis_tls",
    "redis_acl",
    "redis_sentinel",
    "redis_cluster",
    "etcd",
]

#: Backends whose data lives in one process only: cross-process tests skip them.
PROCESS_LOCAL_BACKENDS = {"memory"}


@pytest.fixture(params=CONTRACT_BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend_config(request: pytest.FixtureRequest, backend_name: str) -> dict[str, Any]:
    return dict(request.getfixturevalue(f"{backend_name}_backend_config"))


@pytest.fixture
def shared_backend_config(backend_name: str, backend_config: dict[str, Any]) -> dict[str, Any]:
    """``backend_config`` of a backend whose data processes share; skips the others."""
    if backend_name in PROCESS_LOCAL_BACKENDS:
        pytest.skip(f"{backend_name} keeps data in one process")
    return dict(backend_config)


StoreFactory = Callable[..., kvs.KeyValueStore]


@pytest.fixture
def make_store(backend_config: dict[str, Any]) -> Iterator[StoreFactory]:
    """Build configured stores with fresh, unique names (so fresh key prefixes)."""
    with kvs.testing.isolated_stores():
        def factory(name: str | None = None, **overrides: Any) -> kvs.KeyValueStore:
            config = {**backend_config, **overrides}
            store = kvs.get_key_value_store(name or f"t-{uuid.uuid4().hex[:12]}")
            store.configure(**config)
            return store

        yield factory


@pytest.fixture
def store(make_store: StoreFactory) -> kvs.KeyValueStore:
    return make_store(lock_timeout=5, lock_wait_timeout=5)


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    yield
    kvs.testing.reset_registry()
