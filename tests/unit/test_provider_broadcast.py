"""Broadcast rules (a pure function, tested by table), events, subscribers, the event log."""

from __future__ import annotations

import datetime
import json
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import kvs
import kvs.testing
from kvs.provider.broadcast import (
    Baseline,
    BroadcastPolicy,
    EventLog,
    Subscribers,
    Watcher,
    decide,
    event_json,
    make_event,
    relative_change,
    same_value,
)

NAN = float("nan")
INF = float("inf")

P_NONE = BroadcastPolicy()  # nothing but "first"
P_INTERVAL = BroadcastPolicy(max_interval=10)
P_ABS = BroadcastPolicy(max_absolute_change=0.5)
P_ABS0 = BroadcastPolicy(max_absolute_change=0)  # any change at all
P_FRAC = BroadcastPolicy(max_fractional_change=0.1)
P_BOTH = BroadcastPolicy(max_absolute_change=100, max_fractional_change=0.1)

# (policy, previous value, previous time, new value, now, expected reason)
TABLE = [
    # first sample, whatever the policy
    (P_NONE, None, None, 1.0, 0.0, "first"),
    (P_ABS, None, None, "CLOSE", 0.0, "first"),
    # no thresholds: changes are ignored, not treated as threshold 0
    (P_NONE, 1.0, 0.0, 500.0, 1e6, None),
    (P_NONE, "CLOSE", 0.0, "OPEN", 5.0, None),
    # max_interval: strictly more than, in float seconds (no days lost)
    (P_INTERVAL, 1.0, 0.0, 1.0, 10.0, None),
    (P_INTERVAL, 1.0, 0.0, 1.0, 10.001, "interval"),
    (P_INTERVAL, 1.0, 0.0, 1.0, 86400 * 3 + 1, "interval"),
    (P_INTERVAL, 1.0, 100.0, 1.0, 50.0, None),  # clock went back: no interval
    # absolute threshold
    (P_ABS, 1.0, 0.0, 1.5, 1.0, None),
    (P_ABS, 1.0, 0.0, 1.51, 1.0, "change"),
    (P_ABS, -1.0, 0.0, -1.6, 1.0, "change"),
    (P_ABS, 0, 0.0, 0, 1.0, None),
    (P_ABS0, 0, 0.0, 0, 1.0, None),
    (P_ABS0, 0, 0.0, 1e-9, 1.0, "change"),
    (P_ABS0, 2, 0.0, 2.0, 1.0, None),  # int vs float of the same value
    # fractional threshold, symmetric and safe at 0
    (P_FRAC, 0.0, 0.0, 0.0, 1.0, None),
    (P_FRAC, 0.0, 0.0, 5.0, 1.0, "change"),
    (P_FRAC, 5.0, 0.0, 0.0, 1.0, "change"),
    (P_FRAC, 100.0, 0.0, 105.0, 1.0, None),  # 2*5/205 = 0.049
    (P_FRAC, 100.0, 0.0, 112.0, 1.0, "change"),  # 2*12/212 = 0.113
    (P_FRAC, -2.0, 0.0, -4.0, 1.0, "change"),  # negatives work (dripline never fired)
    (P_FRAC, -100.0, 0.0, -105.0, 1.0, None),
    (P_FRAC, -1.0, 0.0, 1.0, 1.0, "change"),  # sign change: relative change 2
    # a fractional threshold is not overridden by an unset absolute one (v5.1 trap)
    (P_BOTH, 1000.0, 0.0, 1050.0, 1.0, None),
    (P_BOTH, 1000.0, 0.0, 1150.0, 1.0, "change"),
    (P_BOTH, 0.0, 0.0, 101.0, 1.0, "change"),
    # non-numeric values: a difference counts as exceeding any set threshold
    (P_ABS, "CLOSE", 0.0, "CLOSE", 1.0, None),
    (P_ABS, "CLOSE", 0.0, "OPEN", 1.0, "change"),
    (P_FRAC, "CLOSE", 0.0, 1.0, 1.0, "change"),
    (P_FRAC, 1.0, 0.0, "CLOSE", 1.0, "change"),
    (P_FRAC, None, 0.0, None, 1.0, None),  # a stored None baseline value is a value
    (P_FRAC, None, 0.0, 0.0, 1.0, "change"),
    (P_ABS, False, 0.0, 0, 1.0, "change"),  # False is not 0 (dripline's bug)
    (P_ABS, True, 0.0, True, 1.0, None),
    (P_ABS, [1, 2], 0.0, [1, 2], 1.0, None),
    (P_ABS, [1, 2], 0.0, [1, 3], 1.0, "change"),
    (P_ABS, NAN, 0.0, NAN, 1.0, None),
    (P_ABS, NAN, 0.0, 1.0, 1.0, "change"),
    (P_ABS, INF, 0.0, INF, 1.0, None),
    (P_ABS, INF, 0.0, 1.0, 1.0, "change"),
    # interval wins over change, first wins over everything
    (BroadcastPolicy(max_interval=1, max_absolute_change=0), 1.0, 0.0, 9.0, 2.0, "interval"),
]


