"""Output helpers of the kvs command: values, tables, JSON and secret scrubbing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from oslo_config import cfg

from kvs import loader
from kvs.cli import output


def test_parse_value_is_json_else_text() -> None:
    assert output.parse_value("42") == 42
    assert output.parse_value('{"a": [1, null]}') == {"a": [1, None]}
    assert output.parse_value('"42"') == "42"
    assert output.parse_value("hello world") == "hello world"


def test_values_for_humans_and_for_json() -> None:
    assert output.show_value("text") == "text"
    assert output.show_value(b"\x00a") == "b'\\x00a'"
    assert output.show_value({"a": [1, 2.5, None]}) == '{"a": [1, 2.5, null]}'
    encoded = json.loads(output.to_json({"raw": b"\x00\x01", "t": (1, 2)}))
    assert encoded == {"raw": {"base64": "AAE="}, "t": [1, 2]}


def test_table_aligns_columns() -> None:
    text = output.table(["name", "ok"], [["a", True], ["longer", None], ["x", 1.50]])
    assert text.splitlines() == ["name    ok", "a       yes", "longer  -", "x       1.5"]


def config(tmp_path: Path, text: str) -> cfg.ConfigOpts:
    path = tmp_path / "kvs.conf"
    path.write_text(text)
    return loader.load_config([str(path)])


def test_scrubber_masks_declared_secrets_url_passwords_and_secret_key(tmp_path: Path) -> None:
    conf = config(tmp_path, """\
[store:r]
backend = kvs.redis
backend_argument = url:redis://user:p%40ss-in-url@127.0.0.1:1/0
backend_argument = password:declared-secret
backend_argument = username:visible-user
secret_key = the-mac-key

[store:stock]
backend = dogpile.cache.memory
backend_argument = api_token:stock-token
backend_argument = cache_size:10
""")
    scrub = output.Scrubber()
    scrub.add_from_config(conf)
    text = ("declared-secret the-mac-key p@ss-in-url p%40ss-in-url stock-token "
            "visible-user cache 10")
    assert scrub(text) == "*** *** *** *** *** visible-user cache 10"


def test_scrubber_without_secrets_changes_nothing() -> None:
    assert output.Scrubber()("nothing to hide") == "nothing to hide"


def test_to_json_has_no_nan_or_infinity() -> None:
    def strict(text: str) -> object:
        def refuse(name: str) -> object:
            raise AssertionError(f"{name} is not JSON")
        return json.loads(text, parse_constant=refuse)

    value = {"a": [math.nan, math.inf, -math.inf, 1.5], "b": (math.nan,), "c": {"d": math.inf}}
    assert strict(output.to_json(value)) == {"a": ["NaN", "Infinity", "-Infinity", 1.5],
                                            "b": ["NaN"], "c": {"d": "Infinity"}}
    assert strict(output.to_json(math.nan, indent=None)) == "NaN"
    assert output.show_value(math.inf) == '"Infinity"'
    assert output.to_json({"raw": b"\x00"}, indent=None) == '{"raw": {"base64": "AA=="}}'


def test_parse_value_refuses_what_looks_like_broken_json() -> None:
    for text in ("[1,2", "{", '"open', "01", "+1", ".5", "5.", "1e", "1_000", "0x1f", "[NaN]",
                 "  {}x"):
        with pytest.raises(output.BrokenValue, match="--string"):
            output.parse_value(text)
    for text, value in (("word", "word"), ("NaN", "NaN"), ("Infinity", "Infinity"),
                        ("1.2.3", "1.2.3"), ("-", "-"), ("", ""), ("12abc", "12abc"),
                        ("2024-01-01", "2024-01-01"), ("-0.5E+3", -500.0), ("null", None)):
        assert output.parse_value(text) == value, text


def test_no_error_exits_1_unless_it_is_a_missing_key() -> None:
    """Every kvs error, and oslo's, maps to its documented status; only NotFound to 1."""
    from kvs import exception
    from kvs.cli import EXIT_STATUSES, status_of

    classes = [value for value in vars(exception).values()
               if isinstance(value, type) and issubclass(value, exception.KVSError)]
    assert len(classes) > 10
    for cls in classes:
        error = cls.__new__(cls)
        status = status_of(error)
        assert status in EXIT_STATUSES, cls
        assert (status == 1) == issubclass(cls, exception.NotFound), cls
    assert status_of(exception.BackendUnavailable("x")) == 3
    assert status_of(exception.LeaseLost("x")) == 4
    assert status_of(exception.Locked("x")) == 4
    assert status_of(exception.UnsupportedProxy("x")) == 2
    assert status_of(exception.TamperedValue("x")) == 5
    assert status_of(exception.CorruptValue("x")) == 5
    assert status_of(cfg.ConfigDirNotFoundError("/nodir")) == 2
    assert status_of(cfg.RequiredOptError("o")) == 2
    assert status_of(RuntimeError("a bug")) == 70
    assert status_of(exception.KVSError("a bug")) == 70
