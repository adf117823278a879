"""Declared stores shared by several processes (kvs.sqlite): broadcasts reach
watchers in other processes, and a dead sampler is replaced."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvs.provider import Provider
from tests.unit.provider_support import (
    PRICES,
    Collector,
    Loader,
    child_sample_forever,
    child_set_values,
    load,
    loader_context,
    wait_until,
)

SPAWN = multiprocessing.get_context("spawn")

SAMPLED = """
[store:{store}]
{backend}
endpoints = temp

[endpoint:{store}.temp]
initial_value = 20.0
schedule_interval = 0.05
max_absolute_change = 0.5
"""


@pytest.fixture
def loader(tmp_path: Path) -> Iterator[Loader]:
    with loader_context(tmp_path, "sqlite") as value:
        yield value


def test_broadcasts_reach_a_watcher_in_another_process(loader: Loader) -> None:
    path = loader.write(PRICES)
    provider: Provider = load(path)[1]["prices"]
    watcher = provider.watch(names=["peaches"], timeout=60, poll_interval=0.02)
    child = SPAWN.Process(target=child_set_values, args=(str(path), "prices", [1.5, 2.5]))
    child.start()
    try:
        first, second = next(watcher), next(watcher)
    finally:
        child.join(60)
    assert child.exitcode == 0
    assert [(e["value_raw"], e["value_cal"], e["reason"]) for e in (first, second)] == [
        (1.5, 1.5, "on_set"), (2.5, 2.5, "on_set")]
    assert first["store"] == "prices" and first["endpoint"] == "peaches"
    assert provider.get("peaches")["value_raw"] == 2.5
    # The child's set also reset the shared baseline.
    baseline = provider.baseline("peaches")
    assert baseline is not None and baseline.value == 2.5


def test_sampler_fails_over_when_its_process_dies(loader: Loader) -> None:
    path = loader.write(SAMPLED)
    provider: Provider = load(path)[1]["prices"]
    store = provider.store
    watcher = provider.watch(timeout=60, poll_interval=0.02)
    child = SPAWN.Process(target=child_sample_forever, args=(str(path), "prices"))
    child.start()
    try:
        event = next(watcher)  # the child's first sample, seen from this process
        assert (event["endpoint"], event["reason"], event["value_raw"]) == (
            "temp", "first", 20.0)
        assert store.lease_info("_provider:sampler") is not None
        collector = Collector()
        provider.subscribe(collector)
        provider.start_logging()
        assert provider.logging_status == {"temp": True}
        # The child holds the lease: this process waits.
        assert not wait_until(lambda: provider.sampling, timeout=0.5)
        provider.set("temp", 30.0)
        event = next(watcher)  # sampled by the child
        assert (event["reason"], event["value_raw"]) == ("change", 30.0)
        assert collector.drain() == []  # not by us
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        # The lease runs out, this process takes over and goes on from the
        # shared baseline: no new "first".
        assert wait_until(lambda: provider.sampling, timeout=30)
        provider.set("temp", 40.0)
        event = collector.next(timeout=30)
        assert (event["reason"], event["value_raw"]) == ("change", 40.0)
    finally:
        if child.is_alive():
            child.kill()
            child.join(30)
        provider.close()
