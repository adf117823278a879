"""Contract: store.memoize() on every backend (namespace, expiry, types, single flight)."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import kvs
from kvs import exception
from tests.conftest import StoreFactory
from tests.contract import workers


def test_results_are_cached_and_keep_their_types(make_store: StoreFactory) -> None:
    store = make_store()
    calls: list[Any] = []

    @store.memoize()
    def shape(x: int) -> Any:
        calls.append(x)
        return {"pair": (x, (x + 1, b"\x00")), "list": [x], "big": 2 ** 70, "none": None}

    first = shape(1)
    again = shape(1)
    assert again == first and calls == [1]
    assert type(again["pair"]) is tuple and type(again["pair"][1]) is tuple
    assert type(again["list"]) is list and again["big"] == 2 ** 70
    assert shape(2)["pair"] == (2, (3, b"\x00")) and calls == [1, 2]
    shape.invalidate(1)
    assert shape(1) == first and calls == [1, 2, 1]


def test_memoized_entries_live_apart_from_the_store_keys(make_store: StoreFactory) -> None:
    store = make_store()
    calls: list[int] = []

    @store.memoize(namespace="apart")
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    assert double(21) == 42
    # dogpile's key for that call, and anything near it, as user keys of the store.
    function_key = f"{__name__}:double|apart|21"
    for key in (function_key, "#memo:" + function_key, f"{store.key_prefix}#memo:{function_key}"):
        assert not store.exists(key)
        store.set(key, "user value")
        assert store.get(key) == "user value"
    assert double(21) == 42 and calls == [21]  # neither read nor clobbered
    store.delete(function_key)
    assert double(21) == 42 and calls == [21]


def test_unsupported_results_raise_at_the_first_call(make_store: StoreFactory) -> None:
    store = make_store()
    calls: list[int] = []

    @store.memoize()
    def as_set(x: int) -> set[int]:
        calls.append(x)
        return {x}

    for _ in range(2):  # nothing was stored: the second call runs the function again
        with pytest.raises(exception.SerializationError, match="set"):
            as_set(1)
    assert calls == [1, 1]


def test_json_stores_refuse_results_json_would_change(make_store: StoreFactory) -> None:
    store = make_store(serializer="json")

    @store.memoize()
    def pair(x: int) -> tuple[int, int]:
        return (x, x)

    with pytest.raises(exception.SerializationError, match="tuple"):
        pair(1)

    @store.memoize()
    def listed(x: int) -> list[Any]:
        return [x, {"k": x}]

    assert listed(3) == [3, {"k": 3}] and listed(3) == [3, {"k": 3}]


def test_results_expire_after_expiration_time(make_store: StoreFactory) -> None:
    store = make_store()
    calls: list[int] = []

    @store.memoize(expiration_time=0.3)
    def stamp(x: int) -> int:
        calls.append(x)
        return len(calls)

    assert stamp(1) == 1 and stamp(1) == 1
    time.sleep(0.45)
    assert stamp(1) == 2 and calls == [1, 1]


def test_bad_expiration_time_is_refused(make_store: StoreFactory) -> None:
    store = make_store()
    for bad in (0, -1, "soon", True):
        with pytest.raises(exception.ConfigurationError, match="expiration_time"):
            store.memoize(expiration_time=bad)  # type: ignore[arg-type]


def test_a_plain_dogpile_region_gets_a_lease_as_its_mutex(backend_name: str,
                                                          make_store: StoreFactory) -> None:
    store = make_store()
    mutex = store.region.backend.get_mutex(store.region.key_mangler("k"))
    assert mutex is not None
    assert mutex.acquire(wait=False) and mutex.locked()
    # The lease is the one get_lock takes: the store sees the key as locked.
    with pytest.raises(exception.LockAcquireTimeout):
        store.get_lock("k", lock_wait_timeout=0.05).acquire()
    mutex.release()
    assert not mutex.locked()
    with store.get_lock("k"):
        pass


@pytest.fixture
def shared_config(shared_backend_config: dict[str, Any]) -> dict[str, Any]:
    return shared_backend_config


def test_one_process_runs_the_function_the_others_wait(shared_config: dict[str, Any],
                                                       tmp_path: Path) -> None:
    name = f"memo-{uuid.uuid4().hex[:8]}"
    runs = tmp_path / "runs"
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        results = pool.starmap(workers.memoized_call, [(shared_config, name, str(runs), 7)] * 4)
    assert results == [(7, 49)] * 4
    assert len(runs.read_text().splitlines()) == 1  # one run of the body in four processes


def test_decorating_needs_no_configured_store_and_the_first_call_does(
        backend_config: dict[str, Any]) -> None:
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store(f"late-{uuid.uuid4().hex[:8]}")

        @store.memoize()  # at import time, before the service has configured kvs
        def square(x: int) -> int:
            return x * x

        with pytest.raises(exception.NotConfigured):
            square(3)
        store.configure(**backend_config)
        assert square(3) == 9 and square.get(3) == 9
        square.set(10, 3)
        assert square(3) == 10 and square.original(3) == 9


def test_an_empty_key_prefix_is_refused(make_store: StoreFactory) -> None:
    store = make_store(key_prefix="")

    @store.memoize()
    def one() -> int:
        return 1

    with pytest.raises(exception.ConfigurationError, match="key_prefix"):
        one()
