"""Output helpers of the kvs command: values, tables, JSON and secret scrubbing."""

from __future__ import annotations

import json
from pathlib import Path

from oslo_config import cfg

from kvs import loader
from kvs.cli import output


def test_parse_value_is_json_else_text() -> None:
    assert output.parse_value("42") == 42
    assert output.parse_value('{"a": [1, null]}') == {"a": [1, None]}
    assert output.parse_value('"42"') == "42"
    assert output.parse_value("hello world") == "hello world"
    assert output.parse_value("{not json") == "{not json"


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
