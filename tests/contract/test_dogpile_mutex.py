"""Contract: dogpile's get_or_create on kvs backends runs one creator across processes.

A plain dogpile region (no kvs store around it) takes ``backend.get_mutex(key)``
before it runs a creator; on kvs backends that mutex is the key's lease, kept
alive while the creator runs and gone within ``mutex_timeout`` once its holder
dies.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.contract import workers


@pytest.fixture
def shared_config(shared_backend_config: dict[str, Any]) -> dict[str, Any]:
    return {**shared_backend_config, "mutex_timeout": 1.0}


def test_four_processes_at_once_run_the_creator_once(shared_config: dict[str, Any],
                                                     tmp_path: Path) -> None:
    key = f"goc-{uuid.uuid4().hex[:8]}"
    runs = tmp_path / "runs"
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        # Spawned workers take about a second to start: meet 2 s from now.
        start_at = time.time() + 2.0
        results = pool.starmap(workers.get_or_create_at,
                               [(shared_config, key, str(runs), start_at)] * 4)
    lines = runs.read_text().splitlines()
    assert len(lines) == 1, lines                       # one creator in four processes
    assert len(set(results)) == 1 and results[0][0] == "made"


def test_a_killed_creator_blocks_the_others_for_at_most_mutex_timeout(
        shared_config: dict[str, Any], tmp_path: Path) -> None:
    key = f"killed-{uuid.uuid4().hex[:8]}"
    started = tmp_path / "started"
    context = multiprocessing.get_context("spawn")
    creator = context.Process(target=workers.create_forever,
                              args=(shared_config, key, str(started)))
    creator.start()
    try:
        deadline = time.monotonic() + 30
        while not started.exists():
            assert time.monotonic() < deadline, "the creator never started"
            assert creator.is_alive()
            time.sleep(0.02)
        time.sleep(1.5 * shared_config["mutex_timeout"])  # past its TTL: the keeper extends
        region = workers._plain_region(shared_config)
        assert region.backend.get_mutex(key).acquire(wait=False) is False
        os.kill(creator.pid, signal.SIGKILL)             # mid-creation
        creator.join(10)
        began = time.monotonic()
        assert region.get_or_create(key, lambda: "after the crash") == "after the crash"
        waited = time.monotonic() - began
    finally:
        if creator.is_alive():
            creator.kill()
            creator.join(10)
    # memcached and etcd expire items in whole seconds and pad a lease by one second plus
    # its safety margin (see doc/backends/memcached.md): 3 s on the wire for 1 s.
    ttl = shared_config["mutex_timeout"]
    whole_seconds = shared_config["backing_store"] in ("kvs.memcached", "kvs.etcd")
    bound = math.ceil(ttl) + 2 if whole_seconds else ttl
    assert waited < bound + 1.5, waited


def test_failed_extensions_are_made_up_by_the_next_one() -> None:
    """Two single blips of the backend never lose a mutex whose holder is alive."""
    from kvs.backends.memory import MemoryBackend

    class Blipping(MemoryBackend):
        calls = 0

        def extend_lease(self, key: str, token: str, ttl: float) -> bool:
            type(self).calls += 1
            if type(self).calls in (1, 3):
                raise ConnectionError("blip")
            return super().extend_lease(key, token, ttl)

    backend = Blipping({"mutex_timeout": 0.6})
    mutex = backend.get_mutex("k")
    assert mutex.acquire()
    try:
        time.sleep(1.5)                       # 2.5 TTLs, with two failed extensions
        info = backend.lease_info("k")
        assert info is not None and info.remaining is not None and info.remaining > 0.1
        assert Blipping.calls >= 4
    finally:
        mutex.release()
    assert backend.lease_info("k") is None
