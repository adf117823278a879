"""How each backend is set up for a run: its kvs store, raw client and dogpile region.

A :class:`BackendSetup` is built in the parent process and inherited by forked
workers, which call its factories again to get their own connections.  A
backend that cannot run (server missing, backend module missing or failing)
is kept with ``available = False`` and the reason, so the report can say
"not available" instead of showing a number.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kvs
import kvs.testing
from benchmarks.baselines import DogpileRegion, RawMemcached, RawMemory, RawRedis, RawSQLite
from benchmarks.etcd_baselines import RawEtcd
from benchmarks.servers import ServerSet
from benchmarks.subjects import KVSSubject, Subject

#: Backends in the order of every table.
BACKENDS = ("memory", "sqlite", "redis", "redis_near", "memcached", "etcd")


@dataclasses.dataclass
class BackendSetup:
    """Everything needed to measure one backend, in this process or a forked worker."""

    name: str
    kvs_config: dict[str, Any]
    raw_factory: Callable[[], Subject] | None
    dogpile_factory: Callable[[], Subject] | None
    #: Data lives in one process: concurrency uses threads, not processes.
    process_local: bool = False
    available: bool = True
    reason: str | None = None
    dogpile_missing: str | None = None
    #: Extra backend arguments for a fresh store of the scaling runs.
    scratch_config: Callable[[str], dict[str, Any]] | None = None
    #: A raw-client store of its own (by tag) for the store-size run; on a
    #: server, its keys carry the tag instead.
    raw_scratch: Callable[[str], Subject] | None = None
    #: How many of the profile's largest store sizes this backend leaves out.
    store_sizes_skipped: int = 0
    #: Measured in the ops phase only (a variant of another backend's setup).
    ops_only: bool = False
    #: The get rows read every key twice before timing (hot keys, for a near cache).
    hot_reads: bool = True

    def store_sizes(self, sizes: tuple[int, ...]) -> tuple[int, ...]:
        """The store sizes of the scaling run for this backend (at least the smallest)."""
        return sizes[:max(1, len(sizes) - self.store_sizes_skipped)]

    def make_store(self, name: str, **overrides: Any) -> kvs.KeyValueStore:
        """A configured store; an existing one of that name (same process) is reused."""
        store = kvs.get_key_value_store(name)
        if not store.is_configured:
            store.configure(**{**self.kvs_config, **overrides})
        return store

    def kvs_subject(self, name: str, **overrides: Any) -> KVSSubject:
        return KVSSubject(self.make_store(name, **overrides))

    def reopen_after_fork(self) -> None:
        """In a forked worker: forget the parent's stores (and their connections)."""
        if not self.process_local:
            kvs.testing.reset_registry()


def _shared(factory: Callable[[], Subject]) -> Callable[[], Subject]:
    """One instance for every caller: threads of one process must share the dict."""
    instance: list[Subject] = []
    lock = threading.Lock()

    def get() -> Subject:
        with lock:
            if not instance:
                instance.append(factory())
            return instance[0]

    return get


def _probe(setup: BackendSetup) -> None:
    """Mark ``setup`` unavailable, with the reason, if a store cannot write and read."""
    if not setup.available:
        return
    try:
        store = setup.make_store(f"probe-{uuid.uuid4().hex[:8]}")
        store.set("probe", {"ok": 1})
        if store.get("probe") != {"ok": 1}:
            raise RuntimeError("read back a different value")
    except Exception as exc:  # any failure means: report it, do not measure
        setup.available = False
        setup.reason = f"kvs.{setup.name} failed: {type(exc).__name__}: {exc}"
    if not setup.available:
        return
    for factory in (setup.raw_factory, setup.dogpile_factory):
        if factory is None:
            continue
        try:
            factory()
        except Exception as exc:
            setup.available = False
            setup.reason = f"baseline for {setup.name} failed: {type(exc).__name__}: {exc}"


def _unavailable(name: str, reason: str) -> BackendSetup:
    return BackendSetup(name=name, kvs_config={}, raw_factory=None, dogpile_factory=None,
                        available=False, reason=reason)


