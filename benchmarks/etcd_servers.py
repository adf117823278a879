"""The benchmark's etcd: a 3-member cluster, started by :class:`benchmarks.servers.ServerSet`.

The cluster is the functional tests' own ``EtcdCluster``
(``tests/fixtures/etcd_servers.py``): real etcd members on free loopback
ports, data under /dev/shm (etcd fsyncs every write; on tmpfs that costs
nothing), 10 ms heartbeats.  This wrapper gives it the interface of the other
benchmark servers: ``start()`` raises :class:`~benchmarks.servers.ServerError`
with the reason, ``stop()`` stops every member and deletes the data, and a
cluster that landed on a default etcd port (2379/2380) is never used.

Both sides of the comparison talk to the first member: kvs gets every
endpoint but starts at the first (``kvs.etcd`` fails over only when a member
does not answer), and the raw etcd3gw client gets the first alone.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType
from typing import Any

from benchmarks.servers import FORBIDDEN_PORTS, ServerError

#: etcd's default client and peer ports: a server already on the machine may own them.
ETCD_FORBIDDEN_PORTS = FORBIDDEN_PORTS | {2379, 2380}
#: Members of the benchmark cluster.
MEMBERS = 3
#: The value-size run writes 8 values of 1 MB in one set_multi (one transaction):
#: etcd's default request limit is 1.5 MiB, so the benchmark cluster takes 16 MiB
#: (as the memcached server gets -I 4m).  The per-value limit of kvs.etcd stays 1 MiB.
EXTRA_ARGS = ("--max-request-bytes", str(16 * 1024 * 1024))


class EtcdServer:
    """A 3-member etcd cluster on loopback for one benchmark run."""

    binary = "etcd"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cluster: Any = None  # tests.fixtures.etcd_servers.EtcdCluster once started

    def start(self) -> EtcdServer:
        try:
            from tests.fixtures import etcd_servers
        except ImportError as exc:  # requests or the tests package missing
            raise ServerError(f"the etcd test fixture cannot be imported: {exc}") from None
        if etcd_servers.ETCD is None or etcd_servers.ETCDCTL is None:
            raise ServerError("etcd or etcdctl not found on PATH (run `make servers`)")
        for attempt in range(3):
            cluster = etcd_servers.EtcdCluster(self.workdir / f"cluster{attempt}", MEMBERS,
                                               extra_args=EXTRA_ARGS)
            try:
                cluster.start()
            except (AssertionError, RuntimeError, OSError) as exc:
                cluster.stop()
                raise ServerError(f"etcd cluster did not start: {str(exc)[:300]}") from None
            ports = {port for member in cluster.members
                     for port in (member.client_port, member.peer_port)}
            if ports & ETCD_FORBIDDEN_PORTS:
                cluster.stop()
                continue
            self.cluster = cluster
            return self
        raise ServerError("etcd cluster kept landing on a forbidden port")

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    @property
    def endpoints(self) -> list[str]:
        """Every member's ``127.0.0.1:port``, the first one first."""
        return list(self.cluster.endpoints) if self.cluster is not None else []

    @property
    def first(self) -> tuple[str, int]:
        """(host, port) of the first member: where both kvs and the raw client go."""
        member = self.cluster.members[0]
        return "127.0.0.1", int(member.client_port)

    def version(self) -> str:
        try:
            out = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                                 timeout=5, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        first = out.strip().splitlines()[0] if out.strip() else "unknown"
        return f"{first} ({MEMBERS} members)"

    def __enter__(self) -> EtcdServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
