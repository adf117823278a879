"""Contract: every duration is validated before any call to the server."""

from __future__ import annotations

import math
from typing import Any

import pytest

import kvs
from kvs import exception

YEAR = 365.25 * 86400
BAD = [math.nan, math.inf, -math.inf, -1.0, 1e308, 1e17, "soon", True]


@pytest.mark.parametrize("option", ["lock_timeout", "lock_wait_timeout", "default_ttl"])
@pytest.mark.parametrize("value", BAD)
def test_configure_refuses_bad_durations(backend_config: dict[str, Any], option: str,
                                         value: Any) -> None:
    store = kvs.get_key_value_store("durations")
    with pytest.raises(exception.ConfigurationError) as info:
        store.configure(**{**backend_config, option: value})
    assert info.value.context["option"] == option
    assert not store.is_configured


@pytest.mark.parametrize("value", [*BAD, 0])
def test_set_refuses_bad_ttl_and_keeps_the_old_value(store: kvs.KeyValueStore,
                                                     value: Any) -> None:
    store.set("k", "old")
    with pytest.raises(exception.ConfigurationError) as info:
        store.set("k", "new", ttl=value)
    assert isinstance(info.value, ValueError) and info.value.context["option"] == "ttl"
    with pytest.raises(exception.ConfigurationError):
        store.set_multi({"k": "new"}, ttl=value)
    with pytest.raises(exception.ConfigurationError):
        store.update("k", lambda _old: "new", ttl=value)
    assert store.get("k") == "old"


@pytest.mark.parametrize("value", [*BAD, 0])
def test_extend_refuses_bad_seconds_and_keeps_the_lease(store: kvs.KeyValueStore,
                                                        value: Any) -> None:
    with store.get_lock("k", lock_timeout=5) as lock:
        before = store.lease_info("k")
        with pytest.raises(exception.ConfigurationError):
            lock.extend(value)
        after = store.lease_info("k")
        assert before is not None and after is not None
        assert after.token == lock.token and after.remaining is not None
        assert after.remaining <= before.remaining + 0.5  # not extended
        store.set("k", "still mine", lock=lock)
    assert store.lease_info("k") is None


@pytest.mark.parametrize("years", [11.2, 12, 20])
def test_long_ttl_is_kept_or_refused_never_expired_at_once(store: kvs.KeyValueStore,
                                                           years: float) -> None:
    # memcached reads long expiries as dates, which end in January 2038.
    try:
        store.set("k", "long", ttl=years * YEAR)
    except exception.ConfigurationError as error:
        assert error.context["option"] == "ttl"
        assert not store.exists("k")
    else:
        assert store.get("k") == "long"


def test_lock_timeout_too_long_for_the_backend_is_refused(store: kvs.KeyValueStore) -> None:
    try:
        lock = store.get_lock("k", lock_timeout=3.6e8)
    except exception.ConfigurationError as error:
        assert error.context["option"] == "lock_timeout"
        return
    # Accepted: then a second holder must be refused.
    with lock, pytest.raises(exception.LockAcquireTimeout):
        store.get_lock("k", lock_wait_timeout=0).acquire()
