"""Contention: 8 workers incrementing one counter under a lock.

Measured per variant: updates per second, and the lease hand-off latency,
the idle gap between one holder's critical section and the next holder's:

    hand-off = start of B's critical section - end of A's, A != B

For ``kvs update()`` A's section ends when ``fn`` returns (its fenced write
and release follow in one round trip, so that round trip is part of the
gap); for explicit locks it ends just before ``release()``.  Spans come from
every worker's ``time.monotonic()``, which on Linux is one system-wide clock.

Two correctness counters ride along and are reported, not asserted: lost
updates (increments made minus the final counter) and overlaps (two
critical sections running at once); both must be 0.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.backends import BackendSetup
from benchmarks.baselines import RawRedis
from benchmarks.pool import WorkerError, run_workers
from benchmarks.subjects import Section, Subject
from benchmarks.targets import KVS_UPDATE_VARIANT, RAW_SQLITE_VARIANT
from benchmarks.timing import percentile

#: Contending workers (processes; threads for the memory backend).
WORKERS = 8
#: Lock wait for the contention stores: 8 contenders must never time out.
LOCK_WAIT_TIMEOUT = 30


@dataclasses.dataclass
class ContentionResult:
    backend: str
    variant: str
    workers: int
    mode: str
    updates: int = 0
    seconds: float = 0.0
    updates_per_s: float = 0.0
    handoffs: int = 0
    handoff_p50_us: float | None = None
    handoff_p99_us: float | None = None
    lost_updates: int | None = None
    overlaps: int | None = None
    error: str | None = None
    #: updates/s of each round, when the variants ran in alternating rounds
    #: (see :func:`merge_rounds`): the checks pair them round by round.
    round_rates: list[float] = dataclasses.field(default_factory=list)
    #: The hand-off gaps in µs (kept only until the rounds are merged).
    gaps: list[float] = dataclasses.field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        del data["gaps"]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContentionResult:
        return cls(**data)


def merge_rounds(rounds: list[ContentionResult]) -> ContentionResult:
    """One variant's alternating rounds as one result: totals over all rounds,
    percentiles over all gaps, and each round's rate in ``round_rates``."""
    first = rounds[0]
    failed = next((r for r in rounds if r.error), None)
    if failed is not None:
        return failed
    merged = ContentionResult(backend=first.backend, variant=first.variant,
                              workers=first.workers, mode=first.mode)
    merged.updates = sum(r.updates for r in rounds)
    merged.seconds = sum(r.seconds for r in rounds)
    merged.updates_per_s = merged.updates / merged.seconds if merged.seconds > 0 else 0.0
    merged.round_rates = [r.updates_per_s for r in rounds]
    merged.handoffs = sum(r.handoffs for r in rounds)
    gaps = [gap for r in rounds for gap in r.gaps]
    if gaps:
        merged.handoff_p50_us = percentile(gaps, 0.50)
        merged.handoff_p99_us = percentile(gaps, 0.99)
    counts = [(r.lost_updates, r.overlaps) for r in rounds]
    merged.lost_updates = None if any(lost is None for lost, _ in counts) else sum(
        lost for lost, _ in counts if lost is not None)
    merged.overlaps = None if any(o is None for _, o in counts) else sum(
        o for _, o in counts if o is not None)
    return merged


def paired_speedup(subject: ContentionResult, baseline: ContentionResult) -> float:
    """subject's updates/s over baseline's: the median of the per-round ratios when
    both ran in the same alternating rounds (so a machine that slows down between
    rounds slows both), else the ratio of the totals."""
    pairs = list(zip(subject.round_rates, baseline.round_rates))
    if pairs and len(subject.round_rates) == len(baseline.round_rates) \
            and all(rate > 0 for _, rate in pairs):
        ratios = sorted(mine / theirs for mine, theirs in pairs)
        middle = len(ratios) // 2
        return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2
    return subject.updates_per_s / baseline.updates_per_s


@dataclasses.dataclass
class Variant:
    """One way of taking the lock, on one backend."""

    backend: str
    name: str
    factory: Callable[[], Subject]
    method: str  # "update" or "locked_write"


