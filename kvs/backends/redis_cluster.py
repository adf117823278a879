"""``kvs.redis_cluster``: fenced leases on a Redis Cluster.

The backend is :class:`kvs.backends.redis.RedisBackend` (same scripts, same
key layout) on a redis-py ``RedisCluster`` built by dogpile.cache's
``RedisClusterBackend`` from our arguments.  The key layout puts a key's
value, lease, fence counter and wake-up list under one hash tag, so every
lease script touches a single slot and stays one atomic call on one node.

Multi-key calls span slots: ``get_multi`` and ``set_multi`` group keys by slot
(redis-py's ``mget_nonatomic``/``mset_nonatomic``, one pipeline per node), so
they are atomic per slot only.  The client connects on first use, not at
``configure()``, so a service can start while the cluster is still down.
There is no ``wait_replicas``: WAIT only counts the writes of its own
connection, and cluster writes spread over one connection per node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from kvs import exception
from kvs.backends.base import ArgumentSpec, LeaseBackend, parse_node
from kvs.backends.redis import (
    CONNECTION_ARGUMENTS,
    RedisBackend,
    hash_tag,
    milliseconds,
)
from kvs.errors import translated


class RedisClusterBackend(RedisBackend):
    """``kvs.redis_cluster``: a Redis Cluster reached through its startup nodes."""

    name = "kvs.redis_cluster"

    queues_for_connections = False

    arguments: ClassVar[dict[str, ArgumentSpec]] = {
        **LeaseBackend.arguments,
        # redis-py's cluster client drops health_check_interval: not offered.
        **{name: spec for name, spec in CONNECTION_ARGUMENTS.items()
           if name != "health_check_interval"},
        "startup_nodes": ArgumentSpec("list"),
    }

    #: Waiters wait on the signal list: a release that granted the lease to a
    #: queued waiter would write a key its script does not name.
    grants_on_release: ClassVar[bool] = False

    #: redis-py's cluster client routes each command to a node's own pool.
    caches_connections: ClassVar[bool] = False

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        self.startup_nodes: list[tuple[str, int]] = []
        super().__init__(arguments)
        self.value_name = hash_tag  # always: a value must share its lease's slot

    def _check_arguments(self) -> None:
        if not self.options["startup_nodes"]:
            raise exception.ConfigurationError(
                "kvs.redis_cluster needs the argument 'startup_nodes' (host:port, ...)",
                option="startup_nodes")
        self.startup_nodes = [parse_node("startup_nodes", text)
                              for text in self.options["startup_nodes"]]
        self._check_ssl()
        self._check_pool()

    def _describe_endpoint(self) -> str:
        nodes = ",".join(f"{host}:{port}" for host, port in self.startup_nodes)
        return f"cluster via {nodes}"

    def _socket_timeout(self) -> float | None:
        return float(self.options["socket_timeout"])

    def _connection_kwargs(self) -> dict[str, Any]:
        kwargs = super()._connection_kwargs()
        kwargs.pop("health_check_interval", None)
        for name in ("username", "password"):
            if self.options[name] is not None:
                kwargs[name] = self.options[name]
        return kwargs

    def _create_clients(self) -> tuple[Any, Any]:
        from dogpile.cache.backends.redis import RedisClusterBackend as DogpileCluster
        from redis.cluster import ClusterNode

        connector = DogpileCluster({
            "startup_nodes": [ClusterNode(host, port) for host, port in self.startup_nodes],
            "connection_kwargs": self._connection_kwargs(),
        })
        return connector.writer_client, connector.reader_client

    @staticmethod
    def _is_redis_error(exc: BaseException) -> bool:
        import redis.exceptions

        return isinstance(exc, (redis.exceptions.RedisError,
                                redis.exceptions.RedisClusterException))

    # -- multi-key calls, grouped by slot -------------------------------------

    def _mget(self, names: list[str]) -> list[Any]:
        return self.reader.mget_nonatomic(names)  # type: ignore[no-any-return]

    @translated
    def plain_set_multi(self, mapping: Mapping[str, bytes], ttl: float | None) -> None:
        self.check_sizes(mapping)
        if not mapping:
            return
        value_name = self.value_name  # hash_tag: a value shares its lease's slot
        names = {value_name(key): value for key, value in mapping.items()}
        if ttl is None:
            self.client.mset_nonatomic(names)
            return
        pipe = self.client.pipeline()
        for name, value in names.items():
            pipe.set(name, value, px=milliseconds(ttl))
        pipe.execute()

    @translated
    def delete_multi(self, keys: Sequence[str]) -> None:  # type: ignore[override]
        if keys:
            # redis-py splits a multi-key DEL into one DEL per slot.
            self.client.delete(*[self.value_name(key) for key in keys])
