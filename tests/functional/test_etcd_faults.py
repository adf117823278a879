"""kvs.etcd on a real 3-member cluster while members die, stop, pause or get cut off.

Each test gets clusters of its own (``etcd_clusters_factory``), with 10 ms
heartbeats and 100 ms elections, so a failover takes well under a second.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from typing import Any

import pytest

from kvs import exception
from kvs.backends.etcd import EtcdBackend
from tests.fixtures.etcd_servers import EtcdCluster
from tests.functional import etcd_workers
from tests.functional.fault_support import HANG_SLACK, new_store, returns_within, spawn_context
from tests.functional.faultproxy import FaultProxy

TIMEOUT = 1.0


def _config(endpoints: list[str], **extra: Any) -> dict[str, Any]:
    return {"backing_store": "kvs.etcd", "endpoints": ",".join(endpoints),
            "timeout": TIMEOUT, **extra}


def _prefix() -> str:
    return f"faults-{uuid.uuid4().hex[:8]}"


def test_leader_killed_and_restarted_under_four_updating_processes(
        etcd_clusters_factory: Any) -> None:
    """Every update that returned is in the final value; the ones that raised
    BackendUnavailable are unknown; fences per process strictly increase; no call
    hangs past its timeouts; updates resume soon after the kill."""
    cluster: EtcdCluster = etcd_clusters_factory(3)
    config = _config(cluster.endpoints)
    prefix = _prefix()
    context = spawn_context()
    results = context.Queue()
    stop = context.Event()
    workers = [context.Process(target=etcd_workers.increment_until,
                               args=(config, prefix, time.time() + 120, results, stop))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    # Kill the leader once the workers are updating (spawning four interpreters
    # can take seconds on a loaded machine), not after a fixed sleep.
    watcher = new_store(config, prefix)
    deadline = time.monotonic() + 60
    while _counter(watcher) < 40:
        assert time.monotonic() < deadline, "the workers never got going"
        time.sleep(0.05)
    leader = cluster.leader()
    killed_at = time.time()
    leader.kill()
    time.sleep(1.5)
    leader.start()
    time.sleep(2.5)
    stop.set()
    reports = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    cluster.wait_healthy()
    final = _counter(new_store(config, prefix))
    returned = sum(report["returned"] for report in reports)
    unknown = sum(report["unknown"] for report in reports)
    for report in reports:
        assert report["foreign"] == [], report["foreign"]
        fences = report["fences"]
        assert fences == sorted(set(fences)), "fences of one process strictly increase"
        # lock_wait_timeout 3 s + a fenced write and a release within 1 s each
        assert report["slowest"] < 3 + 3 * TIMEOUT + HANG_SLACK, report["slowest"]
    assert returned > 0
    assert returned <= final <= returned + unknown, (returned, unknown, final)
    # Updates went on after the kill: the first one to return after it, per the workers.
    after = [t for report in reports for t in report["returns_at"] if t > killed_at]
    assert after, "no update returned after the leader was killed"
    recovery = min(after) - killed_at
    print(f"\nleader kill: next update returned after {recovery * 1000:.0f} ms; "
          f"returned {returned}, unknown {unknown}, final {final} "
          f"(lost {max(0, returned - final)}, duplicated {max(0, final - returned - unknown)})")
    assert recovery < 2.0, recovery


def _counter(store: Any) -> int:
    """The workers' counter; 0 while no increment has landed."""
    try:
        return int(store.get("n"))
    except exception.NotFound:
        return 0


