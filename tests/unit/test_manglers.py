"""Store key manglers: mangle_all (get_multi's) gives what the mangler gives, key by key."""

from __future__ import annotations

from typing import Any

import pytest

from kvs import exception, manglers


class Key(str):
    """A str subclass: checked as a str, never remembered."""


@pytest.mark.parametrize("inner", [None, manglers.sha1_mangle_key], ids=["plain", "sha1"])
@pytest.mark.parametrize("prefix", ["store", ""])
def test_mangle_all_is_the_mangler_on_every_key(inner: Any, prefix: str) -> None:
    mangle: Any = manglers.prefixed(prefix, inner)
    keys = ["a", "b", "", "ünïcødé", "a", Key("sub"), "x" * 300, "nul\x00"]
    assert mangle.mangle_all(keys) == [mangle(key) for key in keys]
    assert mangle.mangle_all(keys) == [mangle(key) for key in keys]  # now remembered


@pytest.mark.parametrize("inner", [None, manglers.sha1_mangle_key], ids=["plain", "sha1"])
@pytest.mark.parametrize("bad", [1, b"bytes", None, ["list"], "lone \ud800"])
def test_mangle_all_refuses_what_the_mangler_refuses(inner: Any, bad: Any) -> None:
    mangle: Any = manglers.prefixed("store", inner)
    mangle("ok")
    with pytest.raises(exception.InvalidKey):
        mangle.mangle_all(["ok", bad])
