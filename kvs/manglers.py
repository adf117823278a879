"""Key codecs: turn a user's key into the key a backend stores.

The final backend key is always ``<key_prefix>:<mangled key>``.  The prefix
stays readable (so two stores on one server never collide and an operator can
tell them apart); the mangler runs on the user's key only.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable

from kvs import exception

KeyMangler = Callable[[str], str]


def sha1_mangle_key(key: str) -> str:
    """SHA-1 hex digest of the UTF-8 key: fixed length, safe on every backend."""
    return hashlib.sha1(key.encode("utf-8"), usedforsecurity=False).hexdigest()


def check_key(key: object) -> str:
    """Return ``key`` if it is a valid key, else raise InvalidKey (a TypeError).

    Keys are ``str`` and must be valid Unicode (no lone surrogates), because
    every backend stores them, or their hash, as UTF-8.
    """
    if type(key) is str and key.isascii():
        return key
    if not isinstance(key, str):
        raise exception.InvalidKey(
            f"keys must be str, not {type(key).__name__}", key=repr(key)[:80])
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise exception.InvalidKey(
            f"key {key[:80]!r} is not valid Unicode text", key=key) from None
    return key


#: Keys longer than this are mangled every time rather than remembered.
CACHED_KEY_LENGTH = 256
#: Mangled keys remembered per store; when full, the oldest quarter is dropped.
CACHE_SIZE = 16384


def _forget_oldest(remembered: dict[str, str]) -> None:
    """Drop the oldest quarter (dicts keep insertion order)."""
    try:
        for key in list(itertools.islice(remembered, CACHE_SIZE // 4)):
            remembered.pop(key, None)
    except RuntimeError:  # another thread changed the dict meanwhile
        remembered.clear()


def prefixed(prefix: str, mangler: KeyMangler | None) -> KeyMangler:
    """Build the store's mangler: check the key, then ``prefix:`` + ``mangler(key)``.

    It raises InvalidKey as :func:`check_key` does, so the store needs no
    separate check.  Hashing costs about as much as a memory-backend read,
    and services read the same keys again and again, so short keys' results
    are remembered; a remembered key was checked when it was first seen.
    Manglers must therefore be pure functions of the key.

    The function has an attribute ``mangle_all(keys)``: the list of its
    results for ``keys``, with the same checks, in bulk (get_multi's).
    """
    head = f"{prefix}:" if prefix else ""
    if mangler is None:
        plain: KeyMangler = lambda key: head + check_key(key)  # noqa: E731

        def plain_all(keys: list[str]) -> list[str]:
            # A str that is all ASCII passes check_key as it is: then the
            # prefix is added without a call per key.  Other keys take plain(),
            # which refuses them as a single read would.
            try:
                ascii_only = "".join(keys).isascii()
            except TypeError:  # not all str
                ascii_only = False
            if ascii_only:
                return [head + key for key in keys] if head else list(keys)
            return list(map(plain, keys))

        plain.mangle_all = plain_all  # type: ignore[attr-defined]
        return plain
    remembered: dict[str, str] = {}

    def mangle(key: str) -> str:
        if type(key) is str:  # anything else is checked (and refused) below
            mangled = remembered.get(key)
            if mangled is not None:
                return mangled
        mangled = head + mangler(check_key(key))
        if len(key) <= CACHED_KEY_LENGTH:
            if len(remembered) >= CACHE_SIZE:
                _forget_oldest(remembered)
            remembered[key] = mangled
        return mangled

    def mangle_all(keys: list[str]) -> list[str]:
        # Remembered keys looked up in C, without a call per key; when any is
        # new (or not a str: only str keys are remembered, and join refuses
        # others), mangle() does every key.  all(): no result is empty, and a
        # truth test costs a tenth of comparing with None.
        try:
            "".join(keys)
        except TypeError:
            return list(map(mangle, keys))
        found = list(map(remembered.get, keys))
        return found if all(found) else list(map(mangle, keys))  # type: ignore[return-value]

    mangle.mangle_all = mangle_all  # type: ignore[attr-defined]
    return mangle
