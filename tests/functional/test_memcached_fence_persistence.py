"""memcached fences strictly increase across a crash, a warm restart and an eviction.

A crash loses the counter: it is re-seeded from the clock in microseconds.  A
warm restart (``-e memory file``, saved at a graceful SIGUSR1 shutdown) brings
back the counter as it was at that shutdown, which is the newest value, so it
just continues.  memcached keeps no older snapshot, so no restored counter can
be behind fences already handed out.  (The memcached of this machine's package
archive refuses its own memory file on restart, "restart incompatible due to
setting for [stop_time]", and starts empty: the warm-restart case then checks
the re-seeding path too.)
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

import kvs
import kvs.testing
from tests.fixtures.memcached_servers import MemcachedServer
from tests.functional.fault_support import grant_fences


def _grants(server: MemcachedServer, count: int) -> list[int]:
    return grant_fences({"backing_store": "kvs.memcached", "servers": [server.address]}, count)


@pytest.mark.parametrize("restart", ["kill -9", "warm restart"])
def test_fences_strictly_increase_across_restarts(tmp_path: Path, restart: str) -> None:
    extra = ["-e", str(tmp_path / "memory-file")] if restart == "warm restart" else []
    server = MemcachedServer(tmp_path / "memcached", extra=extra).start()
    try:
        with kvs.testing.isolated_stores():
            fences = _grants(server, 3)
            if restart == "kill -9":
                server.kill()
            else:
                assert server.process is not None
                server.process.send_signal(signal.SIGUSR1)  # graceful: saves the memory file
                server.process.wait(20)
            server.start()
            fences += _grants(server, 3)
    finally:
        server.stop()
    assert fences == sorted(fences) and len(set(fences)) == len(fences), fences
