"""Redis fences strictly increase across a crash and restart, whatever the persistence.

Each case: three grants, (a snapshot where there is one), three more grants,
``kill -9``, restart from whatever the server kept, three more grants.  With
RDB the restored counter is older than the last grants; with AOF ``everysec``
the last second may be lost; with no persistence the counter is gone.  Every
grant must still get a fence above every earlier one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import kvs
import kvs.testing
from tests.fixtures.redis_servers import RedisServer, wait_until
from tests.functional.fault_support import grant_fences

PERSISTENCE = {
    "rdb": ["save 3600 1", "dbfilename dump.rdb"],
    "aof everysec": ["appendonly yes", "appendfsync everysec"],
    "aof always": ["appendonly yes", "appendfsync always"],
    "none": [],
}


def _grants(server: RedisServer, count: int) -> list[int]:
    config = {"backing_store": "kvs.redis", "host": "127.0.0.1", "port": server.port}
    return grant_fences(config, count)


@pytest.mark.parametrize("persistence", list(PERSISTENCE))
def test_fences_strictly_increase_across_kill_and_restart(tmp_path: Path,
                                                          persistence: str) -> None:
    server = RedisServer(tmp_path / "redis", PERSISTENCE[persistence]).start()
    try:
        with kvs.testing.isolated_stores():
            fences = _grants(server, 3)
            if persistence == "rdb":
                assert server.client().save()
            elif persistence.startswith("aof"):
                server.client().bgrewriteaof()
            fences += _grants(server, 3)
            server.kill()
            server.start()
            fences += _grants(server, 3)
    finally:
        server.stop()
    assert fences == sorted(fences) and len(set(fences)) == len(fences), fences


def test_fences_increase_across_failover_to_a_lagging_replica(tmp_path: Path) -> None:
    # What a Sentinel failover to a replica that lags does to the counter: the
    # replica stops replicating (here: promoted early), the old master grants
    # more, then clients move to the promoted replica, whose counter is old.
    master = RedisServer(tmp_path / "master").start()
    replica = RedisServer(tmp_path / "replica", [f"replicaof 127.0.0.1 {master.port}"]).start()
    try:
        with kvs.testing.isolated_stores():
            wait_until(lambda: replica.client().info("replication")["master_link_status"]
                       == "up", 15, "the replica to connect")
            fences = _grants(master, 3)
            assert master.client().wait(1, 5000) == 1  # the replica has these grants
            replica.client().replicaof("no", "one")  # the lag starts here
            fences += _grants(master, 3)
            master.kill()
            fences += _grants(replica, 3)
    finally:
        replica.stop()
        master.stop()
    assert fences == sorted(fences) and len(set(fences)) == len(fences), fences