def variants_for(setup: BackendSetup, redis_port: int | None) -> list[Variant]:
    """kvs's two locked paths on ``setup``; on redis also redis-py's Lock, on etcd etcd3gw's."""
    store_name = f"contend-{setup.name}"

    def kvs_subject() -> Subject:
        return setup.kvs_subject(store_name, lock_wait_timeout=LOCK_WAIT_TIMEOUT)

    found = [Variant(setup.name, KVS_UPDATE_VARIANT, kvs_subject, "update"),
             Variant(setup.name, "kvs get_lock+get+set", kvs_subject, "locked_write")]
    if setup.name == "sqlite" and setup.raw_factory is not None:
        # The raw transaction loop (BEGIN IMMEDIATE; SELECT; write; COMMIT), each
        # worker on a connection of its own to the raw file.
        found.append(Variant("sqlite", RAW_SQLITE_VARIANT, setup.raw_factory, "update"))
    if setup.name == "etcd" and setup.raw_factory is not None:
        # etcd3gw's Lock: acquire() retried every 1 ms (it does not wait), get, put, release.
        found.append(Variant("etcd", "etcd3gw Lock (poll 1 ms)", setup.raw_factory,
                             "locked_write"))
    if setup.name == "redis" and redis_port is not None:
        port = redis_port
        found += [
            Variant("redis", "redis-py Lock (sleep=0.1 s, default)",
                    lambda: RawRedis(port, lock_sleep=0.1), "locked_write"),
            Variant("redis", "redis-py Lock (sleep=1 ms)",
                    lambda: RawRedis(port, lock_sleep=0.001), "locked_write"),
        ]
    return found


def analyse(spans: list[tuple[int, float, float]]) -> tuple[list[float], int]:
    """Hand-off gaps in µs between different workers, and the count of overlapping sections."""
    ordered = sorted(spans, key=lambda span: span[1])
    gaps: list[float] = []
    overlaps = 0
    for (worker_a, _, end_a), (worker_b, start_b, _) in itertools.pairwise(ordered):
        if start_b < end_a:
            overlaps += 1
        elif worker_a != worker_b:
            gaps.append((start_b - end_a) * 1e6)
    return gaps, overlaps


def _with_subject(variant: Variant, call: Callable[[Subject], Any]) -> Any:
    """``call`` on a subject of the parent process, closed before any worker forks.

    A sqlite3 connection sits in a reference cycle, so dropping it leaves it
    open until the garbage collector runs; a child forked meanwhile inherits
    SQLite's record of the parent's file locks, believes it holds locks it does
    not, and its transactions stop excluding the other workers' (the raw
    sqlite3 loop lost 2-5 updates in one run out of two that way).
    """
    subject = variant.factory()
    try:
        return call(subject)
    finally:
        subject.close()


def run_variant(setup: BackendSetup, variant: Variant, duration: float,
                workers: int = WORKERS) -> ContentionResult:
    threads = setup.process_local
    result = ContentionResult(backend=variant.backend, variant=variant.name, workers=workers,
                              mode="threads" if threads else "processes")
    key = f"contend:{uuid.uuid4().hex[:8]}"
    try:
        _with_subject(variant, lambda subject: subject.set(key, 0))
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result

    def prepare() -> Subject:
        if not threads:
            setup.reopen_after_fork()
        subject = variant.factory()
        subject.get(key)  # connect before the start line
        return subject

    def body(subject: Subject, deadline: float) -> list[tuple[float, float]]:
        section = Section()
        step: Callable[..., None] = getattr(subject, variant.method)
        while time.monotonic() < deadline:
            step(key, section)
        if not threads:
            subject.close()
        return section.spans

    try:
        per_worker = run_workers(workers, threads, prepare, body, duration)
    except WorkerError as exc:
        result.error = str(exc)
        return result
    spans = [(index, start, end) for index, worker_spans in enumerate(per_worker)
             for start, end in worker_spans]
    if not spans:
        result.error = "no update completed"
        return result
    result.updates = len(spans)
    result.seconds = max(end for _, _, end in spans) - min(start for _, start, _ in spans)
    result.updates_per_s = result.updates / result.seconds if result.seconds > 0 else 0.0
    gaps, result.overlaps = analyse(spans)
    result.gaps = gaps
    result.handoffs = len(gaps)
    if gaps:
        result.handoff_p50_us = percentile(gaps, 0.50)
        result.handoff_p99_us = percentile(gaps, 0.99)
    try:
        result.lost_updates = result.updates - int(
            _with_subject(variant, lambda subject: subject.get(key)))
    except Exception as exc:
        result.error = f"final read failed: {type(exc).__name__}: {exc}"
    return result
