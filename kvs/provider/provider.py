"""Provider and Endpoint: a declared store and its declared keys.

A :class:`Provider` wraps one configured :class:`~kvs.core.KeyValueStore`
whose keys ("endpoints") are declared in the configuration.  Each endpoint's
value lives in the store under the endpoint's name, so plain store reads see
it too.  The provider adds what dragonfly's ``kv_store`` had: calibration on
read, ``get_on_set``, lockout keys, change broadcasts and scheduled logging.

Bookkeeping keys live in the same store under ``_provider:`` (endpoint names
cannot contain ``:``, so they never collide): lockout marks, broadcast
baselines, the event log and the sampler lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from kvs import exception
from kvs.core import KeyValueStore
from kvs.provider.broadcast import (
    Baseline,
    Callback,
    EventLog,
    Publisher,
    Subscribers,
    Subscription,
    Watcher,
    channel_publisher,
    event_json,
    make_event,
)
from kvs.provider.lockout import Lockout
from kvs.provider.options import EndpointSpec
from kvs.provider.scheduler import MAX_HEARTBEAT, LeaderLease, Sampler

LOG = logging.getLogger(__name__)

BASELINE_PREFIX = "_provider:baseline:"


class Endpoint:
    """One declared key of a provider."""

    def __init__(self, provider: Provider, spec: EndpointSpec) -> None:
        self.provider = provider
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def address(self) -> str:
        """``<store>.<endpoint>``, as :func:`kvs.provider.resolve` accepts it."""
        return self.spec.address

    @property
    def calibration(self) -> str | None:
        """The calibration's configuration text, or None."""
        return None if self.spec.calibration is None else self.spec.calibration.text

    @property
    def get_on_set(self) -> bool:
        return self.spec.get_on_set

    @property
    def log_on_set(self) -> bool:
        return self.spec.log_on_set

    @property
    def schedule_interval(self) -> float:
        return self.spec.schedule_interval

    @property
    def alert_channel(self) -> str:
        return self.spec.alert_channel

    def get(self) -> dict[str, Any]:
        return self.provider.get(self.name)

    def set(self, value: Any, lockout_key: str | None = None) -> dict[str, Any] | None:
        return self.provider.set(self.name, value, lockout_key=lockout_key)

    def lock(self, lockout_key: str | None = None) -> str:
        """Lock this endpoint; return the lockout key (a new UUID when none is given)."""
        return self.provider._lockout.lock_endpoint(self.name, lockout_key)

    def unlock(self, lockout_key: str | None = None, force: bool = False) -> bool:
        """Unlock; False (a no-op, logged) when it was not locked."""
        return self.provider._lockout.unlock_endpoint(self.name, lockout_key, force)

    @property
    def is_locked(self) -> bool:
        return self.provider._lockout.is_locked(self.name)

    def lock_info(self) -> dict[str, Any]:
        """``{"locked": bool}`` plus who locked it and since when; never the key."""
        return self.provider._lockout.info(self.name)

    def __repr__(self) -> str:
        return f"<Endpoint {self.address}>"


