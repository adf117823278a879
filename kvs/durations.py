"""Validation of every duration kvs accepts: lock timeouts, waits, TTLs, extends.

A duration must be a real number of seconds, finite, not negative (or
positive, where zero has no meaning) and no longer than the backend can
represent.  Anything else raises :class:`~kvs.exception.ConfigurationError`
(a ``ValueError``) naming the option, before any call to the server.  This is
what turns ``nan``, ``inf`` and ``1e308`` into clear errors instead of a
lease that never expires, a raw ``OverflowError`` or a value memcached takes
as a date in the past.
"""

from __future__ import annotations

import math
from typing import Any

from kvs import exception

#: The longest duration kvs.memory, kvs.sqlite and kvs.redis accept: about 31
#: years (Redis stores expiries as milliseconds; this leaves a wide margin).
MAX_SECONDS = 1e9


def seconds(name: str, value: Any, maximum: float = MAX_SECONDS, zero: bool = True) -> float:
    """``value`` as a float of seconds, or ConfigurationError naming ``name``."""
    if isinstance(value, bool):
        raise exception.ConfigurationError(
            f"{name} must be a number of seconds, got {value!r}", option=name)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise exception.ConfigurationError(
            f"{name} must be a number of seconds, got {value!r}", option=name) from None
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise exception.ConfigurationError(
            f"{name} must be a finite number of seconds {bound}, got {value!r}", option=name)
    if number > maximum:
        raise exception.ConfigurationError(
            f"{name} of {number:g} s is longer than the backend can represent "
            f"({maximum:.0f} s)", option=name)
    return number


def ttl(name: str, value: Any, maximum: float = MAX_SECONDS) -> float | None:
    """A TTL: ``None`` (no expiry) or a positive duration."""
    if value is None:
        return None
    number = seconds(name, value, maximum, zero=False)
    if number == 0:  # pragma: no cover - refused above
        raise AssertionError
    return number
