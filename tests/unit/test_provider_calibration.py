"""Calibration: the safe template evaluator, the registry, maps, JSON literals."""

from __future__ import annotations

import math
import string
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvs import exception
from kvs.provider import calibration
from kvs.provider.calibration import (
    CalibrationRegistry,
    MapCalibration,
    TemplateCalibration,
    literal,
    map_key,
    numeric_raw,
    register_calibration,
)

# -- templates accepted -------------------------------------------------------

ACCEPTED = [
    ("1*{}", 0.75, 0.75),
    ("{}*1", 0.75, 0.75),
    ("1.*{}", 4.0, 4.0),
    ("2*{}", 0.75, 1.5),
    ("times3({})", 1.75, 5.25),
    ("times2({})", 3, 6.0),
    ("times3({})", "1.75", 5.25),  # numeric text, as dragonfly's str.format did
    ("-{}", 2, -2),
    ("({} + 1) * 2", 3, 8),
    ("{} // 2", 7, 3),
    ("{} % 3", 7, 1),
    ("{} / 4", 1, 0.25),
    ("{} ** 2", 3, 9),
    ("2 ** -1 * {}", 4, 2.0),
    ("times2(times3({})) - 1", 1, 5.0),
    ("{} - {}", 5, 0),
    ("1e3 * {}", 2, 2000.0),
    ("  2*{}  ", 1, 2),
]


@pytest.mark.parametrize(("template", "raw", "expected"), ACCEPTED)
def test_template_accepted(template: str, raw: Any, expected: Any) -> None:
    result = TemplateCalibration(template).apply(raw)
    assert result == pytest.approx(expected)
    assert type(result) is type(expected)


# -- templates refused at load time -------------------------------------------

REFUSED = [
    ("", "empty"),
    ("   ", "empty"),
    ("2", "placeholder"),
    ("__import__('os').system('true')", "placeholder"),
    ("__import__('os')({})", "only registered"),
    ("open({})", "not a registered"),
    ("eval({})", "not a registered"),
    ("x * {}", "name 'x'"),
    ("{}.real", "Attribute"),
    ("{}[0]", "Subscript"),
    ("(lambda v: v)({})", "only registered"),
    ("[{} for _ in ()]", "ListComp"),
    ("{} if 1 else 0", "IfExp"),
    ("{} < 1", "Compare"),
    ("{} and 1", "BoolOp"),
    ("{} << 2", "LShift"),
    ("{} | 1", "BitOr"),
    ("~{}", "Invert"),
    ("+{}", "UAdd"),
    ("not {}", "Not"),
    ("'a' + {}", "not a number"),
    ("True * {}", "not a number"),
    ("1j * {}", "not a number"),
    ("{0} * {}", "braces"),
    ("{x} + {}", "braces"),
    ("{} * {{}}", "braces"),
    ("times3({}, 2)", "exactly one"),
    ("times3(value={})", "exactly one"),
    ("times3(*{})", "starred"),
    ("2 * _kvs_raw_ + {}", "reserved"),
    ("2 * {} *", "not an expression"),
    ("{}; 1", "not an expression"),
    ("(" * 300 + "{}" + ")" * 300, "longer than"),
]


@pytest.mark.parametrize(("template", "why"), REFUSED)
def test_template_refused_at_load(template: str, why: str) -> None:
    with pytest.raises(exception.ConfigurationError) as caught:
        TemplateCalibration(template, where="[endpoint:prices.peaches] calibration")
    assert why in str(caught.value)
    assert "[endpoint:prices.peaches] calibration" in str(caught.value)


def test_unknown_function_is_a_load_error_naming_known_ones() -> None:
    with pytest.raises(exception.ConfigurationError, match="times2, times3"):
        TemplateCalibration("nosuch({})")


# -- read-time failures ---------------------------------------------------------

READ_FAILURES = [
    ("1/{}", 0),
    ("1//{}", 0),
    ("1%{}", 0),
    ("2*{}", "CLOSE"),
    ("2*{}", None),
    ("2*{}", True),
    ("2*{}", [1, 2]),
    ("{} ** 0.5", -4),  # would be complex
    ("9 ** {}", 10**9),  # would stall the process
    ("{} ** 9 ** 9", 9),
    ("10.0 ** {}", 400),  # float overflow
]


