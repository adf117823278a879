"""Output of the ``kvs`` command: tables, JSON, values and secret scrubbing.

Kept apart so the command modules hold only commands.
"""

from __future__ import annotations

import base64
import json
import math
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

from oslo_config import cfg

from kvs import conf as kvs_conf
from kvs import core, loader

#: Backend arguments of stock dogpile backends (which declare no ArgumentSpec)
#: whose names say they hold a secret.
SECRET_NAME = re.compile(r"pass|secret|token|credential|auth", re.IGNORECASE)

#: What replaces a secret in anything the command prints.
MASK = "***"


# -- values --------------------------------------------------------------------

class BrokenValue(ValueError):
    """A ``kvs set`` VALUE that looks like JSON but does not parse."""


#: Text a person means as a number: digits with a sign, dot, exponent, ``_`` or ``0x``.
LOOKS_NUMERIC = re.compile(
    r"[+-]?(0[xX][0-9a-fA-F_]+|(?=[._]*[0-9])[0-9_]*\.?[0-9_]*([eE][+-]?[0-9_]*)?)")


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_value(text: str) -> Any:
    """A ``kvs set`` VALUE: strict JSON when it parses, otherwise the text itself.

    Text that looks like JSON (starting with ``[``, ``{`` or ``"``) or like a
    number (``01``, ``+1``, ``.5``, ``1_000``) but does not parse raises
    :class:`BrokenValue` instead of being stored as a string by mistake.
    ``NaN`` and ``Infinity`` are no JSON: they are plain words.
    """
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError as error:
        stripped = text.strip()
        if stripped[:1] in ("[", "{", '"'):
            why = f"VALUE starts like JSON but is not valid JSON ({error})"
        elif LOOKS_NUMERIC.fullmatch(stripped):
            why = "VALUE looks like a number but is not a JSON number"
        else:
            return text
        raise BrokenValue(f"{why}; fix it, or give --string to store it as text") from None


#: What JSON output shows for floats JSON cannot represent.
NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def finite(value: Any) -> Any:
    """``value`` with each NaN or infinite float replaced by ``"NaN"``, ``"Infinity"``
    or ``"-Infinity"`` (tuples and sets become lists)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else NON_FINITE[repr(value)]
    if isinstance(value, dict):
        return {finite(key) if isinstance(key, float) else key: finite(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [finite(item) for item in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        # JSON has no bytes: a tagged object keeps them distinguishable from text.
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


def to_json(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``value``: bytes become ``{"base64": "..."}``, NaN and
    infinities the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (never the bare
    words, which are no JSON)."""
    return json.dumps(finite(value), default=_json_default, indent=indent, ensure_ascii=False,
                      sort_keys=False, allow_nan=False)


def show_value(value: Any) -> str:
    """A value for a human: text as it is, bytes as a Python literal, the rest as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return repr(bytes(value))
    return to_json(value, indent=None)


def cell(value: Any) -> str:
    """One table cell: ``-`` for None, yes/no for booleans, else :func:`show_value`."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return show_value(value).replace("\n", "\\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, headers first."""
    text_rows = [[cell(item) for item in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in text_rows:
        widths = [max(width, len(item)) for width, item in zip(widths, row)]
    lines = ["  ".join(header.ljust(width) for header, width in zip(headers, widths))]
    lines += ["  ".join(item.ljust(width) for item, width in zip(row, widths))
              for row in text_rows]
    return "\n".join(line.rstrip() for line in lines)


# -- secrets -------------------------------------------------------------------

class Scrubber:
    """Replaces every secret of a configuration by ``***`` in text about to be printed.

    The secrets are the values of options oslo.config marks ``secret``
    (``secret_key``, ...) and, from ``backend_argument``, the arguments a
    backend declares secret, arguments of stock backends whose name says so,
    and passwords inside URLs.  No command prints ``backend_argument`` at all;
    this is the safety net for messages built from server replies.
    """

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, secret: Any) -> None:
        if secret is None:
            return
        if isinstance(secret, (list, tuple)):  # a ListOpt such as secret_keys
            for item in secret:
                self.add(item)
            return
        text = str(secret)
        if text.strip():
            self._secrets.add(text)
            # A URL-quoted password shows up quoted in URLs and unquoted elsewhere.
            self._secrets.add(urllib.parse.quote(text, safe=""))

    def add_from_config(self, conf: cfg.ConfigOpts) -> None:
        """Collect the secrets of every ``[store:NAME]`` section of ``conf``."""
        for name in loader.store_names(conf):
            group = kvs_conf.STORE_GROUP_PREFIX + name
            for opt in kvs_conf.store_opts:
                if not opt.secret:
                    continue
                try:
                    value = getattr(conf[group], opt.dest)
                except (cfg.Error, ValueError, AttributeError):
                    continue
                if opt.dest == "backend_argument":
                    self._add_backend_arguments(conf, group, value)
                elif isinstance(value, (list, tuple)):
                    for item in value:
                        self.add(item)
                else:
                    self.add(value)

    def _add_backend_arguments(self, conf: cfg.ConfigOpts, group: str,
                               items: Sequence[str]) -> None:
        specs: dict[str, Any] = {}
        try:
            backend_cls: Any = core._load_backend_class(conf[group].backend)
            specs = dict(getattr(backend_cls, "arguments", None) or {})
        except Exception:  # an unknown backend: fall back on argument names
            specs = {}
        for item in items:
            name, _, value = item.partition(":")
            name, value = name.strip(), value.strip()
            spec = specs.get(name)
            if (spec is not None and getattr(spec, "secret", False)) or (
                    spec is None and SECRET_NAME.search(name)):
                self.add(value)
            if "://" in value:
                try:
                    password = urllib.parse.urlsplit(value).password
                except ValueError:
                    password = None
                self.add(password and urllib.parse.unquote(password))
                self.add(password)

    def __call__(self, text: str) -> str:
        # Longest first, so a secret containing another is masked whole.
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text