def test_majority_lost_calls_fail_within_the_timeout_and_nothing_lands(
        etcd_clusters_factory: Any) -> None:
    cluster: EtcdCluster = etcd_clusters_factory(3)
    config = _config(cluster.endpoints)
    prefix = _prefix()
    store = new_store(config, prefix, lock_timeout=30, lock_wait_timeout=0.5)
    store.set("plain", "before")
    store.set("locked", "before")
    lock = store.get_lock("locked").acquire()
    survivor = cluster.members[0]
    for member in cluster.members[1:]:
        member.stop()
    # Let the survivor notice it has no quorum (CheckQuorum: one election timeout).
    time.sleep(0.5)
    attempts = [
        lambda: store.set("plain", "during"),
        lambda: store.set("locked", "during", lock=lock),
        lambda: store.update("counter", lambda value: value + 1, default=0),
        lambda: store.delete("plain"),
        lambda: store.get("plain"),
        lambda: store.get_lock("other").acquire(),
    ]
    for attempt in attempts:
        with returns_within(TIMEOUT + HANG_SLACK), \
                pytest.raises(exception.BackendUnavailable) as info:
            attempt()
        assert any(member.address in str(info.value) for member in cluster.members), \
            str(info.value)
    assert survivor.running
    for member in cluster.members[1:]:
        member.start()
    cluster.wait_healthy()
    time.sleep(0.3)
    fresh = new_store(config, prefix)
    assert fresh.get("plain") == "before"
    assert fresh.get("locked") == "before"
    assert not fresh.exists("counter")


def test_paused_holder_is_refused_after_another_takes_over(etcd_clusters_factory: Any) -> None:
    """SIGSTOP a holder past its lease; another process takes the lease and writes; the
    resumed holder's fenced write is refused by etcd, and the new value stays."""
    cluster: EtcdCluster = etcd_clusters_factory(3)
    config = _config(cluster.endpoints)
    prefix = _prefix()
    context = spawn_context()
    told, tell = context.Queue(), context.Queue()
    holder = context.Process(target=etcd_workers.hold_then_write,
                             args=(config, prefix, told, tell))
    holder.start()
    try:
        what, old_fence = tell.get(timeout=30)
        assert what == "holding"
        assert holder.pid is not None
        holder_pid = holder.pid
        os.kill(holder_pid, signal.SIGSTOP)
        other = new_store(config, prefix, lock_timeout=5, lock_wait_timeout=10)
        with other.get_lock("k") as lock:  # waits for the etcd lease to run out
            assert lock.fence is not None and lock.fence > old_fence
            other.set("k", "new holder", lock=lock)
        os.kill(holder_pid, signal.SIGCONT)
        told.put("write now")
        what, backend_outcome, via_store = tell.get(timeout=30)
        # etcd refuses the write (lease_lost); the store refuses it too, before or
        # after asking etcd (LeaseLost or LockTimeout from the lock's own clock).
        assert (what, backend_outcome) == ("done", "lease_lost")
        assert via_store in ("LeaseLost", "LockTimeout"), via_store
        assert other.get("k") == "new holder"
    finally:
        holder.join(10)
        if holder.is_alive():
            holder.kill()


def test_partitioned_holder_is_refused_after_another_takes_over(
        etcd_clusters_factory: Any) -> None:
    """A proxy between one client and its only member black-holes traffic past the
    lease; another client takes over; after healing, the old holder's write is refused."""
    cluster: EtcdCluster = etcd_clusters_factory(3)
    member = cluster.members[0]
    with FaultProxy("127.0.0.1", member.client_port) as proxy:
        cut_off = new_store(_config([proxy.address]), prefix := _prefix(), lock_timeout=1)
        others = new_store(_config(cluster.endpoints), prefix, lock_timeout=5,
                           lock_wait_timeout=10)
        cut_off.set("k", "before")
        lock = cut_off.get_lock("k").acquire()
        old_fence = lock.fence
        proxy.blackhole()
        with returns_within(TIMEOUT + HANG_SLACK), \
                pytest.raises(exception.BackendUnavailable) as info:
            cut_off.get("k")
        assert proxy.address in str(info.value)
        with others.get_lock("k") as new_lock:
            assert new_lock.fence is not None and old_fence is not None
            assert new_lock.fence > old_fence
            others.set("k", "new holder", lock=new_lock)
        proxy.forward()
        backend = cut_off._require_path().backend
        assert backend is not None and lock.token is not None
        assert backend.fenced_set(lock.lease_key, b"stale", lock.token, None).value == \
            "lease_lost"
        with pytest.raises(exception.LockTimeout):
            cut_off.set("k", "stale", lock=lock)
        assert others.get("k") == "new holder"
        assert cut_off.get("k") == "new holder"


