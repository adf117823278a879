"""Lockout keys: dripline's ownership tokens for declared stores and endpoints.

A lockout is not a concurrency lock.  It is a long-lived "this is mine" mark:
while an endpoint is locked, ``set`` needs the lockout key; ``get`` and
``ping`` always work.  It prevents accidents, it is not access control.

The marks live in the store itself, so every process sharing the store sees
them::

    _provider:lockout             the store's mark
    _provider:lockout:<endpoint>  each endpoint's mark

A mark holds a SHA-256 digest of the key (salted with the store name), who
took it and when, never the key itself: the key cannot be read back through
the store, ``get`` or any attribute.

Every write of an endpoint's mark happens while holding the write lease of
the endpoint's *value* key, the same lease ``set`` holds while it checks the
mark and writes the value.  So "check the lockout, then write" is atomic with
respect to ``lock``/``unlock`` in every process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from kvs import exception
from kvs.core import KeyValueStore
from kvs.lock import KeyValueStoreLock
from kvs.provider.broadcast import utc_timestamp

LOG = logging.getLogger(__name__)

STORE_LOCKOUT_KEY = "_provider:lockout"
ENDPOINT_LOCKOUT_PREFIX = "_provider:lockout:"
#: Lease length for the short critical sections below, when the store's own
#: lock_timeout is 0 (never expires): a crash must not wedge an endpoint.
FALLBACK_LEASE_SECONDS = 5.0


def new_lockout_key() -> str:
    """A fresh lockout key: a UUID4 string."""
    return str(uuid.uuid4())


def normalize_lockout_key(key: Any) -> str:
    """Validate a caller's key; UUIDs in any spelling become one canonical form.

    Dripline stripped dashes from keys; accepting any UUID spelling keeps both
    ``"0b8e..."`` and ``"0b8e-..."`` working.  Other non-empty strings are used
    as they are.
    """
    if not isinstance(key, str) or not key.strip():
        raise exception.InvalidKey(f"a lockout key must be a non-empty str, not "
                                   f"{type(key).__name__}")
    key = key.strip()
    try:
        return str(uuid.UUID(key))
    except ValueError:
        return key


def _holder() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name in some containers
        user = "?"
    return f"{user}@{socket.gethostname()}:{os.getpid()}"


@dataclasses.dataclass(frozen=True)
class LockoutRecord:
    """One stored mark."""

    digest: str
    holder: str
    since: str

    @classmethod
    def load(cls, value: Any) -> LockoutRecord | None:
        if not isinstance(value, dict) or not isinstance(value.get("digest"), str):
            return None
        return cls(digest=value["digest"], holder=str(value.get("holder", "?")),
                   since=str(value.get("since", "?")))

    def dump(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def info(self) -> dict[str, Any]:
        """What callers may see: everything but the digest."""
        return {"locked": True, "holder": self.holder, "since": self.since}


class Lockout:
    """Lockout marks of one declared store."""

    def __init__(self, store: KeyValueStore) -> None:
        self.store = store

    # -- helpers ------------------------------------------------------------

    def digest(self, key: str) -> str:
        return hashlib.sha256(f"{self.store.name}\x00{key}".encode()).hexdigest()

    def _record(self, record_key: str) -> LockoutRecord | None:
        try:
            return LockoutRecord.load(self.store.get(record_key))
        except exception.NotFound:
            return None

    def _new_record(self, key: str) -> LockoutRecord:
        return LockoutRecord(digest=self.digest(key), holder=_holder(), since=utc_timestamp())

    def _matches(self, record: LockoutRecord, key: str | None) -> bool:
        return key is not None and record.digest == self.digest(key)

    @contextlib.contextmanager
    def lease(self, key: str) -> Iterator[KeyValueStoreLock]:
        """The write lease on ``key`` (an endpoint's value key, or the store mark)."""
        lock = self.store.get_lock(key)
        if lock.lock_timeout == 0:
            lock.lock_timeout = FALLBACK_LEASE_SECONDS
        with lock:
            yield lock

    @staticmethod
    def record_key(endpoint: str | None) -> str:
        return STORE_LOCKOUT_KEY if endpoint is None else ENDPOINT_LOCKOUT_PREFIX + endpoint

    def _what(self, endpoint: str | None) -> str:
        if endpoint is None:
            return f"store {self.store.name!r}"
        return f"endpoint {self.store.name}.{endpoint}"

    # -- queries ------------------------------------------------------------

    def is_locked(self, endpoint: str | None = None) -> bool:
        return self._record(self.record_key(endpoint)) is not None

    def info(self, endpoint: str | None = None) -> dict[str, Any]:
        """``{"locked": False}`` or ``{"locked": True, "holder": ..., "since": ...}``."""
        record = self._record(self.record_key(endpoint))
        return record.info() if record is not None else {"locked": False}

    def check(self, endpoint: str, key: str | None) -> None:
        """Raise :class:`~kvs.exception.Locked` unless ``key`` may write ``endpoint``.

        Call it while holding the endpoint's value lease.
        """
        record = self._record(self.record_key(endpoint))
        if record is None:
            return
        if key is not None:
            key = normalize_lockout_key(key)
        if not self._matches(record, key):
            raise exception.Locked(
                f"{self._what(endpoint)} is locked; "
                + ("lockout_key required" if key is None else "wrong lockout_key"),
                store=self.store.name, endpoint=endpoint)

    # -- endpoint marks -----------------------------------------------------

    def _lock_endpoint_held(self, endpoint: str, key: str, cascade: bool) -> bool:
        """Mark ``endpoint`` (value lease held).  Returns whether it was marked now."""
        record_key = self.record_key(endpoint)
        record = self._record(record_key)
        if record is not None:
            if cascade or self._matches(record, key):
                return False
            raise exception.Locked(f"{self._what(endpoint)} is already locked with another "
                                   f"lockout key", store=self.store.name, endpoint=endpoint)
        self.store.set(record_key, self._new_record(key).dump())
        return True

    def lock_endpoint(self, endpoint: str, key: str | None) -> str:
        """Lock one endpoint; return the key.  Relocking with the same key is a no-op."""
        key = new_lockout_key() if key is None else normalize_lockout_key(key)
        with self.lease(endpoint):
            self._lock_endpoint_held(endpoint, key, cascade=False)
        return key

    def _unlock_endpoint_held(self, endpoint: str, key: str | None, force: bool,
                              only_digest: str | None = None) -> bool:
        record_key = self.record_key(endpoint)
        record = self._record(record_key)
        if record is None:
            return False
        if only_digest is not None and record.digest != only_digest and not force:
            return False
        if not force and not self._matches(record, key):
            raise exception.Locked(
                f"cannot unlock {self._what(endpoint)} without its lockout_key or force=True",
                store=self.store.name, endpoint=endpoint)
        try:
            self.store.delete(record_key)
        except exception.NotFound:
            pass
        return True

    def unlock_endpoint(self, endpoint: str, key: str | None, force: bool) -> bool:
        """Unlock one endpoint.  Returns False (a no-op) when it was not locked."""
        if key is not None:
            key = normalize_lockout_key(key)
        with self.lease(endpoint):
            unlocked = self._unlock_endpoint_held(endpoint, key, force)
        if not unlocked:
            LOG.info("%s was not locked; nothing to unlock", self._what(endpoint))
        return unlocked

    # -- the store mark -----------------------------------------------------

    def lock_store(self, endpoints: Sequence[str], key: str | None) -> str:
        """Lock the store, then every endpoint not already locked; return the key."""
        key = new_lockout_key() if key is None else normalize_lockout_key(key)
        with self.lease(STORE_LOCKOUT_KEY) as lock:
            record = self._record(STORE_LOCKOUT_KEY)
            if record is not None and not self._matches(record, key):
                raise exception.Locked(f"{self._what(None)} is already locked with another "
                                       f"lockout key", store=self.store.name)
            if record is None:
                self.store.set(STORE_LOCKOUT_KEY, self._new_record(key).dump(), lock=lock)
        for endpoint in endpoints:
            with self.lease(endpoint):
                self._lock_endpoint_held(endpoint, key, cascade=True)
        return key

    def unlock_store(self, endpoints: Sequence[str], key: str | None, force: bool) -> bool:
        """Unlock the store and the endpoints it locked (all of them with ``force``).

        Endpoints locked on their own with other keys stay locked unless
        ``force``.  Returns False (a no-op) when nothing was locked.
        """
        if key is not None:
            key = normalize_lockout_key(key)
        with self.lease(STORE_LOCKOUT_KEY) as lock:
            record = self._record(STORE_LOCKOUT_KEY)
            if record is None and not force:
                LOG.info("%s was not locked; nothing to unlock", self._what(None))
                return False
            if record is not None:
                if not force and not self._matches(record, key):
                    raise exception.Locked(
                        f"cannot unlock {self._what(None)} without its lockout_key or "
                        f"force=True", store=self.store.name)
                try:
                    self.store.delete(STORE_LOCKOUT_KEY, lock=lock)
                except exception.NotFound:
                    pass
        unlocked = record is not None
        digest = record.digest if record is not None else None
        for endpoint in endpoints:
            with self.lease(endpoint):
                if self._unlock_endpoint_held(endpoint, key, force, only_digest=digest):
                    unlocked = True
        if not unlocked:
            LOG.info("%s had nothing locked; nothing to unlock", self._what(None))
        return unlocked
