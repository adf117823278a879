"""Quick measurements for the Redis backends (issue 3): not a test, prints numbers.

    python -m benchmarks.redis_targets [--quick]

Starts its own ``redis-server`` on a free loopback port and measures

* lease hand-off latency with 8 contending processes: the time from one
  holder's release call to the next holder's acquire returning, for kvs
  (BLPOP wake-up) and for redis-py's ``Lock`` (polling every 10 ms);
* ``update()`` round trips (server-side command count) and time, against
  redis-py ``Lock`` acquire + GET + SET + release on one connection;
* ``get``/``set`` against raw GET/SET with the same serializer.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgpack
import redis

import kvs
from kvs.backends.redis import hash_tag
from tests.fixtures.redis_servers import RedisServer

CONTENDERS = 8


def _contend(url: str, use_kvs: bool, rounds: int, start: Any, out: Any) -> None:
    events = []
    if use_kvs:
        store = kvs.get_key_value_store("handoff")
        store.configure("kvs.redis", url=url, lock_timeout=10, lock_wait_timeout=60)
        lock = store.get_lock("k")
        start.wait()
        for _ in range(rounds):
            lock.acquire()
            acquired = time.monotonic()
            time.sleep(0.001)  # the critical section
            released = time.monotonic()
            lock.release()
            events.append((acquired, released, os.getpid()))
            time.sleep(0.002)  # work outside the lock, so the others get their turn
    else:
        client = redis.Redis.from_url(url)
        start.wait()
        for _ in range(rounds):
            rlock = client.lock("handoff-raw", timeout=10, sleep=0.01)
            rlock.acquire()
            acquired = time.monotonic()
            time.sleep(0.001)
            released = time.monotonic()
            rlock.release()
            events.append((acquired, released, os.getpid()))
            time.sleep(0.002)
    out.put(events)


def handoff(url: str, use_kvs: bool, rounds: int) -> list[float]:
    """Hand-off latencies (s): next acquire minus previous release, across 8 processes."""
    context = multiprocessing.get_context("fork")
    start, out = context.Event(), context.Queue()
    workers = [context.Process(target=_contend, args=(url, use_kvs, rounds, start, out))
               for _ in range(CONTENDERS)]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # let every worker connect before the race starts
    start.set()
    events = sorted(event for _ in workers for event in out.get(timeout=300))
    for worker in workers:
        worker.join(60)
    # Only hand-offs to another process: a holder re-taking its own lease is no hand-off.
    return [acquired - events[index - 1][1]
            for index, (acquired, _, pid) in enumerate(events)
            if index and events[index - 1][2] != pid]


def per_call(fn: Any, count: int) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(count):
        fn()
    return (time.perf_counter() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    count = 500 if options.quick else 3000
    rounds = 20 if options.quick else 60
    with tempfile.TemporaryDirectory(prefix="kvs-bench-redis-") as directory:
        server = RedisServer(Path(directory)).start()
        try:
            url = f"redis://{server.address}/0"
            report(url, server, count, rounds)
        finally:
            server.stop()


def _ms(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if len(values) > 2 else 0.0


def report(url: str, server: RedisServer, count: int, rounds: int) -> None:
    store = kvs.get_key_value_store(f"bench-{uuid.uuid4().hex[:6]}")
    store.configure("kvs.redis", url=url, lock_timeout=10)
    raw = redis.Redis.from_url(url)  # one connection, used serially

    # update(): round trips (commands the client sends), then time against a redis-py Lock.
    store.update("n", lambda n: n + 1, default=0)
    client = store._region.actual_backend.client
    sent = []
    real_execute = client.execute_command
    client.execute_command = lambda *a, **k: sent.append(a[0]) or real_execute(*a, **k)
    for _ in range(100):
        store.update("n", lambda n: n + 1, default=0)
    del client.execute_command
    commands = len(sent) / 100

    def raw_update() -> None:
        lock = raw.lock("raw-lock", timeout=10)
        lock.acquire()
        value = raw.get("raw-n")
        raw.set("raw-n", msgpack.packb((msgpack.unpackb(value) if value else 0) + 1))
        lock.release()

    kvs_update = per_call(lambda: store.update("n", lambda n: n + 1, default=0), count)
    lock_update = per_call(raw_update, count)

    payload = {"name": "value", "list": [1, 2, 3]}
    store.set("g", payload)
    raw.set("raw-g", msgpack.packb(payload))
    name = hash_tag(store.backend_key("g"))
    assert raw.get(name) is not None
    kvs_get = per_call(lambda: store.get("g"), count)
    raw_get = per_call(lambda: msgpack.unpackb(raw.get("raw-g")), count)
    kvs_set = per_call(lambda: store.set("g", payload), count)
    raw_set = per_call(lambda: raw.set("raw-g", msgpack.packb(payload)), count)

    kvs_handoff = handoff(url, True, rounds)
    raw_handoff = handoff(url, False, rounds)

    print(f"update(): {commands:.2f} round trips per call")
    print(f"{'operation':<40}{'kvs µs':>10}{'redis-py µs':>14}{'ratio':>8}")
    for label, ours, theirs in (
            ("update() vs Lock+GET+SET+release", kvs_update, lock_update),
            ("get vs GET+unpack", kvs_get, raw_get),
            ("set vs pack+SET", kvs_set, raw_set)):
        print(f"{label:<40}{ours * 1e6:>10.0f}{theirs * 1e6:>14.0f}{ours / theirs:>8.2f}")
    print(f"hand-off with {CONTENDERS} contending processes "
          f"(hand-offs to another process: kvs {len(kvs_handoff)}, redis-py "
          f"{len(raw_handoff)} of {CONTENDERS * rounds - 1}), ms:")
    print(f"{'':<40}{'p50':>10}{'p90':>10}{'p99':>10}")
    for label, values in (("kvs (BLPOP wake-up)", kvs_handoff),
                          ("redis-py Lock (poll every 10 ms)", raw_handoff)):
        print(f"{label:<40}{_ms(values, 50):>10.2f}{_ms(values, 90):>10.2f}"
              f"{_ms(values, 99):>10.2f}")


if __name__ == "__main__":
    main()
