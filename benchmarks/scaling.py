"""Scaling: cost against store size and value size, throughput against workers.

* Store size: a kvs store and a raw-client store grow from 1k to 1M keys
  (100k in ``--quick``); at each size, get and set of random existing keys
  are timed.  The cost should stay flat.
* Value size: get and set of 100 B to 1 MB values, kvs against the raw client.
* Workers: 1 to 16 workers (processes; threads for memory) each doing get+set
  of random keys for a fixed time; total operations per second, kvs and raw.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from benchmarks.backends import BackendSetup
from benchmarks.pool import WorkerError, run_workers
from benchmarks.subjects import Subject
from benchmarks.suites import make_value
from benchmarks.timing import Operation, Settings, Stat, measure, paired_ratio

#: Keys written per set_multi while a store grows.
FILL_BATCH = 1000
#: Random keys prepared per measurement (operations cycle through them).
SAMPLE = 4096


@dataclasses.dataclass
class Point:
    """One measurement of a scaling curve."""

    backend: str
    series: str  # e.g. "kvs get", "raw set", "kvs get+set"
    x: float
    #: µs per op (store and value size) or operations per second (workers).
    y: float
    stat: Stat | None = None
    error: str | None = None
    #: Store size only: cost relative to a small reference store timed in the same rounds.
    relative: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["stat"] = None if self.stat is None else self.stat.to_json()
        data["y"] = self.y if math.isfinite(self.y) else None  # strict JSON has no NaN
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Point:
        stat = data.get("stat")
        y = math.nan if data["y"] is None else float(data["y"])
        return cls(backend=data["backend"], series=data["series"], x=data["x"], y=y,
                   stat=None if stat is None else Stat.from_json(stat), error=data.get("error"),
                   relative=data.get("relative"))


def _sample_keys(prefix: str, population: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"{prefix}{rng.randrange(population)}" for _ in range(SAMPLE)]


def _getter(get: Callable[[str], Any], keys: list[str]) -> Operation:
    count = len(keys)
    return lambda index: get(keys[index % count])


def _setter(set_: Callable[[str, Any], None], keys: list[str], value: Any) -> Operation:
    count = len(keys)
    return lambda index: set_(keys[index % count], value)


def _fill(subject: Subject, prefix: str, start: int, stop: int, value: Any) -> None:
    for lower in range(start, stop, FILL_BATCH):
        upper = min(stop, lower + FILL_BATCH)
        subject.set_multi({f"{prefix}{index}": value for index in range(lower, upper)})


def _scratch_kvs(setup: BackendSetup, tag: str) -> Subject:
    overrides = setup.scratch_config(tag) if setup.scratch_config else {}
    return setup.kvs_subject(tag, **overrides)


def store_size(setup: BackendSetup, sizes: Sequence[int], settings: Settings,
               progress: Callable[[], None]) -> list[Point]:
    """Grow a store through ``sizes`` keys; time get and set at each size.

    The kvs store grows alongside a raw-client store (when the backend has an
    isolated one, ``raw_scratch``), so a growth that the storage itself shows
    can be told from one kvs adds.  Each of them has a reference that stays at
    the smallest size and is timed in the same interleaved rounds; each point
    carries its cost relative to its reference (``relative``), since points
    measured minutes apart on a busy machine would measure the machine.
    """
    tag = f"size-{setup.name}-{uuid.uuid4().hex[:6]}"
    value = make_value(100)
    growing: dict[str, tuple[Subject, Subject, str]] = {
        "kvs": (_scratch_kvs(setup, tag), _scratch_kvs(setup, tag + "-ref"), "n:")}
    if setup.raw_scratch is not None:
        growing["raw"] = (setup.raw_scratch(tag), setup.raw_scratch(tag + "-ref"),
                          f"{tag}:n:")
    for _, reference, prefix in growing.values():
        _fill(reference, prefix, 0, sizes[0], value)
    points: list[Point] = []
    filled = 0
    for size in sizes:
        try:
            variants: dict[str, Operation] = {}
            for role, (subject, reference, prefix) in growing.items():
                _fill(subject, prefix, filled, size, value)
                variants[f"{role} get"] = _getter(
                    subject.get, _sample_keys(prefix, size, seed=size))
                variants[f"{role} set"] = _setter(
                    subject.set, _sample_keys(prefix, size, seed=size + 1), value)
                variants[f"{role} ref get"] = _getter(
                    reference.get, _sample_keys(prefix, sizes[0], seed=1))
                variants[f"{role} ref set"] = _setter(
                    reference.set, _sample_keys(prefix, sizes[0], seed=2), value)
            filled = size
            stats = measure(variants, settings)
            points += [Point(setup.name, f"{role} {op}", size, stats[f"{role} {op}"].median_us,
                             stats[f"{role} {op}"],
                             relative=paired_ratio(stats[f"{role} {op}"],
                                                   stats[f"{role} ref {op}"]))
                       for role in growing for op in ("get", "set")]
        except Exception as exc:
            points.append(Point(setup.name, "kvs get", size, float("nan"),
                                error=f"{type(exc).__name__}: {exc}"))
            progress()
            break
        progress()
    for subject, reference, _ in growing.values():
        subject.close()
        reference.close()
    return points


def value_size(setup: BackendSetup, subjects: dict[str, Subject], sizes: Sequence[int],
               settings: Settings, progress: Callable[[], None]) -> list[Point]:
    """get and set at each value size, kvs and raw interleaved."""
    points: list[Point] = []
    for size in sizes:
        value = make_value(size)
        variants: dict[str, Operation] = {}
        try:
            for role, subject in subjects.items():
                # Few keys: 1 MB values must not fill the server.
                keys = [f"vs:{role}:{size}:{index}" for index in range(8)]
                subject.set_multi(dict.fromkeys(keys, value))
                variants[f"{role} get"] = _getter(subject.get, keys)
                variants[f"{role} set"] = _setter(subject.set, keys, value)
            stats = measure(variants, settings)
        except Exception as exc:
            points.append(Point(setup.name, "kvs get", size, float("nan"),
                                error=f"{type(exc).__name__}: {exc}"))
            progress()
            continue
        points += [Point(setup.name, series, size, stat.median_us, stat)
                   for series, stat in stats.items()]
        progress()
    return points


def throughput(setup: BackendSetup, role: str, factory: Callable[[], Subject],
               workers: int, duration: float) -> Point:
    """Operations per second of ``workers`` workers doing get+set on random keys."""
    threads = setup.process_local
    series = f"{role} get+set"
    keys = [f"tp:{role}:{index}" for index in range(1000)]
    value = make_value(100)
    try:
        factory().set_multi(dict.fromkeys(keys, value))
    except Exception as exc:
        return Point(setup.name, series, workers, float("nan"),
                     error=f"{type(exc).__name__}: {exc}")

    def prepare() -> tuple[Subject, list[str]]:
        if not threads:
            setup.reopen_after_fork()
        subject = factory()
        subject.get(keys[0])  # connect before the start line
        rng = random.Random()
        # Drawn before the start line: 16 threads drawing under the GIL
        # would eat into a short run.
        return subject, [keys[rng.randrange(len(keys))] for _ in range(SAMPLE)]

    def body(state: tuple[Subject, list[str]], deadline: float) -> tuple[int, float, float]:
        subject, picks = state
        operations, index = 0, 0
        began = time.monotonic()
        while time.monotonic() < deadline:
            for _ in range(8):
                key = picks[index % SAMPLE]
                subject.get(key)
                subject.set(key, value)
                index += 1
            operations += 16
        ended = time.monotonic()
        if not threads:
            subject.close()
        return operations, began, ended

    try:
        results = run_workers(workers, threads, prepare, body, duration)
    except WorkerError as exc:
        return Point(setup.name, series, workers, float("nan"), error=str(exc))
    # One window from the first start to the last end: threads start one by
    # one as they get the GIL, so their own clocks would overlap and overcount.
    total = sum(operations for operations, _, _ in results)
    window = max(ended for _, _, ended in results) - min(began for _, began, _ in results)
    return Point(setup.name, series, workers, total / window if window > 0 else 0.0)


def throughput_series(setup: BackendSetup, factories: Mapping[str, Callable[[], Subject]],
                      counts: Sequence[int], duration: float, repeats: int,
                      progress: Callable[[], None]) -> list[Point]:
    """Throughput at each worker count for each role, ``repeats`` runs each.

    The roles alternate run by run (kvs, raw, kvs, raw, ...) so a burst of
    load on the machine falls on both; each point is the median of its runs,
    and its ``stat`` keeps every run (ops/s, not µs).
    """
    points: list[Point] = []
    for count in counts:
        runs: dict[str, list[Point]] = {role: [] for role in factories}
        for _ in range(repeats):
            for role, factory in factories.items():
                runs[role].append(throughput(setup, role, factory, count, duration))
        for role, done in runs.items():
            good = [p.y for p in done if p.error is None and math.isfinite(p.y)]
            if not good:
                points.append(done[-1])
                continue
            stat = Stat(median_us=statistics.median(good), min_us=min(good), max_us=max(good),
                        rounds=len(good), ops_per_round=0, samples=[round(y, 1) for y in good])
            points.append(Point(setup.name, f"{role} get+set", count, stat.median_us, stat))
        progress()
    return points
