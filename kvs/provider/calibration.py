"""Calibration of endpoint readings: named functions, safe templates and maps.

An endpoint may turn its raw value into a calibrated one (``value_cal``) in
one of two ways:

* a **template** such as ``2*{}`` or ``times3({}) - 1``: ``{}`` stands for the
  raw value.  The template is parsed once, with :mod:`ast`, when the
  configuration loads, and only numbers, the placeholder, ``+ - * / // % **``,
  unary minus, parentheses and calls to registered calibration functions are
  accepted; anything else is refused with
  :class:`~kvs.exception.ConfigurationError` before any value is read.  The
  accepted tree is then walked by a small interpreter: nothing is ever passed
  to ``eval``, ``exec`` or ``compile``;
* a **map** from raw value to calibrated value (``CLOSE:on, OPEN:off``).

Calibration functions are registered with :func:`register_calibration`;
``times2`` and ``times3`` ship with the library (dragonfly parity).
"""

from __future__ import annotations

import ast
import json
import operator
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from kvs import exception

#: The placeholder for the raw value in a template.
PLACEHOLDER = "{}"
#: Longest template accepted: keeps parsing and evaluation trivially bounded.
MAX_TEMPLATE_LENGTH = 500
#: Largest integer result of ``**`` (in bits); beyond it a template could stall
#: the process computing a huge number (``9**9**9``).
MAX_POWER_BITS = 10_000

# The identifier a placeholder becomes before parsing; refused in user text so
# it cannot be spelled out directly.
_RAW_NAME = "_kvs_raw_"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\Z")
_INTEGER = re.compile(r"[+-]?\d+\Z")

CalibrationFunction = Callable[[Any], Any]
F = TypeVar("F", bound=CalibrationFunction)


class CalibrationRegistry:
    """Named calibration functions that templates may call."""

    def __init__(self) -> None:
        self._functions: dict[str, CalibrationFunction] = {}
        self._guard = threading.Lock()

    def add(self, function: CalibrationFunction, name: str | None = None) -> None:
        """Register ``function`` under ``name`` (default: its ``__name__``).

        Registering the same function twice is harmless; a different function
        under a name already taken raises ``ConfigurationError``.
        """
        name = str(name or getattr(function, "__name__", ""))
        if not _IDENTIFIER.match(name) or name == _RAW_NAME:
            raise exception.ConfigurationError(
                f"calibration function name {name!r} is not a valid identifier", option=name)
        if not callable(function):
            raise exception.ConfigurationError(
                f"calibration function {name!r} is not callable", option=name)
        with self._guard:
            existing = self._functions.get(name)
            if existing is not None and existing is not function:
                raise exception.ConfigurationError(
                    f"a different calibration function is already registered as {name!r}",
                    option=name)
            self._functions[name] = function

    def remove(self, name: str) -> None:
        """Forget ``name`` (for tests); missing names are ignored."""
        with self._guard:
            self._functions.pop(name, None)

    def get(self, name: str) -> CalibrationFunction | None:
        with self._guard:
            return self._functions.get(name)

    def names(self) -> list[str]:
        with self._guard:
            return sorted(self._functions)


#: The process-wide registry used by configuration files.
REGISTRY = CalibrationRegistry()


@overload
def register_calibration(function: F, *, name: str | None = None) -> F: ...


@overload
def register_calibration(function: None = None, *, name: str | None = None
                         ) -> Callable[[F], F]: ...


def register_calibration(function: F | None = None, *, name: str | None = None
                         ) -> F | Callable[[F], F]:
    """Decorator registering a calibration function for templates.

    Use it bare (``@register_calibration``) or with a name
    (``@register_calibration(name="pt100")``).  Returns the function unchanged.
    """
    def decorate(fn: F) -> F:
        REGISTRY.add(fn, name)
        return fn

    if function is not None:
        return decorate(function)
    return decorate


