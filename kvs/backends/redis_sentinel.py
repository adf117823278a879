"""``kvs.redis_sentinel``: fenced leases on a Redis master found through Sentinel.

The backend is :class:`kvs.backends.redis.RedisBackend` (same scripts, same
key layout) with a different client: dogpile.cache's ``RedisSentinelBackend``
builds a redis-py ``Sentinel`` and a master client from our arguments, and we
keep that client.  Reads go to the master too, so a process always reads its
own writes; ``read_from_replicas = true`` sends plain reads (never lease
scripts) to a replica instead.

After a failover redis-py asks the sentinels for the new master on the next
connection, so the store serves again without a restart.  Replication is
asynchronous: a lease or a write acknowledged by the old master may be lost
in a failover.  ``wait_replicas`` narrows that window (WAIT after each data
write); ``doc/backends/redis.md`` says exactly what it does and does not buy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from kvs import exception
from kvs.backends.base import ArgumentSpec, LeaseBackend, parse_node
from kvs.backends.redis import (
    CONNECTION_ARGUMENTS,
    NEAR_CACHE_ARGUMENTS,
    REPLICATION_ARGUMENTS,
    RedisBackend,
)


class RedisSentinelBackend(RedisBackend):
    """``kvs.redis_sentinel``: a master/replica group behind Redis Sentinel."""

    name = "kvs.redis_sentinel"

    queues_for_connections = False

    arguments: ClassVar[dict[str, ArgumentSpec]] = {
        **LeaseBackend.arguments,
        **CONNECTION_ARGUMENTS,
        **REPLICATION_ARGUMENTS,
        "sentinels": ArgumentSpec("list"),
        "service_name": ArgumentSpec("str", default="mymaster"),
        "db": ArgumentSpec("int", minimum=0),
        "sentinel_username": ArgumentSpec("str"),
        "sentinel_password": ArgumentSpec("str", secret=True),
        "sentinel_ssl": ArgumentSpec("bool", default=False),
        "read_from_replicas": ArgumentSpec("bool", default=False),
        "hash_tags": ArgumentSpec("bool", default=False),
        **NEAR_CACHE_ARGUMENTS,
    }

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        self.sentinel_nodes: list[tuple[str, int]] = []
        super().__init__(arguments)

    def _check_arguments(self) -> None:
        if not self.options["sentinels"]:
            raise exception.ConfigurationError(
                "kvs.redis_sentinel needs the argument 'sentinels' (host:port, ...)",
                option="sentinels")
        if not self.options["service_name"]:
            raise exception.ConfigurationError(
                "kvs.redis_sentinel needs a non-empty 'service_name'", option="service_name")
        self.sentinel_nodes = [parse_node("sentinels", text) for text in self.options["sentinels"]]
        self._check_ssl()
        self._check_pool()
        self._check_wait()
        if self.options["near_cache"] and self.options["read_from_replicas"]:
            # Invalidations come from the master, but a replica can still answer
            # the old value after one: the near cache would keep it.
            raise exception.ConfigurationError(
                "near_cache needs reads on the master: it cannot be combined with "
                "read_from_replicas", option="near_cache")

    def _describe_endpoint(self) -> str:
        nodes = ",".join(f"{host}:{port}" for host, port in self.sentinel_nodes)
        return f"service {self.options['service_name']!r} via sentinels {nodes}"

    def _socket_timeout(self) -> float | None:
        return float(self.options["socket_timeout"])

    def _sentinel_kwargs(self, master_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Connection keywords for the sentinels themselves (their own auth, optional TLS)."""
        options = self.options
        kwargs = {name: master_kwargs[name] for name in
                  ("socket_timeout", "socket_connect_timeout", "retry")}
        # Sentinels have no databases; SELECT would fail there.
        kwargs.update(db=0, username=options["sentinel_username"],
                      password=options["sentinel_password"])
        if options["sentinel_ssl"]:
            kwargs["ssl"] = True
            for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
                         "ssl_check_hostname"):
                if name in master_kwargs:
                    kwargs[name] = master_kwargs[name]
        return kwargs

    def _create_clients(self) -> tuple[Any, Any]:
        from dogpile.cache.backends.redis import RedisSentinelBackend as DogpileSentinel

        options = self.options
        kwargs = self._connection_kwargs()
        connector = DogpileSentinel({
            "sentinels": self.sentinel_nodes,
            "service_name": options["service_name"],
            "sentinel_kwargs": self._sentinel_kwargs(kwargs),
            "connection_kwargs": kwargs,
            "username": options["username"],
            "password": options["password"],
            "db": options["db"] or 0,
        })
        reader = connector.reader_client if options["read_from_replicas"] else None
        return connector.writer_client, reader or connector.writer_client
