"""The per-operation micro-benchmarks: kvs against its baselines, interleaved.

For every backend and operation, kvs, the raw client and the dogpile region
are timed in alternating rounds (see :mod:`benchmarks.timing`).  Each subject
works on its own keys on the same server, with the same values.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import msgpack

from benchmarks.backends import BackendSetup
from benchmarks.subjects import Subject
from benchmarks.timing import Operation, Settings, Stat, measure

#: Keys per data set: operations cycle through them.
KEYS = 1000
#: Keys per get_multi / set_multi call.
BATCH = 100


@dataclasses.dataclass(frozen=True)
class OperationSpec:
    """One measured operation: its name, what it does, and the value size."""

    name: str
    kind: str  # get | set | get_multi | set_multi | update | locked_write
    size: int = 100
    description: str = ""


OPERATIONS = (
    OperationSpec("get 100B", "get", 100, "get of a 100 B value"),
    OperationSpec("get 10KB", "get", 10_000, "get of a 10 KB value"),
    OperationSpec("set 100B", "set", 100, "set of a 100 B value"),
    OperationSpec("set 10KB", "set", 10_000, "set of a 10 KB value"),
    OperationSpec("get_multi 100", "get_multi", 100, "get_multi of 100 keys of 100 B"),
    OperationSpec("set_multi 100", "set_multi", 100, "set_multi of 100 keys of 100 B"),
    OperationSpec("update", "update", 8, "update(): locked read-modify-write of a counter"),
    OperationSpec("locked write", "locked_write", 8,
                  "get_lock, get, set(lock=), release (baselines: their own lock)"),
)


def make_value(size: int) -> dict[str, Any]:
    """A small record whose msgpack encoding is ``size`` bytes (to within a few)."""
    value: dict[str, Any] = {"id": 1, "data": ""}
    base = len(msgpack.packb(value, use_bin_type=True))
    length = max(0, size - base)
    value["data"] = "x" * length
    # The str header grows with the length (1, 2, 3 or 5 bytes): take it back.
    excess = len(msgpack.packb(value, use_bin_type=True)) - size
    if excess > 0:
        value["data"] = "x" * max(0, length - excess)
    return value


@dataclasses.dataclass
class OperationResult:
    """One row of the main table."""

    backend: str
    operation: str
    stats: dict[str, Stat]
    #: Roles that have no number, with the reason.
    missing: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "operation": self.operation,
                "stats": {role: stat.to_json() for role, stat in self.stats.items()},
                "missing": self.missing}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OperationResult:
        return cls(backend=data["backend"], operation=data["operation"],
                   stats={role: Stat.from_json(stat) for role, stat in data["stats"].items()},
                   missing=dict(data.get("missing", {})))


class DataSet:
    """The keys and values one subject works on (its own key namespace)."""

    def __init__(self, role: str, spec: OperationSpec) -> None:
        prefix = f"{role}:{spec.kind}:{spec.size}:"
        self.keys = [f"{prefix}{index}" for index in range(KEYS)]
        self.value = make_value(spec.size)
        self.batches = [self.keys[start:start + BATCH] for start in range(0, KEYS, BATCH)]
        self.mappings = [dict.fromkeys(batch, self.value) for batch in self.batches]
        self.counter = f"{role}:counter"

    def load(self, subject: Subject) -> None:
        for mapping in self.mappings:
            subject.set_multi(mapping)
        subject.set(self.counter, 0)


def operation(subject: Subject, spec: OperationSpec, data: DataSet) -> Operation:
    """The timed callable of ``spec`` on ``subject``."""
    keys, value, batches, mappings = data.keys, data.value, data.batches, data.mappings
    counter = data.counter
    count, groups = len(keys), len(batches)
    builders: dict[str, Callable[[], Operation]] = {
        "get": lambda: lambda i: subject.get(keys[i % count]),
        "set": lambda: lambda i: subject.set(keys[i % count], value),
        "get_multi": lambda: lambda i: subject.get_multi(batches[i % groups]),
        "set_multi": lambda: lambda i: subject.set_multi(mappings[i % groups]),
        "update": lambda: lambda i: subject.update(counter),
        "locked_write": lambda: lambda i: subject.locked_write(counter),
    }
    return builders[spec.kind]()


def subjects_for(setup: BackendSetup, store_name: str) -> tuple[dict[str, Subject], dict[str, str]]:
    """kvs plus the baselines of one backend, and the reasons for any that are missing."""
    subjects: dict[str, Subject] = {"kvs": setup.kvs_subject(store_name)}
    missing: dict[str, str] = {}
    if setup.raw_factory is not None:
        subjects["raw"] = setup.raw_factory()
    if setup.dogpile_factory is not None:
        subjects["dogpile"] = setup.dogpile_factory()
    elif setup.dogpile_missing:
        missing["dogpile"] = setup.dogpile_missing
    return subjects, missing


def run_operation(setup: BackendSetup, subjects: dict[str, Subject], base_missing: dict[str, str],
                  spec: OperationSpec, settings: Settings) -> OperationResult:
    """Measure one operation on one backend, every subject interleaved."""
    missing = dict(base_missing)
    variants: dict[str, Operation] = {}
    for role, subject in subjects.items():
        if not subject.supports(spec.kind):
            missing[role] = subject.missing[spec.kind]
            continue
        data = DataSet(role, spec)
        data.load(subject)
        variants[role] = operation(subject, spec, data)
        if spec.kind in ("get", "get_multi") and setup.hot_reads:
            # Read every key twice before timing, the second time after a pause:
            # hot keys, as a near cache (started by the first read) sees them.
            # get_multi reads a batch per call: one pass is one call per batch.
            calls = KEYS if spec.kind == "get" else len(data.batches)
            for _ in range(2):
                for index in range(calls):
                    variants[role](index)
                time.sleep(0.05)
    stats = measure(variants, settings)
    return OperationResult(backend=setup.name, operation=spec.name, stats=stats, missing=missing)


def unavailable_rows(setup: BackendSetup) -> list[OperationResult]:
    """Rows that say why a backend has no numbers."""
    reason = setup.reason or "not available"
    return [OperationResult(backend=setup.name, operation=spec.name, stats={},
                            missing={"kvs": reason}) for spec in OPERATIONS]
