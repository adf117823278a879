"""Contract: leases and fences hold across processes (shared backends only)."""

from __future__ import annotations

import multiprocessing
import uuid
from typing import Any

import pytest

from tests.contract import workers


@pytest.fixture
def shared_config(shared_backend_config: dict[str, Any]) -> dict[str, Any]:
    return {**shared_backend_config, "lock_timeout": 10, "lock_wait_timeout": 60}


def test_no_lost_update_across_processes(shared_config: dict[str, Any], make_store: Any) -> None:
    name = f"mp-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        pool.starmap(workers.increment_with_update, [(shared_config, name, 50)] * 4)
    store = make_store(name=name)
    assert store.get("counter") == 200
    assert store.lease_info("counter") is None


def test_fences_increase_across_processes(shared_config: dict[str, Any], make_store: Any) -> None:
    name = f"mp-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        results = pool.starmap(workers.increment_with_lock, [(shared_config, name, 20)] * 3)
    fences = [fence for result in results for fence in result]
    assert len(fences) == 60 and len(set(fences)) == 60  # every acquisition unique
    for result in results:
        assert result == sorted(result)  # and increasing as each process sees them
    store = make_store(name=name)
    assert store.get("counter") == 60
    with store.get_lock("counter") as lock:
        assert lock.fence is not None and lock.fence > max(fences)
