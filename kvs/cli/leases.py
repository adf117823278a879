"""Commands on leases: lock (take and hold one), unlock (show or break one)."""

from __future__ import annotations

import threading
import time
from typing import Any

from kvs import core, exception
from kvs.cli.output import table
from kvs.cli.session import EXIT_FAILED, EXIT_LOCKED, EXIT_OK, Failure, Session, stop_on_signals


def acquire(store: core.KeyValueStore, lock: Any) -> None:
    """``lock.acquire()``; when another holder has the lease, say who (fence, time left)."""
    try:
        lock.acquire()
    except exception.LockAcquireTimeout:
        info = store.lease_info(lock.key)
        left = ""
        if info is not None:
            left = ("; it never expires" if info.remaining is None
                    else f", {info.remaining:.1f} s left")
        held = f" (fence {info.fence}{left})" if info is not None else ""
        raise Failure(f"key {lock.key!r} in store {store.name!r} is leased by another "
                      f"holder{held}; waited {lock.lock_wait_timeout:g} s", EXIT_LOCKED) from None


def cmd_lock(session: Session) -> int:
    name, key, hold = session.arg("store"), session.arg("key"), session.arg("hold")
    store = session.store(name)
    lock = store.get_lock(key)
    lock.lock_wait_timeout = session.arg("wait")
    with stop_on_signals() as stop:
        acquire(store, lock)
        try:
            lease = lock.lock_timeout
            session.emit(
                {"event": "acquired", "store": name, "key": key, "token": lock.token,
                 "fence": lock.fence, "lock_timeout": lease, "hold": hold},
                table(["store", "key", "token", "fence", "hold"],
                      [[name, key, lock.token, lock.fence,
                        "until Ctrl-C" if hold is None else f"{hold:g} s"]]), stream=True)
            try:
                _hold(lock, hold, stop)
            except exception.LockTimeout:
                raise Failure(f"lost the lease on key {key!r} in store {name!r}: it was "
                              f"broken or taken over (fence {lock.fence})", EXIT_LOCKED) from None
        finally:
            lock.release()
    session.emit({"event": "released", "store": name, "key": key, "fence": lock.fence},
                 f"released lease fence {lock.fence} on {key!r} in store {name!r}", stream=True)
    return EXIT_OK


def _hold(lock: Any, hold: float | None, stop: threading.Event) -> None:
    """Keep ``lock`` until ``hold`` seconds pass or ``stop`` is set, renewing it."""
    deadline = None if hold is None else time.monotonic() + hold
    # Renew at a third of the lease, so one late renewal still leaves it alive.
    renew_every = lock.lock_timeout / 3 if lock.lock_timeout > 0 else None
    renewed = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        waits = [w for w in (None if deadline is None else deadline - now,
                             None if renew_every is None else renewed + renew_every - now)
                 if w is not None]
        # Wake at least once a second even with nothing to do: a bounded wait
        # keeps the signal handlers responsive everywhere.
        if stop.wait(max(0.0, min([*waits, 1.0]))):
            return
        now = time.monotonic()
        if renew_every is not None and now - renewed >= renew_every:
            # extend() adds to the deadline: add the time since the last renewal.
            lock.extend(max(now - renewed, 1e-3))
            renewed = now


def _lease_row(info: Any) -> dict[str, Any]:
    return {"token": info.token, "fence": info.fence, "remaining": info.remaining}


def _lease_text(info: Any) -> str:
    left = "never expires" if info.remaining is None else f"{info.remaining:.1f} s left"
    return f"fence {info.fence}, token {info.token or '?'}, {left}"


def cmd_unlock(session: Session) -> int:
    name, key = session.arg("store"), session.arg("key")
    store = session.store(name)
    info = store.lease_info(key)
    if info is None:
        session.emit({"store": name, "key": key, "lease": None, "broken": False},
                     f"no lease on {key!r} in store {name!r}")
        return EXIT_OK
    if not session.arg("force"):
        session.emit({"store": name, "key": key, "lease": _lease_row(info), "broken": False},
                     f"{key!r} in store {name!r} is leased: {_lease_text(info)}")
        raise Failure(f"lease on key {key!r} in store {name!r} is held; "
                      f"use --force to break it", EXIT_LOCKED)
    if not session.arg("yes"):
        session.stderr.write(f"break the lease on {key!r} in store {name!r} "
                             f"({_lease_text(info)})? [y/N] ")
        session.stderr.flush()
        answer = session.stdin.readline().strip().lower()
        if not session.stdin.isatty():
            session.stderr.write("\n")  # the answer was not echoed: end the prompt line
        if answer not in ("y", "yes"):
            raise Failure("not confirmed; the lease is kept", EXIT_FAILED)
    broken = store.break_lock(key)
    session.emit({"store": name, "key": key, "lease": _lease_row(info), "broken": broken},
                 f"broke lease fence {info.fence} on {key!r} in store {name!r}" if broken
                 else f"the lease on {key!r} in store {name!r} was already gone")
    return EXIT_OK
