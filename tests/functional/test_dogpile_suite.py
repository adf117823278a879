"""dogpile.cache's own generic backend suites, run against every kvs backend.

``dogpile.testing.fixtures`` is what dogpile runs on its own backends: the
region API with and without a serializer on the region, and the mutex API.
One backend of each kind runs every suite (the TLS, ACL and multi-server
variants differ in connection set-up only, which the contract suite covers).

dogpile's two threaded region tests (``test_threaded_dogpile``,
``test_threaded_get_multi``) sleep through 13 s of dogpile's own expiry
timing; they run on memory and redis (in-process and over the network), and
are skipped on sqlite, memcached, Sentinel and Cluster, whose ``get``, ``set``
and ``*_multi`` calls every other test here covers.  (All 344 tests
passed on all six when this was written.)

One test is replaced: dogpile's ``test_argument_dictionary_unmodified`` adds
made-up argument names, which kvs backends refuse on purpose (an unknown
argument is a ``ConfigurationError`` naming it, so a typo never passes
silently).  Ours checks the same promise, the caller's dict left as it was,
with real arguments, and checks the refusal.
"""

from __future__ import annotations

from typing import Any

import pytest
from dogpile.testing.fixtures import (
    _GenericBackendTestSuite,
    _GenericMutexTestSuite,
    _GenericSerializerTestSuite,
)

from kvs import exception

BACKENDS = ["memory", "sqlite", "memcached", "redis", "redis_sentinel", "redis_cluster"]
THREADED_TIMING_TESTS = {"test_threaded_dogpile", "test_threaded_get_multi"}
THREADED_TIMING_BACKENDS = {"memory", "redis"}


class _OnKvsBackend:
    """Takes the backend and its arguments from the servers this test run started."""

    kvs_backend: str

    @classmethod
    def setup_class(cls) -> None:
        # dogpile builds a backend here to see if it is installed; ours are, and
        # their arguments (server addresses) only exist once the fixtures ran.
        pass

    @pytest.fixture(autouse=True)
    def _kvs_backend_arguments(self, request: pytest.FixtureRequest) -> None:
        if (request.node.originalname in THREADED_TIMING_TESTS
                and self.kvs_backend not in THREADED_TIMING_BACKENDS):
            pytest.skip("dogpile's threaded timing tests run on memory and redis")
        config = dict(request.getfixturevalue(f"{self.kvs_backend}_backend_config"))
        type(self).backend = config.pop("backing_store")  # type: ignore[attr-defined]
        type(self).config_args = {"arguments": config}  # type: ignore[attr-defined]

    def test_argument_dictionary_unmodified(self) -> None:
        from dogpile.cache.region import CacheRegion

        arguments = {**self.config_args["arguments"], "max_value_size": 1024,  # type: ignore[attr-defined]
                     "mutex_timeout": 2}
        copy = dict(arguments)
        CacheRegion().configure(self.backend, arguments=arguments)  # type: ignore[attr-defined]
        assert arguments == copy
        with pytest.raises(exception.ConfigurationError, match="arbitrary_arg_one"):
            CacheRegion().configure(self.backend,  # type: ignore[attr-defined]
                                    arguments={**arguments, "arbitrary_arg_one": "foo"})
        assert arguments == copy


def _suites() -> dict[str, type]:
    made: dict[str, type] = {}
    for backend in BACKENDS:
        title = "".join(part.title() for part in backend.split("_"))
        for suffix, bases in (
                ("Plain", (_GenericBackendTestSuite,)),
                ("Serialized", (_GenericSerializerTestSuite, _GenericBackendTestSuite)),
                ("Mutex", (_GenericMutexTestSuite,))):
            name = f"TestDogpile{suffix}{title}"
            made[name] = type(name, (_OnKvsBackend, *bases), {"kvs_backend": backend})
    return made


globals().update(_suites())


def test_every_suite_is_collected() -> None:
    names = [name for name in globals() if name.startswith("TestDogpile")]
    assert len(names) == 3 * len(BACKENDS)


def test_kvs_backends_expose_dogpile_attributes(sqlite_backend_config: dict[str, Any]) -> None:
    from dogpile.cache.api import CacheMutex
    from dogpile.cache.region import _backend_loader

    config = dict(sqlite_backend_config)
    backend = _backend_loader.load(config.pop("backing_store"))(config)
    assert isinstance(backend.get_mutex("k"), CacheMutex)
