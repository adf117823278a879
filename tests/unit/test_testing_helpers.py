"""kvs.testing: the helpers applications use in their own tests."""

from __future__ import annotations

import pytest

import kvs
import kvs.testing
from kvs import exception


@pytest.mark.parametrize("helper", [kvs.testing.memory_store, kvs.testing.fakeredis_store])
def test_helper_gives_isolated_working_store(helper: object) -> None:
    outer = kvs.get_key_value_store("outer")
    with helper("sessions", lock_timeout=2) as store:  # type: ignore[operator]
        assert store.is_configured and kvs.get_key_value_store("sessions") is store
        assert kvs.get_key_value_store("outer") is not outer  # a fresh registry
        store.set("k", {"v": 1})
        assert store.update("n", lambda v: v + 1, default=0) == 1
        with store.get_lock("k") as lock:
            store.set("k", 2, lock=lock)
        lock_holder = store.get_lock("k").acquire()
        store.break_lock("k")
        with pytest.raises(exception.LeaseLost):
            store.set("k", 3, lock=lock_holder)
        assert store.get("k") == 2
    assert kvs.get_key_value_store("outer") is outer  # registry restored


def test_fakeredis_stores_do_not_share_data() -> None:
    with kvs.testing.fakeredis_store("a") as first:
        first.set("k", 1)
    with kvs.testing.fakeredis_store("a") as second:
        assert not second.exists("k")
