"""dogpile's per-key mutex on a kvs backend: a lease, so single flight holds across processes.

dogpile's ``get_or_create`` (and so ``cache_on_arguments`` and
:meth:`kvs.KeyValueStore.memoize`) takes ``backend.get_mutex(key)`` before it
runs a creator, so that one caller regenerates a value while the others wait
or keep serving the old one.  A stock in-process lock does that for one
process only; :class:`LeaseMutex` takes the backend's own lease on the key,
the one :meth:`kvs.KeyValueStore.get_lock` takes, so every process and host
sharing the backend sees it.

The lease lasts ``ttl`` seconds (the backend argument ``mutex_timeout``, 5 s
by default), and a keeper thread extends it every third of that while the
creator runs.  So a creator may take as long as it needs, and a holder that
crashed (or was killed) blocks the others for at most ``ttl``.  Should the
keeper fail to extend (the backend was unreachable past the TTL), the next
caller regenerates too: a duplicate computation, never a wrong value, which is
the right trade for a cache lock.  Writes that must not overlap use
:meth:`~kvs.KeyValueStore.get_lock`, whose writes are fenced.

Thread-safe: dogpile shares one mutex per key among the threads of a region.
A ``threading.Lock`` orders those threads; each acquisition then takes the
lease with a token of its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from dogpile.cache.api import CacheMutex

LOG = logging.getLogger(__name__)


class LeaseMutex(CacheMutex):
    """A dogpile ``CacheMutex`` that is the backend's lease on ``key``."""

    def __init__(self, backend: Any, key: str, ttl: float) -> None:
        self._backend = backend
        self._key = key
        self._ttl = ttl
        self._local = threading.Lock()
        self._token: str | None = None
        self._released = threading.Event()

    def acquire(self, wait: bool = True) -> bool:
        if not self._local.acquire(wait):
            return False
        try:
            token = os.urandom(16).hex()
            while self._backend.acquire_lease(self._key, token, self._ttl) is None:
                if not wait:
                    self._local.release()
                    return False
                # Woken when the holder releases; the lease expires within ttl anyway.
                self._backend.wait_for_release(self._key, self._ttl)
        except BaseException:
            self._local.release()
            raise
        released = threading.Event()
        try:
            threading.Thread(target=self._keep, args=(token, released), daemon=True,
                             name=f"kvs-mutex-keeper {self._key[:40]}").start()
        except BaseException:  # no keeper (no threads left): give everything back
            try:
                self._backend.release_lease(self._key, token)
            finally:
                self._local.release()
            raise
        self._token, self._released = token, released
        return True

    def _keep(self, token: str, released: threading.Event) -> None:
        """Extend the lease every third of its TTL until released (or lost).

        ``extend_lease`` adds time: adding the time gone since the last
        extension keeps about ``ttl`` left, so a killed holder blocks the key
        for at most ``ttl`` however long it held it.
        """
        last = time.monotonic()  # the lease ends ttl after the last successful extension
        while not released.wait(self._ttl / 3):
            now = time.monotonic()
            try:
                if not self._backend.extend_lease(self._key, token, now - last):
                    LOG.debug("dogpile mutex on key %r was lost while held", self._key)
                    return
            except Exception as error:  # the next attempt adds this time back
                LOG.debug("could not extend the dogpile mutex on key %r: %s", self._key, error)
                continue
            last = now

    def release(self) -> None:
        token, self._token = self._token, None
        self._released.set()
        try:
            if token is not None and not self._backend.release_lease(self._key, token):
                LOG.debug("dogpile mutex on key %r had expired before its release "
                          "(it could not be extended in time)", self._key)
        finally:
            self._local.release()

    def locked(self) -> bool:
        return self._local.locked() or self._backend.lease_info(self._key) is not None
