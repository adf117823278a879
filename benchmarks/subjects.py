"""The things measured: one interface for kvs and for every baseline.

A subject answers the benchmark's operations on string keys holding
msgpack-able values.  ``update`` and ``locked_write`` increment an integer
counter under the subject's lock; a :class:`Section` passed to them records
when the critical section starts and ends, which is how the contention
benchmark measures lease hand-off.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

import kvs


def pack(value: Any) -> bytes:
    """msgpack exactly as kvs's default serializer encodes."""
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes) -> Any:
    """msgpack exactly as kvs's default serializer decodes."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class Section:
    """Start and end times (``time.monotonic``) of the critical sections of one worker.

    On Linux ``time.monotonic`` reads the system-wide CLOCK_MONOTONIC, so spans
    recorded in different processes can be compared.
    """

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._entered = 0.0

    def enter(self) -> None:
        self._entered = time.monotonic()

    def leave(self) -> None:
        self.spans.append((self._entered, time.monotonic()))


class Subject:
    """Base class: every operation is missing until a subclass provides it."""

    #: Short name shown in tables ("kvs", "raw", "dogpile").
    role = "?"
    #: What this subject is, in a few words (shown under the table).
    label = "?"
    #: Operations this subject cannot do, with the reason (shown instead of a number).
    missing: Mapping[str, str] = {}

    def supports(self, operation: str) -> bool:
        return operation not in self.missing

    def get(self, key: str) -> Any:
        raise NotImplementedError

    def set(self, key: str, value: Any) -> None:
        raise NotImplementedError

    def get_multi(self, keys: Sequence[str]) -> list[Any]:
        raise NotImplementedError

    def set_multi(self, mapping: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def update(self, key: str, section: Section | None = None) -> None:
        """Increment the counter at ``key`` atomically (read-modify-write under a lock)."""
        raise NotImplementedError

    def locked_write(self, key: str, section: Section | None = None) -> None:
        """Take the lock on ``key``, read it, write it + 1, release."""
        raise NotImplementedError

    def close(self) -> None:
        """Drop connections (called at the end of a worker)."""


def _increment(value: int) -> int:
    return value + 1


class KVSSubject(Subject):
    """A configured :class:`kvs.KeyValueStore`."""

    role = "kvs"

    def __init__(self, store: kvs.KeyValueStore) -> None:
        self.store = store
        self.label = f"kvs store on {store.backend_name}"

    def get(self, key: str) -> Any:
        return self.store.get(key)

    def set(self, key: str, value: Any) -> None:
        self.store.set(key, value)

    def get_multi(self, keys: Sequence[str]) -> list[Any]:
        return self.store.get_multi(keys)

    def set_multi(self, mapping: Mapping[str, Any]) -> None:
        self.store.set_multi(mapping)

    def update(self, key: str, section: Section | None = None) -> None:
        if section is None:
            self.store.update(key, _increment, default=0)
            return

        def traced(value: int) -> int:
            # update() calls fn once it holds the lease and has read the value;
            # the fenced write and the release follow in one round trip.
            section.enter()
            result = value + 1
            section.leave()
            return result

        self.store.update(key, traced, default=0)

    def locked_write(self, key: str, section: Section | None = None) -> None:
        with self.store.get_lock(key) as lock:
            if section is not None:
                section.enter()
            self.store.set(key, self.store.get(key) + 1, lock=lock)
            if section is not None:
                section.leave()