@pytest.mark.parametrize(("template", "raw"), READ_FAILURES)
def test_template_failure_at_read_is_calibration_error(template: str, raw: Any) -> None:
    with pytest.raises(exception.CalibrationError) as caught:
        TemplateCalibration(template).apply(raw)
    assert caught.value.value_raw == raw
    assert caught.value.result == {"value_raw": raw}
    assert isinstance(caught.value, ValueError)


def test_failing_function_is_calibration_error() -> None:
    registry = CalibrationRegistry()

    def explode(value: Any) -> Any:
        raise RuntimeError("sensor table missing")

    registry.add(explode)
    template = TemplateCalibration("explode({})", registry=registry)
    with pytest.raises(exception.CalibrationError, match="sensor table missing") as caught:
        template.apply(1.5)
    assert caught.value.value_raw == 1.5


def test_functions_may_take_and_return_anything() -> None:
    registry = CalibrationRegistry()
    registry.add(lambda value: value.upper(), name="shout")
    assert TemplateCalibration("shout({})", registry=registry).apply("on") == "ON"


# -- the registry ---------------------------------------------------------------

def test_register_calibration_bare_and_named() -> None:
    try:
        @register_calibration
        def plus_one_for_test(value: Any) -> Any:
            return value + 1

        @register_calibration(name="minus_one_for_test")
        def anything(value: Any) -> Any:
            return value - 1

        assert plus_one_for_test(1) == 2  # the decorator returns the function
        assert TemplateCalibration("plus_one_for_test({})").apply(1) == 2
        assert TemplateCalibration("minus_one_for_test({})").apply(1) == 0
        assert "anything" not in calibration.REGISTRY.names()
    finally:
        calibration.REGISTRY.remove("plus_one_for_test")
        calibration.REGISTRY.remove("minus_one_for_test")
    with pytest.raises(exception.ConfigurationError):
        TemplateCalibration("plus_one_for_test({})")


def test_registry_refuses_a_second_function_under_a_taken_name() -> None:
    registry = CalibrationRegistry()
    registry.add(calibration.times2)
    registry.add(calibration.times2)  # the same function again: fine
    with pytest.raises(exception.ConfigurationError, match="already registered"):
        registry.add(lambda value: value, name="times2")
    with pytest.raises(exception.ConfigurationError, match="identifier"):
        registry.add(lambda value: value, name="not valid")


def test_template_keeps_the_functions_of_load_time() -> None:
    registry = CalibrationRegistry()
    registry.add(lambda value: 10 * value, name="scale")
    template = TemplateCalibration("scale({})", registry=registry)
    registry.remove("scale")
    assert template.apply(2) == 20


def test_shipped_functions() -> None:
    assert calibration.times2(1.5) == 3.0
    assert calibration.times3(1.75) == 5.25
    assert {"times2", "times3"} <= set(calibration.REGISTRY.names())


# -- maps and literals ----------------------------------------------------------

def test_map_calibration() -> None:
    cal = MapCalibration({"CLOSE": "on", "OPEN": "off", "1": "2", "true": "yes"})
    assert cal.apply("CLOSE") == "on"
    assert cal.apply("OPEN") == "off"
    assert cal.apply(1) == 2  # JSON spelling of the raw value; value read as a literal
    assert cal.apply(True) == "yes"
    with pytest.raises(exception.CalibrationError) as caught:
        cal.apply("AJAR")
    assert caught.value.value_raw == "AJAR"
    assert caught.value.result == {"value_raw": "AJAR"}
    with pytest.raises(exception.CalibrationError):
        cal.apply(1.0)  # "1.0" is not "1": typed values match their JSON spelling


def test_empty_map_refused() -> None:
    with pytest.raises(exception.ConfigurationError):
        MapCalibration({})


