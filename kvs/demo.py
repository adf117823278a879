"""The demo that ``make run`` runs: 4 processes, one counter, no lost update.

It loads ``etc/kvs.conf``, writes and reads a few values, then starts four
worker processes that each increment one counter 250 times: two with
``update()``, two with ``get_lock()`` plus ``set(..., lock=)``.  It prints the
final count (exactly 1000 when no update is lost), the fence numbers the
workers saw, and the elapsed time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence

import kvs

WORKERS = 4
INCREMENTS = 250
COUNTER = "demo-counter"


def _open_store(config_files: Sequence[str], name: str) -> kvs.KeyValueStore:
    store = kvs.get_key_value_store(name)
    if not store.is_configured:  # a pool process may run several tasks
        kvs.configure_stores(kvs.load_config(config_files))
    return store


def _worker(config_files: Sequence[str], name: str, use_update: bool) -> list[int]:
    """Increment the counter INCREMENTS times; return the fences of our leases."""
    store = _open_store(config_files, name)
    fences: list[int] = []
    for _ in range(INCREMENTS):
        if use_update:
            store.update(COUNTER, lambda value: value + 1, default=0)
            continue
        with store.get_lock(COUNTER) as lock:
            store.set(COUNTER, store.get(COUNTER) + 1, lock=lock)
            if lock.fence is not None:
                fences.append(lock.fence)
    return fences


def run(config_files: Sequence[str], name: str = "demo",
        write: Callable[[str], object] = print) -> int:
    """Run the demo, printing through ``write``; return the final count."""
    started = time.monotonic()
    store = _open_store(config_files, name)
    write(f"store {name!r}: backend {store.backend_name}, lock_timeout {store.lock_timeout} s")

    store.set("greeting", {"text": "hello", "langs": ["en", "fr"], "raw": b"\x00\x01"})
    store.set_multi({"peaches": 0.75, "chips": 3, "status": "CLOSE"})
    write(f"get greeting -> {store.get('greeting')!r}")
    write(f"get_multi    -> {store.get_multi(['peaches', 'chips', 'status'])!r}")
    try:
        store.get("no-such-key")
    except kvs.exception.NotFound as exc:
        write(f"get missing  -> NotFound: {exc}")

    store.delete_multi([COUNTER])
    store.set(COUNTER, 0)
    write(f"{WORKERS} processes x {INCREMENTS} increments "
          f"(2 with update(), 2 with get_lock + set(lock=)) ...")
    work_started = time.monotonic()
    context = multiprocessing.get_context("spawn")
    with context.Pool(WORKERS) as pool:
        results = pool.starmap(
            _worker, [(list(config_files), name, n % 2 == 0) for n in range(WORKERS)])
    work_elapsed = time.monotonic() - work_started

    final = store.get(COUNTER)
    fences = [fence for result in results for fence in result]
    expected = WORKERS * INCREMENTS
    write(f"final count  -> {final} (expected {expected}: "
          f"{'no lost update' if final == expected else 'LOST UPDATES'})")
    if fences:
        ordered = all(result == sorted(result) for result in results if result)
        write(f"fences seen  -> {len(fences)} locked writes, fences {min(fences)}..{max(fences)}, "
              f"all distinct: {len(set(fences)) == len(fences)}, "
              f"increasing per worker: {ordered}")
    write(f"elapsed      -> {work_elapsed:.2f} s for {expected} locked increments "
          f"({expected / work_elapsed:.0f}/s); {time.monotonic() - started:.2f} s in all")
    return int(final)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", action="append", default=None,
                        help="ini file (repeatable); default etc/kvs.conf")
    parser.add_argument("--store", default="demo")
    options = parser.parse_args(argv)
    final = run(options.config_file or ["etc/kvs.conf"], options.store)
    return 0 if final == WORKERS * INCREMENTS else 1


if __name__ == "__main__":
    sys.exit(main())