def build(servers: ServerSet, workdir: Path, wanted: tuple[str, ...] = BACKENDS
          ) -> dict[str, BackendSetup]:
    """Set up every wanted backend; unavailable ones carry their reason."""
    setups: dict[str, BackendSetup] = {}
    if "memory" in wanted:
        setups["memory"] = BackendSetup(
            name="memory", kvs_config={"backing_store": "kvs.memory"},
            raw_factory=_shared(RawMemory),
            dogpile_factory=_shared(lambda: DogpileRegion("dogpile.cache.memory_pickle")),
            process_local=True,
            raw_scratch=lambda tag: RawMemory())
    if "sqlite" in wanted:
        setups["sqlite"] = BackendSetup(
            name="sqlite",
            kvs_config={"backing_store": "kvs.sqlite", "filename": str(workdir / "kvs.sqlite3")},
            raw_factory=lambda: RawSQLite(str(workdir / "raw.sqlite3")),
            dogpile_factory=None,
            dogpile_missing="dogpile.cache has no SQLite backend",
            scratch_config=lambda tag: {"filename": str(workdir / f"{tag}.sqlite3")},
            raw_scratch=lambda tag: RawSQLite(str(workdir / f"raw-{tag}.sqlite3")))
    if "redis" in wanted:
        if servers.redis is None:
            setups["redis"] = _unavailable(
                "redis", servers.problems.get("redis", "redis-server not started"))
        else:
            port = servers.redis.port
            setups["redis"] = BackendSetup(
                name="redis", kvs_config={"backing_store": "kvs.redis", "url": servers.redis.url},
                raw_factory=lambda: RawRedis(port),
                raw_scratch=lambda tag: RawRedis(port),
                dogpile_factory=lambda: DogpileRegion("dogpile.cache.redis", {
                    "host": "127.0.0.1", "port": port, "distributed_lock": True,
                    "thread_local_lock": False, "lock_timeout": 5}))
    if "redis_near" in wanted and servers.redis is not None:
        # kvs.redis with near_cache = true, against the same raw redis-py client:
        # hot reads come from process memory (issue 16, target 4).
        near_port = servers.redis.port
        setups["redis_near"] = BackendSetup(
            name="redis_near",
            kvs_config={"backing_store": "kvs.redis", "url": servers.redis.url,
                        "near_cache": True},
            raw_factory=lambda: RawRedis(near_port), dogpile_factory=None,
            dogpile_missing="dogpile.cache has no near cache", ops_only=True)
    if "memcached" in wanted:
        if servers.memcached is None:
            setups["memcached"] = _unavailable(
                "memcached", servers.problems.get("memcached", "memcached not started"))
        else:
            mc_port = servers.memcached.port
            setups["memcached"] = BackendSetup(
                name="memcached",
                kvs_config={"backing_store": "kvs.memcached",
                            "servers": [servers.memcached.address]},
                raw_factory=lambda: RawMemcached(mc_port),
                raw_scratch=lambda tag: RawMemcached(mc_port),
                dogpile_factory=lambda: DogpileRegion("dogpile.cache.pymemcache", {
                    "url": f"127.0.0.1:{mc_port}", "distributed_lock": True,
                    "lock_timeout": 5}))
    if "etcd" in wanted:
        if servers.etcd is None:
            setups["etcd"] = _unavailable(
                "etcd", servers.problems.get("etcd", "etcd cluster not started"))
        else:
            # kvs gets every member and talks to the first; the raw client gets the first.
            host, etcd_port = servers.etcd.first
            setups["etcd"] = BackendSetup(
                name="etcd",
                # timeout: the value-size run's set_multi of 8 values of 1 MB (one
                # transaction) takes more than the default 2 s on a small machine.
                kvs_config={"backing_store": "kvs.etcd", "endpoints": servers.etcd.endpoints,
                            "timeout": 10.0},
                raw_factory=lambda: RawEtcd(host, etcd_port),
                raw_scratch=lambda tag: RawEtcd(host, etcd_port),
                dogpile_factory=None,
                dogpile_missing="dogpile.cache has no etcd backend",
                # Every write goes through Raft: growing to 1M keys (100k in --quick),
                # kvs and raw, would take minutes; etcd stops one size short.
                store_sizes_skipped=1,
                # No cache between kvs.etcd and etcd to warm, and 2000 linearizable
                # reads per subject before each get row would add a minute to --quick.
                hot_reads=False)
    for setup in setups.values():
        _probe(setup)
    return setups