class Provider:
    """A declared store.  Get one with :func:`kvs.provider.get_provider`."""

    def __init__(self, store: KeyValueStore, specs: Sequence[EndpointSpec],
                 event_log_size: int = 1000) -> None:
        if not specs:
            raise exception.ConfigurationError(
                f"store {store.name!r} declares no endpoints", store=store.name,
                option="endpoints")
        self.store = store
        self._endpoints = {spec.name: Endpoint(self, spec) for spec in specs}
        self._subscribers = Subscribers()
        self._events = EventLog(store, event_log_size)
        self._lockout = Lockout(store)
        self._publisher: Publisher | None = channel_publisher(store)
        intervals = {spec.name: spec.schedule_interval for spec in specs}
        positive = [value for value in intervals.values() if value > 0]
        heartbeat = min([MAX_HEARTBEAT, *positive])
        self._sampler = Sampler(store.name, intervals, self.sample,
                                LeaderLease(store, lease_seconds=max(3 * heartbeat, 2.0)))
        self._sample_guard = threading.Lock()

    @property
    def name(self) -> str:
        return self.store.name

    def __repr__(self) -> str:
        return f"<Provider {self.name!r} endpoints={self.list_endpoints()}>"

    # -- endpoints ----------------------------------------------------------

    def list_endpoints(self) -> list[str]:
        """Endpoint names, sorted."""
        return sorted(self._endpoints)

    @property
    def endpoint_names(self) -> list[str]:
        return self.list_endpoints()

    @property
    def endpoints(self) -> dict[str, Endpoint]:
        """A copy of ``{name: Endpoint}``."""
        return dict(self._endpoints)

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint called ``name``; :class:`~kvs.exception.NotFound` if undeclared."""
        try:
            return self._endpoints[name]
        except (KeyError, TypeError):
            raise unknown_endpoint(self.name, name) from None

    # -- values -------------------------------------------------------------

    def get(self, name: str) -> dict[str, Any]:
        """``{"value_raw": v}``, plus ``"value_cal"`` when the endpoint is calibrated.

        Raises :class:`~kvs.exception.CalibrationError` (carrying ``value_raw``)
        when the calibration cannot be applied.
        """
        spec = self.endpoint(name).spec
        raw = self.store.get(name)
        reading: dict[str, Any] = {"value_raw": raw}
        if spec.calibration is not None:
            reading["value_cal"] = spec.calibration.apply(raw)
        return reading

    def set(self, name: str, value: Any, lockout_key: str | None = None
            ) -> dict[str, Any] | None:
        """Store ``value``; needs ``lockout_key`` while the endpoint is locked.

        Returns the ``get()`` result when ``get_on_set`` is on, else None.  With
        ``log_on_set`` the new value is broadcast once (reason ``on_set``) and
        becomes the baseline of the change rule.
        """
        spec = self.endpoint(name).spec
        with self._lockout.lease(name) as lease:
            self._lockout.check(name, lockout_key)
            self.store.set(name, value, lock=lease)
        if spec.log_on_set:
            self._log_on_set(spec)
        return self.get(name) if spec.get_on_set else None

    def _log_on_set(self, spec: EndpointSpec) -> None:
        try:
            reading = self._reading_for_event(spec.name)
            now = time.time()
            self._broadcast(spec, reading, "on_set", now)
            self._write_baseline(spec.name, _checked_value(reading), now)
        except Exception:
            LOG.exception("log_on_set of %s failed; the value was stored", spec.address)

    def _reading_for_event(self, name: str) -> dict[str, Any]:
        try:
            return self.get(name)
        except exception.CalibrationError as error:
            LOG.warning("%s.%s: %s; broadcasting the raw value only", self.name, name, error)
            return dict(error.result)

    def ping(self) -> bool:
        """True when the backend answers; works while locked.  Raises BackendUnavailable."""
        self.store.ping()
        return True

    def initialize(self) -> list[str]:
        """Write each endpoint's initial value where its key does not exist yet.

        Runs under each key's write lease, so two processes starting at once
        cannot both write, and a restart never clobbers a live value.  Returns
        the names written.
        """
        written = []
        for name, endpoint in sorted(self._endpoints.items()):
            with self._lockout.lease(name) as lease:
                if self.store.exists(name):
                    continue
                self.store.set(name, endpoint.spec.initial_value, lock=lease)
                written.append(name)
        return written

    # -- lockout ------------------------------------------------------------

    def lock(self, lockout_key: str | None = None) -> str:
        """Lock the store and every endpoint not already locked; return the key."""
        return self._lockout.lock_store(self.list_endpoints(), lockout_key)

    def unlock(self, lockout_key: str | None = None, force: bool = False) -> bool:
        """Unlock the store and the endpoints locked with its key (all with ``force``).

        Raises :class:`~kvs.exception.Locked` with a wrong or missing key
        unless ``force``.  Returns False (a no-op, logged) when nothing was locked.
        """
        return self._lockout.unlock_store(self.list_endpoints(), lockout_key, force)

    @property
    def is_locked(self) -> bool:
        return self._lockout.is_locked(None)

    def lock_info(self) -> dict[str, Any]:
        """``{"locked": bool}`` plus who locked the store and since when; never the key."""
        return self._lockout.info(None)

    # -- broadcasts ---------------------------------------------------------

    def subscribe(self, callback: Callback) -> Subscription:
        """Call ``callback(event)`` for every event this process broadcasts.

        Returns a handle; ``handle.close()`` unsubscribes.  A callback that
        raises is logged and never breaks the ``set`` or sample that fired it.
        """
        return self._subscribers.add(callback)

    def watch(self, names: Collection[str] | None = None,
              stop_event: threading.Event | None = None, poll_interval: float = 0.1,
              timeout: float | None = None) -> Watcher:
        """Iterate over events broadcast from now on by *any* process using this store.

        ``names`` filters endpoints; iteration ends when ``stop_event`` is set
        or after ``timeout`` seconds without an event.  The watcher's start
        point is fixed when this is called, not at the first ``next()``.
        """
        if names is not None:
            names = [self.endpoint(name).name for name in names]
        return Watcher(self._events, names, stop_event, poll_interval, timeout)

    def _broadcast(self, spec: EndpointSpec, reading: dict[str, Any], reason: str,
                   now: float) -> dict[str, Any]:
        event = make_event(self.name, spec.name, reading, reason, now)
        self._subscribers.deliver(event)
        try:
            self._events.append(event)
        except Exception:
            LOG.exception("could not add an event of %s to the event log", spec.address)
        if self._publisher is not None:
            try:
                self._publisher(spec.alert_channel, event_json(event))
            except Exception:
                LOG.exception("could not publish an event of %s on channel %r",
                              spec.address, spec.alert_channel)
        return event

    # -- baselines and sampling ---------------------------------------------

    def baseline(self, name: str) -> Baseline | None:
        """The last broadcast value of ``name`` and its time, shared by all processes."""
        self.endpoint(name)
        try:
            stored = self.store.get(BASELINE_PREFIX + name)
        except exception.NotFound:
            return None
        if not isinstance(stored, dict) or "time" not in stored:
            return None
        return Baseline(value=stored.get("value"), time=float(stored["time"]))

    def _write_baseline(self, name: str, value: Any, now: float) -> None:
        self.store.set(BASELINE_PREFIX + name, {"value": value, "time": now})

    def sample(self, name: str, now: float | None = None) -> dict[str, Any] | None:
        """Read ``name`` once and broadcast it if the endpoint's rule says so.

        This is one step of scheduled logging (callable directly, e.g. by a
        CLI).  Returns the event broadcast, or None when the sample was dropped.
        """
        spec = self.endpoint(name).spec
        with self._sample_guard:
            reading = self.get(name)
            now = time.time() if now is None else now
            reason = spec.policy.decide(self.baseline(name), _checked_value(reading), now)
            if reason is None:
                return None
            event = self._broadcast(spec, reading, reason, now)
            self._write_baseline(name, _checked_value(reading), now)
            return event

    def start_logging(self, names: Iterable[str] | None = None) -> list[str]:
        """Start scheduled logging of ``names`` (default: every endpoint with a
        ``schedule_interval``); return the names now being logged."""
        if names is None:
            chosen = [name for name, ep in self._endpoints.items() if ep.schedule_interval > 0]
        else:
            chosen = [self.endpoint(name).name for name in names]
            for name in chosen:
                if self._endpoints[name].schedule_interval <= 0:
                    raise exception.ConfigurationError(
                        f"endpoint {self.name}.{name} has no schedule_interval; cannot log it",
                        option="schedule_interval", section=self._endpoints[name].spec.section)
        if chosen:
            self._sampler.start(chosen)
        return sorted(self._sampler.active)

    def stop_logging(self, names: Iterable[str] | None = None) -> None:
        """Stop scheduled logging of ``names`` (default: all); joins the thread."""
        if names is not None:
            names = [self.endpoint(name).name for name in names]
        self._sampler.stop(names)

    @property
    def logging_status(self) -> dict[str, bool]:
        """``{endpoint: True}`` for endpoints this process has asked to log."""
        active = self._sampler.active
        return {name: name in active for name in self.list_endpoints()}

    @property
    def sampling(self) -> bool:
        """True while this process is the elected sampler of the store."""
        return self._sampler.leading

    def close(self) -> None:
        """Stop scheduled logging (for shutdown and tests)."""
        self._sampler.stop()


def unknown_endpoint(store: str, name: Any) -> exception.NotFound:
    """NotFound for an endpoint the store does not declare."""
    error = exception.NotFound(str(name), store=store)
    error.message = f"endpoint {name!r} is not declared in store {store!r}"
    error.args = (error.message,)
    return error


def _checked_value(reading: dict[str, Any]) -> Any:
    """The value the change rule compares: calibrated when there is one, else raw."""
    return reading["value_cal"] if "value_cal" in reading else reading.get("value_raw")
