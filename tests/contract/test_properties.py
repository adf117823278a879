"""Contract: property tests (hypothesis) for value and key round trips."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kvs

keys = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)

scalars = (st.none() | st.booleans() | st.integers()
           | st.floats(allow_nan=False) | st.text(max_size=200) | st.binary(max_size=200))
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=20), children, max_size=5),
    max_leaves=25,
)

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _same(a: Any, b: Any) -> bool:
    """Equal with exact types, recursively (so True != 1 and 1 != 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@SETTINGS
@given(value=values)
def test_any_value_round_trips(store: kvs.KeyValueStore, value: Any) -> None:
    store.set("prop", value)
    assert _same(store.get("prop"), value)


@SETTINGS
@given(key=keys, value=scalars)
def test_any_key_round_trips(store: kvs.KeyValueStore, key: str, value: Any) -> None:
    store.set(key, value)
    assert _same(store.get(key), value)
    assert _same(store.get_multi([key])[0], value)
    store.delete(key)
    assert not store.exists(key)


@SETTINGS
@given(first=keys, second=keys)
def test_distinct_keys_never_collide(store: kvs.KeyValueStore, first: str, second: str) -> None:
    store.set(first, "first")
    store.set(second, "second")
    assert store.get(second) == "second"
    assert store.get(first) == ("second" if first == second else "first")
    store.delete_multi([first, second])