@register_calibration
def times2(value: Any) -> float:
    """Twice the value (dragonfly's toy calibration)."""
    return 2.0 * value


@register_calibration
def times3(value: Any) -> float:
    """Three times the value (dragonfly's toy calibration)."""
    return 3.0 * value


class Calibration:
    """Turns a raw value into a calibrated one."""

    #: The configuration text it was built from, for messages and ``describe``.
    text: str

    def apply(self, raw: Any) -> Any:
        """Return the calibrated value, or raise :class:`~kvs.exception.CalibrationError`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.text!r}>"


# -- templates ----------------------------------------------------------------

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
           ast.Mod: "%", ast.Pow: "**"}


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but True*2 in a calibration is a mistake, not arithmetic.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_raw(raw: Any) -> Any:
    """The raw value as a template sees it: numeric strings become numbers.

    Dragonfly formatted the raw text into the template, so ``"1.75"`` worked as
    a number; kvs keeps that for strings that are plain decimal numbers and
    passes every other value through unchanged.
    """
    if isinstance(raw, str):
        text = raw.strip()
        if _INTEGER.match(text):
            return int(text)
        if _NUMBER.match(text):
            return float(text)
    return raw


class TemplateCalibration(Calibration):
    """A template such as ``2*{}`` or ``times3({})``, checked when built.

    ``where`` names the configuration section and option for error messages.
    Functions are looked up in ``registry`` when the template is built, so an
    unknown function is a configuration error, not a read-time surprise.
    """

    def __init__(self, text: str, registry: CalibrationRegistry | None = None,
                 where: str = "calibration") -> None:
        self.text = text
        self.where = where
        self._functions: dict[str, CalibrationFunction] = {}
        self._tree = self._parse(text, registry or REGISTRY)

    def _refuse(self, why: str) -> exception.ConfigurationError:
        return exception.ConfigurationError(
            f"{self.where}: calibration template {self.text!r} refused: {why}",
            option=self.where)

    def _parse(self, text: str, registry: CalibrationRegistry) -> ast.expr:
        if not isinstance(text, str) or not text.strip():
            raise self._refuse("it is empty")
        if len(text) > MAX_TEMPLATE_LENGTH:
            raise self._refuse(f"it is longer than {MAX_TEMPLATE_LENGTH} characters")
        if PLACEHOLDER not in text:
            raise self._refuse("it has no {} placeholder for the raw value")
        if _RAW_NAME in text:
            raise self._refuse(f"the name {_RAW_NAME} is reserved")
        source = text.replace(PLACEHOLDER, f" {_RAW_NAME} ")
        if "{" in source or "}" in source:
            raise self._refuse("the only braces allowed are the {} placeholder")
        try:
            tree = ast.parse(source.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
            raise self._refuse(f"it is not an expression ({type(error).__name__})") from None
        self._check(tree.body, registry)
        return tree.body

    def _check(self, node: ast.AST, registry: CalibrationRegistry) -> None:
        """Accept only the whitelisted node types, recursively."""
        if isinstance(node, ast.Constant):
            if not _is_number(node.value):
                raise self._refuse(f"constant {node.value!r} is not a number")
        elif isinstance(node, ast.Name):
            if node.id != _RAW_NAME:
                raise self._refuse(f"name {node.id!r} is not allowed (only {{}} and calls)")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                raise self._refuse(f"operator {type(node.op).__name__} is not allowed")
            self._check(node.left, registry)
            self._check(node.right, registry)
        elif isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub):
                raise self._refuse(f"unary operator {type(node.op).__name__} is not allowed")
            self._check(node.operand, registry)
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise self._refuse("only registered calibration functions may be called")
            function = registry.get(node.func.id)
            if function is None:
                raise self._refuse(
                    f"{node.func.id!r} is not a registered calibration function "
                    f"(registered: {', '.join(registry.names()) or 'none'})")
            if node.keywords or len(node.args) != 1:
                raise self._refuse(f"{node.func.id}() takes exactly one positional argument")
            arg = node.args[0]
            if isinstance(arg, ast.Starred):
                raise self._refuse("starred arguments are not allowed")
            self._functions[node.func.id] = function
            self._check(arg, registry)
        else:
            raise self._refuse(f"{type(node).__name__} is not allowed")

    def apply(self, raw: Any) -> Any:
        value = numeric_raw(raw)
        try:
            result = self._evaluate(self._tree, value)
        except exception.CalibrationError as error:
            error.value_raw = raw
            error.result = {"value_raw": raw}
            raise
        except Exception as error:  # a registered function may raise anything
            raise exception.CalibrationError(
                f"calibration {self.text!r} failed on raw value {raw!r}: "
                f"{type(error).__name__}: {error}", value_raw=raw) from error
        if isinstance(result, complex):
            raise exception.CalibrationError(
                f"calibration {self.text!r} gave a complex number for raw value {raw!r}",
                value_raw=raw)
        return result

    def _evaluate(self, node: ast.expr, raw: Any) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return raw
        if isinstance(node, ast.UnaryOp):
            operand = self._evaluate(node.operand, raw)
            self._need_numbers("unary -", operand)
            return -operand
        if isinstance(node, ast.BinOp):
            left = self._evaluate(node.left, raw)
            right = self._evaluate(node.right, raw)
            symbol = _SYMBOL[type(node.op)]
            self._need_numbers(symbol, left, right)
            if isinstance(node.op, ast.Pow):
                self._check_power(left, right)
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            return self._functions[node.func.id](self._evaluate(node.args[0], raw))
        raise AssertionError(f"unchecked node {type(node).__name__}")  # refused at parse time

    def _need_numbers(self, symbol: str, *operands: Any) -> None:
        for operand in operands:
            if not _is_number(operand):
                raise exception.CalibrationError(
                    f"calibration {self.text!r}: operator {symbol} needs numbers, "
                    f"got {type(operand).__name__}")

    def _check_power(self, base: Any, exponent: Any) -> None:
        if (isinstance(base, int) and isinstance(exponent, int) and exponent > 0
                and exponent * max(1, abs(base).bit_length()) > MAX_POWER_BITS):
            raise exception.CalibrationError(
                f"calibration {self.text!r}: power result above {MAX_POWER_BITS} bits")


# -- maps ---------------------------------------------------------------------

def literal(text: str) -> Any:
    """A JSON literal when ``text`` is one (``0.75``, ``true``, ``[1, 2]``), else the text."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def map_key(raw: Any) -> str:
    """The text a raw value is looked up by in a calibration map.

    Strings are used as they are; any other value by its JSON spelling, so
    ``True`` matches ``true`` and ``1`` matches ``1`` (but ``1.0`` only ``1.0``).
    """
    if isinstance(raw, str):
        return raw
    try:
        return json.dumps(raw, sort_keys=True)
    except (TypeError, ValueError):
        return repr(raw)


class MapCalibration(Calibration):
    """A lookup table from raw value to calibrated value.

    Map values are read as JSON literals when they are one (``1`` is an int),
    otherwise kept as strings (``on``).  A raw value missing from the map
    raises :class:`~kvs.exception.CalibrationError` carrying the raw value.
    """

    def __init__(self, mapping: Mapping[str, Any], where: str = "calibration_map") -> None:
        if not mapping:
            raise exception.ConfigurationError(f"{where}: calibration map is empty",
                                               option=where)
        self.where = where
        self.mapping = {str(key): literal(value) if isinstance(value, str) else value
                        for key, value in mapping.items()}
        self.text = ", ".join(f"{key}:{value}" for key, value in mapping.items())

    def apply(self, raw: Any) -> Any:
        key = map_key(raw)
        try:
            return self.mapping[key]
        except KeyError:
            raise exception.CalibrationError(
                f"raw value {raw!r} is not in the calibration map ({self.where})",
                value_raw=raw) from None
