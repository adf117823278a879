"""Soak test: many processes and threads hammering one kvs.redis store (``make soak``).

4 processes x 8 threads run a mix of get, set, update() and locked
read-modify-write on a small set of keys of one store, against a redis-server
this script starts on a free loopback port, for ``SOAK_SECONDS`` (default 60).

Pass criteria (exit status 0 only if all hold):

* no unexpected exception (a get of a missing key is expected; anything
  else, LockAcquireTimeout included, is not);
* no lost update: every counter ends exactly at the number of increments the
  workers report;
* no leaked lease key on the server after the workers stop;
* flat memory: each worker's RSS grows less than ``max(8 MiB, 10 %)`` between
  the end of the warm-up (first quarter of the run) and the end.

Environment: ``SOAK_SECONDS`` (duration), ``SOAK_PROCESSES`` (4), ``SOAK_THREADS`` (8).
Not part of ``make test``: it is long and its numbers depend on the machine.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

import kvs
from benchmarks.servers import RedisServer

KEYS = [f"item-{index}" for index in range(40)]
COUNTERS = [f"counter-{index}" for index in range(4)]
LOCKED = [f"locked-{index}" for index in range(4)]
OPERATIONS = ("get", "set", "update", "lock")
STORE_NAME = "soak"
RSS_GROWTH_FLOOR = 8 * 1024 * 1024
RSS_GROWTH_RATIO = 0.10


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def store_for(url: str) -> kvs.KeyValueStore:
    store = kvs.get_key_value_store(STORE_NAME)
    store.configure("kvs.redis", url=url, lock_timeout=2, lock_wait_timeout=15,
                    socket_timeout=5, socket_connect_timeout=5)
    return store


def _bump(value: int) -> int:
    return value + 1


class Worker:
    """The threads of one process and what they saw."""

    def __init__(self, url: str, seconds: float, threads: int, seed: int) -> None:
        self.store = store_for(url)
        self.deadline = time.monotonic() + seconds
        self.threads = threads
        self.seed = seed
        self.lock = threading.Lock()
        self.ops: collections.Counter[str] = collections.Counter()
        self.increments: collections.Counter[str] = collections.Counter()
        self.errors: list[str] = []

    def run_thread(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        ops: collections.Counter[str] = collections.Counter()
        increments: collections.Counter[str] = collections.Counter()
        errors: list[str] = []
        store = self.store
        while time.monotonic() < self.deadline:
            operation = rng.choices(OPERATIONS, weights=(50, 25, 15, 10))[0]
            try:
                if operation == "get":
                    try:
                        store.get(rng.choice(KEYS))
                    except kvs.exception.NotFound:
                        pass
                elif operation == "set":
                    store.set(rng.choice(KEYS), {"by": self.seed, "n": rng.random(),
                                                 "blob": b"x" * rng.randrange(1, 2048)})
                elif operation == "update":
                    counter = rng.choice(COUNTERS)
                    store.update(counter, _bump, default=0)
                    increments[counter] += 1
                else:
                    key = rng.choice(LOCKED)
                    with store.get_lock(key) as lease:
                        try:
                            value = store.get(key)
                        except kvs.exception.NotFound:
                            value = 0
                        if rng.random() < 0.2:
                            lease.extend(0.5)
                        store.set(key, value + 1, lock=lease)
                    increments[key] += 1
                ops[operation] += 1
            except Exception as error:  # the soak's whole point: count, keep going
                errors.append(f"{operation}: {type(error).__name__}: {error}")
        with self.lock:
            self.ops.update(ops)
            self.increments.update(increments)
            self.errors.extend(errors)


def work(url: str, seconds: float, threads: int, seed: int, results: Any) -> None:
    """One soak process: ``threads`` threads for ``seconds``, RSS sampled every 0.5 s."""
    worker = Worker(url, seconds, threads, seed)
    pool = [threading.Thread(target=worker.run_thread, args=(index,), daemon=True)
            for index in range(threads)]
    started = time.monotonic()
    samples: list[tuple[float, int]] = [(0.0, rss_bytes())]
    for thread in pool:
        thread.start()
    while any(thread.is_alive() for thread in pool):
        time.sleep(0.5)
        samples.append((time.monotonic() - started, rss_bytes()))
    results.put({"seed": seed, "ops": dict(worker.ops), "increments": dict(worker.increments),
                 "errors": worker.errors, "rss": samples})


def rss_verdict(samples: list[tuple[float, int]], seconds: float) -> tuple[int, int, bool]:
    """(RSS after warm-up, RSS at the end, flat?) from one worker's samples."""
    warm = [rss for at, rss in samples if at >= seconds / 4] or [samples[-1][1]]
    start = warm[0]
    end = statistics.median(rss for _at, rss in samples[-3:])
    allowed = max(RSS_GROWTH_FLOOR, RSS_GROWTH_RATIO * start)
    return start, int(end), end - start < allowed


