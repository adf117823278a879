"""Helpers for the tests of applications that use kvs (like oslo.cache's).

``isolated_stores()`` gives a clean registry for the block and restores the
previous one afterwards.  ``memory_store()`` gives a configured in-memory store;
``fakeredis_store()`` a ``kvs.redis`` store on fakeredis with Lua, so leases and
fenced writes run the very scripts they run on Redis, with no server.  All work
as plain context managers and from pytest fixtures::

    @pytest.fixture
    def store():
        with kvs.testing.fakeredis_store("sessions") as store:
            yield store

Each call starts from an empty registry and (for fakeredis) an empty server,
so tests never see each other's data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from kvs import core


def reset_registry() -> None:
    """Forget every store, declared-store provider and the service's ``[kvs]``
    defaults (see :func:`kvs.register_opts`) of this process (tests only)."""
    from kvs import provider

    provider.reset_providers()
    core._clear_registry()
    core.use_service_defaults(None)
    with core._EXTRA_BACKENDS_LOCK:
        core._EXTRA_BACKENDS.clear()


@contextlib.contextmanager
def isolated_stores() -> Iterator[None]:
    """Run the block with an empty registry and no service defaults; restore both after."""
    with core._REGISTRY_LOCK:
        saved = dict(core._REGISTRY)
        core._REGISTRY.clear()
    service = core._SERVICE_CONF
    core.use_service_defaults(None)
    try:
        yield
    finally:
        core.use_service_defaults(service)
        with core._REGISTRY_LOCK:
            core._REGISTRY.clear()
            core._REGISTRY.update(saved)


@contextlib.contextmanager
def memory_store(name: str = "test", **configure_args: Any) -> Iterator[core.KeyValueStore]:
    """A configured ``kvs.memory`` store in an isolated registry."""
    with isolated_stores():
        store = core.get_key_value_store(name)
        store.configure("kvs.memory", **configure_args)
        yield store


@contextlib.contextmanager
def fakeredis_store(name: str = "test", **configure_args: Any) -> Iterator[core.KeyValueStore]:
    """A configured ``kvs.redis`` store on a fresh fakeredis server (needs fakeredis[lua])."""
    try:
        import fakeredis
    except ImportError:  # pragma: no cover - depends on the environment
        raise RuntimeError("kvs.testing.fakeredis_store needs 'fakeredis[lua]'") from None
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    try:
        with isolated_stores():
            store = core.get_key_value_store(name)
            store.configure("kvs.redis", client=client, **configure_args)
            yield store
    finally:
        client.close()