@pytest.mark.parametrize(("text", "value"), [
    ("0.75", 0.75), ("4.00", 4.0), ("3", 3), ("true", True), ("false", False),
    ("null", None), ("[1, 2]", [1, 2]), ('{"a": 1}', {"a": 1}), ('"quoted"', "quoted"),
    ("CLOSE", "CLOSE"), ("", ""), ("1.2.3", "1.2.3"), ("True", "True"),
])
def test_literal(text: str, value: Any) -> None:
    parsed = literal(text)
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize(("raw", "seen"), [
    ("1.75", 1.75), (" 2 ", 2), ("-3", -3), ("1e2", 100.0), ("nan", "nan"),
    ("CLOSE", "CLOSE"), (1.5, 1.5), (None, None),
])
def test_numeric_raw(raw: Any, seen: Any) -> None:
    value = numeric_raw(raw)
    assert value == seen and type(value) is type(seen)


def test_map_key() -> None:
    assert map_key("x") == "x"
    assert map_key(None) == "null"
    assert map_key([1, "a"]) == '[1, "a"]'


# -- properties -----------------------------------------------------------------

# Characters of Python syntax that could reach code execution if the evaluator
# were naive: names, attributes, calls, subscripts, strings, lambdas, dunders.
_HOSTILE = string.ascii_letters + string.digits + "_.()[]{}'\",:;=+-*/%<>!&|^~@ \n"
_HOSTILE_WORDS = ["__import__", "os", "system", "eval", "exec", "open", "lambda", "times3",
                  "__class__", "__subclasses__", "{}", "**", "getattr", "globals", "_kvs_raw_"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_HOSTILE_WORDS), st.text(_HOSTILE, max_size=4)),
                max_size=12).map("".join))
def test_evaluator_only_ever_does_arithmetic(text: str) -> None:
    """Whatever the text, it is refused, or it evaluates to a number (or a
    CalibrationError): no name lookup, attribute, call of an unregistered
    function or any other code ever runs."""
    calls: list[Any] = []

    def times3(value: Any) -> float:
        calls.append(value)
        return 1.0

    registry = CalibrationRegistry()
    registry.add(times3)
    try:
        template = TemplateCalibration(text, registry=registry)
    except exception.ConfigurationError:
        return
    try:
        result = template.apply(2)
    except exception.CalibrationError:
        return
    assert isinstance(result, (int, float)) and not isinstance(result, bool)
    assert all(isinstance(value, (int, float)) for value in calls)


# An expression tree built alongside its expected value, computed independently.
_numbers = st.one_of(st.integers(-1000, 1000),
                     st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))


def _leaf() -> st.SearchStrategy[tuple[str, Any]]:
    return st.one_of(
        _numbers.map(lambda n: (repr(n), n)),
        st.just(("{}", "RAW")),
    )


def _combine(children: st.SearchStrategy[tuple[str, Any]]) -> st.SearchStrategy[tuple[str, Any]]:
    def binary(op: str) -> st.SearchStrategy[tuple[str, Any]]:
        return st.tuples(children, children).map(
            lambda pair: (f"({pair[0][0]} {op} {pair[1][0]})", (op, pair[0][1], pair[1][1])))
    return st.one_of(
        binary("+"), binary("-"), binary("*"),
        children.map(lambda child: (f"-({child[0]})", ("neg", child[1]))),
        children.map(lambda child: (f"times2({child[0]})", ("times2", child[1]))),
    )


def _value(tree: Any, raw: float) -> float:
    if tree == "RAW":
        return raw
    if not isinstance(tree, tuple):
        return float(tree)
    if tree[0] == "neg":
        return -_value(tree[1], raw)
    if tree[0] == "times2":
        return 2.0 * _value(tree[1], raw)
    left, right = _value(tree[1], raw), _value(tree[2], raw)
    return {"+": left + right, "-": left - right, "*": left * right}[tree[0]]


@settings(max_examples=300, deadline=None)
@given(st.recursive(_leaf(), _combine, max_leaves=12),
       st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False))
def test_evaluator_computes_arithmetic_right(expression: tuple[str, Any], raw: float) -> None:
    text, tree = expression
    if "{}" not in text:
        text = f"({text}) + 0 * {{}}"
    try:
        template = TemplateCalibration(text)
    except exception.ConfigurationError as error:
        assert "longer than" in str(error)
        return
    expected = _value(tree, raw)
    result = template.apply(raw)
    if math.isfinite(expected):
        assert result == pytest.approx(expected, rel=1e-9, abs=1e-6)