@pytest.mark.parametrize(("policy", "old", "when", "new", "now", "reason"), TABLE)
def test_decision_table(policy: BroadcastPolicy, old: Any, when: float | None, new: Any,
                        now: float, reason: str | None) -> None:
    previous = None if when is None else Baseline(value=old, time=when)
    assert decide(policy, previous, new, now) == reason
    assert policy.decide(previous, new, now) == reason


@given(st.floats(-1e12, 1e12), st.floats(-1e12, 1e12))
def test_relative_change_is_symmetric_and_bounded(a: float, b: float) -> None:
    change = relative_change(a, b)
    assert change == pytest.approx(relative_change(b, a))
    assert 0.0 <= change <= 2.0 + 1e-12
    assert (change == 0.0) == (a == b)


def test_same_value() -> None:
    assert same_value(1, 1.0)
    assert not same_value(True, 1)
    assert same_value(NAN, NAN)
    assert not same_value("1", 1)


def test_make_event_shape() -> None:
    event = make_event("prices", "peaches", {"value_raw": 1.5, "value_cal": 3.0}, "change",
                       now=0.0)
    assert event == {"store": "prices", "endpoint": "peaches", "value_raw": 1.5,
                     "value_cal": 3.0, "timestamp": "1970-01-01T00:00:00.000000+00:00",
                     "reason": "change"}
    assert "value_cal" not in make_event("s", "e", {"value_raw": 1}, "first")
    stamp = datetime.datetime.fromisoformat(make_event("s", "e", {"value_raw": 1}, "first")
                                            ["timestamp"])
    assert stamp.utcoffset() == datetime.timedelta(0)
    with pytest.raises(ValueError):
        make_event("s", "e", {"value_raw": 1}, "because")
    assert json.loads(event_json({**event, "value_raw": b"\x00ab"}))["value_raw"] == "\x00ab"


def test_subscribers_are_isolated_from_each_other() -> None:
    subscribers = Subscribers()
    seen: list[dict[str, Any]] = []

    def broken(event: dict[str, Any]) -> None:
        event["value_raw"] = "mutated"
        raise RuntimeError("subscriber bug")

    first = subscribers.add(broken)
    second = subscribers.add(seen.append)
    subscribers.deliver({"endpoint": "a", "value_raw": 1})
    assert seen == [{"endpoint": "a", "value_raw": 1}]
    assert first.active and second.active
    second.close()
    second.close()  # idempotent
    assert not second.active
    subscribers.deliver({"endpoint": "a", "value_raw": 2})
    assert len(seen) == 1
    with pytest.raises(TypeError):
        subscribers.add("not callable")  # type: ignore[arg-type]


# -- the event log ---------------------------------------------------------------

@pytest.fixture
def store() -> Any:
    with kvs.testing.memory_store("events") as store:
        yield store


def test_event_log_round_trip_and_ring(store: kvs.KeyValueStore) -> None:
    log = EventLog(store, size=4)
    assert log.last_sequence() == 0
    for number in range(1, 7):
        assert log.append({"endpoint": "e", "n": number}) == number
    assert log.last_sequence() == 6
    assert log.read(6) == {"endpoint": "e", "n": 6}
    assert log.read(3) == {"endpoint": "e", "n": 3}
    assert log.read(2) is None  # its slot now holds event 6


def test_watcher_sees_only_new_events_and_filters(store: kvs.KeyValueStore) -> None:
    log = EventLog(store, size=100)
    log.append({"endpoint": "old"})
    watcher = Watcher(log, names={"a"}, timeout=0.2, poll_interval=0.01)
    log.append({"endpoint": "b"})
    log.append({"endpoint": "a", "n": 1})
    log.append({"endpoint": "a", "n": 2})
    assert list(watcher) == [{"endpoint": "a", "n": 1}, {"endpoint": "a", "n": 2}]


def test_watcher_counts_missed_events(store: kvs.KeyValueStore) -> None:
    log = EventLog(store, size=2)
    watcher = Watcher(log, timeout=0.2, poll_interval=0.01)
    for number in range(5):
        log.append({"endpoint": "e", "n": number})
    assert [event["n"] for event in watcher] == [3, 4]
    assert watcher.missed == 3


def test_watcher_stops_on_event(store: kvs.KeyValueStore) -> None:
    stop = threading.Event()
    watcher = Watcher(EventLog(store), stop_event=stop, poll_interval=0.01)
    timer = threading.Timer(0.1, stop.set)
    timer.start()
    try:
        assert list(watcher) == []  # returns (does not hang) once the event is set
    finally:
        timer.cancel()
    with pytest.raises(ValueError):
        Watcher(EventLog(store), poll_interval=0)
