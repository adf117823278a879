"""The benchmark's own servers: redis-server, memcached and etcd on free loopback ports.

Each server runs in its own temporary directory with persistence off and is
stopped when the run ends (etcd: a 3-member cluster, see
:mod:`benchmarks.etcd_servers`).  A server already running on the machine (such as a
Redis on the default port 6379) is never used: ports come from the kernel's
free-port allocation, and the default ports are refused outright.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Collection
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from benchmarks.etcd_servers import EtcdServer

#: Ports of servers that may already run on the machine; never ours.
FORBIDDEN_PORTS = frozenset({6379, 11211, 26379})

#: Seconds a server gets to answer its first request.
START_TIMEOUT = 10.0


class ServerError(RuntimeError):
    """A benchmark server could not be started (binary missing, crashed, no answer)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in FORBIDDEN_PORTS:
            return port


def _ask(port: int, request: bytes, timeout: float = 0.5) -> bytes:
    """Send one request line to 127.0.0.1:port and return the first reply bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        return conn.recv(256)


class ManagedServer:
    """One server process we started; a context manager that stops it."""

    binary = ""
    version_flag = "--version"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{self.binary}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def version(self) -> str:
        """The binary's version line (for the machine info of the results)."""
        try:
            out = subprocess.run([self.binary, self.version_flag], capture_output=True,
                                 text=True, timeout=5, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return "unknown"
        return out.strip().splitlines()[0] if out.strip() else "unknown"

    def start(self) -> ManagedServer:
        if shutil.which(self.binary) is None:
            raise ServerError(f"{self.binary} not found on PATH (run `make servers`)")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            cwd=self.workdir)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"{self.binary} on 127.0.0.1:{self.port} exited at start: "
                                  f"{self._log_tail()}")
            with contextlib.suppress(OSError):
                if self.ready():
                    return self
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.binary} on 127.0.0.1:{self.port} did not answer within "
                          f"{START_TIMEOUT} s")

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)

    def __enter__(self) -> ManagedServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class RedisServer(ManagedServer):
    """redis-server with no persistence, bound to 127.0.0.1 only."""

    binary = "redis-server"

    def command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning"]

    def ready(self) -> bool:
        return _ask(self.port, b"PING\r\n").startswith(b"+PONG")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class MemcachedServer(ManagedServer):
    """memcached with room for the 1M-key scaling run and 1 MB values."""

    binary = "memcached"
    version_flag = "-V"
    #: Megabytes of item memory: the 1M-key store must fit without eviction.
    memory_mb = 2048
    #: Item size limit: the 1 MB value-size point plus kvs's header must fit.
    item_limit = "4m"

    def command(self) -> list[str]:
        # One worker thread: memcached hands each new connection to the next
        # thread, and on a small machine a thread that shares the client's CPU
        # answers several times slower than the other (measured: 18 against
        # 65 µs a get, alternating connection by connection).  kvs, its
        # baselines and the reference stores each have their own connection,
        # so with two threads a ratio would measure which thread each landed on.
        command = [self.binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0",
                   "-m", str(self.memory_mb), "-I", self.item_limit, "-t", "1"]
        if os.geteuid() == 0:
            command += ["-u", "root"]  # memcached refuses to run as root otherwise
        return command

    def ready(self) -> bool:
        return _ask(self.port, b"version\r\n").startswith(b"VERSION")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class ServerSet:
    """The servers of one benchmark run, in one temporary directory.

    A server that cannot start is recorded with its reason, never faked.
    """

    def __init__(self, wanted: Collection[str] | None = None) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="kvs-bench-")
        self.root = Path(self._tmp.name)
        self.redis: RedisServer | None = None
        self.memcached: MemcachedServer | None = None
        #: The 3-member etcd cluster (benchmarks.etcd_servers), started only when
        #: ``wanted`` (the run's backends; None: all) has etcd.
        self.etcd: EtcdServer | None = None
        self.wanted = wanted
        self.problems: dict[str, str] = {}

    def start(self) -> ServerSet:
        for name, cls in (("redis", RedisServer), ("memcached", MemcachedServer)):
            workdir = self.root / name
            workdir.mkdir()
            server = cls(workdir)
            try:
                server.start()
            except ServerError as exc:
                self.problems[name] = str(exc)
                continue
            setattr(self, name, server)
        if self.wanted is None or "etcd" in self.wanted:
            self._start_etcd()
        return self

    def _start_etcd(self) -> None:
        from benchmarks.etcd_servers import EtcdServer

        workdir = self.root / "etcd"
        workdir.mkdir()
        try:
            self.etcd = EtcdServer(workdir).start()
        except ServerError as exc:
            self.problems["etcd"] = str(exc)

    def versions(self) -> dict[str, str]:
        return {name: server.version() for name, server in
                (("redis", self.redis), ("memcached", self.memcached), ("etcd", self.etcd))
                if server is not None}

    def stop(self) -> None:
        for server in (self.redis, self.memcached, self.etcd):
            if server is not None:
                server.stop()
        self._tmp.cleanup()

    def __enter__(self) -> ServerSet:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