def soak(seconds: float, processes: int, threads: int) -> bool:
    with tempfile.TemporaryDirectory(prefix="kvs-soak-") as workdir, \
            RedisServer(Path(workdir)) as server:
        assert isinstance(server, RedisServer)
        url = server.url
        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        children = [context.Process(target=work, args=(url, seconds, threads, seed, results))
                    for seed in range(processes)]
        began = time.monotonic()
        for child in children:
            child.start()
        reports = [results.get(timeout=seconds + 300) for _ in children]
        for child in children:
            child.join(30)
        elapsed = time.monotonic() - began

        store = store_for(url)
        admin = redis.Redis.from_url(url, socket_timeout=5)
        try:
            leases = sorted(name.decode() for name in admin.scan_iter(match="*:lease"))
            server_memory = int(admin.info("memory")["used_memory"])
        finally:
            admin.close()

        ops: collections.Counter[str] = collections.Counter()
        increments: collections.Counter[str] = collections.Counter()
        errors: list[str] = []
        for report in reports:
            ops.update(report["ops"])
            increments.update(report["increments"])
            errors.extend(report["errors"])
        lost = {key: (store.get(key), count) for key, count in increments.items()
                if store.get(key) != count}

        total = sum(ops.values())
        print(f"soak: {processes} processes x {threads} threads on kvs.redis for "
              f"{seconds:.0f} s (wall {elapsed:.1f} s including start-up)")
        for operation in OPERATIONS:
            print(f"  {operation:<7} {ops[operation]:>9} ops  {ops[operation] / seconds:>9.0f}/s")
        print(f"  total   {total:>9} ops  {total / seconds:>9.0f}/s")
        print(f"  counters: {sum(increments.values())} increments on {len(increments)} keys, "
              f"lost updates: {len(lost)} {lost if lost else ''}")
        print(f"  lease keys left on the server: {len(leases)} {leases[:5] if leases else ''}")
        print(f"  redis used_memory at the end: {server_memory / 2**20:.1f} MiB")
        flat = True
        for report in sorted(reports, key=lambda item: item["seed"]):
            start, end, ok = rss_verdict(report["rss"], seconds)
            flat = flat and ok
            print(f"  worker {report['seed']}: RSS {start / 2**20:.1f} -> {end / 2**20:.1f} MiB "
                  f"after warm-up ({'flat' if ok else 'GROWING'})")
        print(f"  unexpected exceptions: {len(errors)}")
        for line, count in collections.Counter(errors).most_common(10):
            print(f"    {count} x {line[:200]}")
        passed = not errors and not lost and not leases and flat and total > 0
        print(f"soak: {'PASS' if passed else 'FAIL'}")
        return passed


def main() -> int:
    seconds = float(os.environ.get("SOAK_SECONDS", "60"))
    processes = int(os.environ.get("SOAK_PROCESSES", "4"))
    threads = int(os.environ.get("SOAK_THREADS", "8"))
    return 0 if soak(seconds, processes, threads) else 1


if __name__ == "__main__":
    sys.exit(main())