def _drop_reply_of(monkeypatch: pytest.MonkeyPatch, proxies: dict[int, FaultProxy],
                   wanted: Any) -> None:
    """Just before kvs sends a request for which ``wanted(path, body)`` is true to the
    endpoint at an index of ``proxies``, arm that proxy to swallow the next reply and
    cut the connection: the request lands, its reply is lost on the wire."""
    send = EtcdBackend._post_once

    def post_once(self: EtcdBackend, index: int, path: str, body: Any,
                  read_timeout: float) -> Any:
        if index in proxies and wanted(path, body):
            proxies[index].drop_next_reply(close=True)
        return send(self, index, path, body, read_timeout)

    monkeypatch.setattr(EtcdBackend, "_post_once", post_once)


def _ops(body: Any) -> str:
    return json.dumps(body.get("success", []))


def test_lost_reply_of_a_fenced_write_and_release_is_recognised(
        etcd_clusters_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reply to update()'s write-and-release transaction is lost: kvs resends it to
    the next member, finds its own done marker, and reports success, not LeaseLost;
    the value is written once and the lease is gone."""
    cluster: EtcdCluster = etcd_clusters_factory(3)
    with FaultProxy("127.0.0.1", cluster.members[0].client_port) as proxy:
        endpoints = [proxy.address, *[m.address for m in cluster.members[1:]]]
        store = new_store(_config(endpoints, timeout=2.0), _prefix(), lock_timeout=5)
        store.set("n", 0)
        # The write-and-release: it writes the value and deletes the lease.
        _drop_reply_of(monkeypatch, {0: proxy}, lambda path, body: path == "kv/txn" and
                       "request_delete_range" in _ops(body) and "request_put" in _ops(body))
        assert store.update("n", lambda value: value + 1) == 1
        assert proxy.dropped == 1
        assert store.get("n") == 1
        assert store.lease_info("n") is None
        with store.get_lock("n") as lock:   # the key locks as usual afterwards
            store.set("n", 5, lock=lock)
        assert store.get("n") == 5


def test_lost_replies_of_fenced_writes_under_a_held_lock_are_recognised(
        etcd_clusters_factory: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fenced set whose reply is lost is resent and recognised (written once); the
    next fenced set still lands (kvs adopted the lease key's new revision); a fenced
    delete whose reply is lost reports the first run's outcome (deleted), not missing."""
    cluster: EtcdCluster = etcd_clusters_factory(3)
    first, second, third = cluster.members
    with FaultProxy("127.0.0.1", first.client_port) as proxy_a, \
            FaultProxy("127.0.0.1", second.client_port) as proxy_b:
        endpoints = [proxy_a.address, proxy_b.address, third.address]
        store = new_store(_config(endpoints, timeout=2.0), _prefix(), lock_timeout=5)
        fenced = [0]
        seen: list[Any] = []

        def nth_fenced_write(path: str, body: Any) -> bool:
            # Fenced writes touch the lease key with ignore_lease (acquires do not);
            # a resend is not counted again.
            if path != "kv/txn" or "ignore_lease" not in _ops(body) or (seen and body is seen[-1]):
                return False
            seen.append(body)
            fenced[0] += 1
            return fenced[0] in (1, 3)

        with store.get_lock("k") as lock:
            _drop_reply_of(monkeypatch, {0: proxy_a, 1: proxy_b}, nth_fenced_write)
            store.set("k", "one", lock=lock)      # reply lost, resent to b, recognised
            assert (proxy_a.dropped, proxy_b.dropped) == (1, 0)
            store.set("k", "two", lock=lock)      # through b
            assert store.get("k") == "two"
            store.delete("k", lock=lock)          # reply lost at b: "deleted", not NotFound
            assert (proxy_a.dropped, proxy_b.dropped) == (1, 1)
            with pytest.raises(exception.NotFound):
                store.delete("k", lock=lock)
        assert not store.exists("k")
        assert store.lease_info("k") is None
