"""oslo.config loading: [kvs], [store:NAME], validation and errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import kvs
from kvs import exception
from kvs.backends.base import ArgumentSpec
from kvs.backends.memory import MemoryBackend

ROOT = Path(__file__).resolve().parents[2]


class FlagBackend(MemoryBackend):
    """A test backend registered through [kvs] backends, with typed arguments."""

    name = "test.flag"
    arguments = {**MemoryBackend.arguments,
                 "flag": ArgumentSpec("bool", default=False),
                 "items": ArgumentSpec("list", default=[]),
                 "password": ArgumentSpec("str", secret=True),
                 "count": ArgumentSpec("int", default=1, minimum=0)}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "kvs.conf"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_shipped_config_configures_a_sqlite_store(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    conf = kvs.load_config([str(ROOT / "etc" / "kvs.conf")])
    stores = kvs.configure_stores(conf)
    assert set(stores) == {"demo", "sensor"}
    sensor = kvs.get_provider("sensor")
    assert sensor.list_endpoints() == ["setpoint", "temperature", "valve"]
    assert sensor.get("temperature") == {"value_raw": 20.5, "value_cal": 293.65}
    store = kvs.get_key_value_store("demo")
    assert store is stores["demo"] and store.is_configured
    assert store.backend_name == "kvs.sqlite" and store.lock_wait_timeout == 30
    store.set("k", [1, 2])
    assert store.get("k") == [1, 2]
    assert (tmp_path / "kvs-demo.sqlite3").exists()


def test_every_store_option_is_applied(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        [kvs]
        default_lock_timeout = 2.5
        enable_key_mangler = false
        backends = flag={__name__}:FlagBackend

        [store:a]
        backend = flag
        backend_argument = flag:yes
        backend_argument = items: x, y ,z
        backend_argument = count:3
        backend_argument = password:12345
        lock_wait_timeout = 0.5
        key_prefix = ns
        serializer = json
        default_ttl = 30
        proxies = tests.contract.test_configure.RecordingProxy
        locking = false

        [store:b]
        backend = kvs.memory
        lock_timeout = 0
    """)
    stores = kvs.configure_stores(kvs.load_config([path]))
    a, b = stores["a"], stores["b"]
    backend: Any = a.region.actual_backend
    assert backend.options["flag"] is True
    assert backend.options["items"] == ["x", "y", "z"]
    assert backend.options["count"] == 3
    assert backend.options["password"] == "12345"  # a str, not coerced to an int
    assert a.lock_timeout == 2.5 and a.lock_wait_timeout == 0.5
    assert a.key_prefix == "ns" and a.default_ttl == 30 and not a.locking
    assert a.region.key_mangler("k") == "ns:k"  # enable_key_mangler = false
    assert type(a.region.backend).__name__ == "RecordingProxy"
    # 0 = never expires; the wait then falls back to [kvs] default_lock_timeout.
    assert b.lock_timeout == 0 and b.lock_wait_timeout == 2.5 and b.locking
    with pytest.raises(exception.SerializationError):
        a.set("k", b"json cannot hold bytes")


@pytest.mark.parametrize(("section", "option", "needle"), [
    ("lock_timeout = -1", "lock_timeout", "lock_timeout"),
    ("lock_wait_timeout = soon", "lock_wait_timeout", "lock_wait_timeout"),
    ("default_ttl = -5", "default_ttl", "default_ttl"),
    ("serializer = yaml", "serializer", "serializer"),
    ("locking = maybe", "locking", "locking"),
])
def test_bad_values_name_option_and_section(tmp_path: Path, section: str, option: str,
                                            needle: str) -> None:
    path = write(tmp_path, f"""
        [store:bad]
        backend = kvs.memory
        {section}
    """)
    conf = kvs.load_config([path])  # store sections are checked when configured
    with pytest.raises(exception.BrokenStores) as info:
        kvs.configure_stores(conf)
    assert needle in str(info.value) and "[store:bad]" in str(info.value)
    assert info.value.context["option"] == option
    assert list(info.value.errors) == ["store:bad"] and not info.value.stores
    assert not kvs.get_key_value_store("bad").is_configured


def test_unknown_backend_lists_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [store:x]
        backend = kvs.nosuch
    """)
    conf = kvs.load_config([path])
    with pytest.raises(exception.ConfigurationError) as info:
        kvs.configure_stores(conf)
    message = str(info.value)
    assert "[store:x]" in message and "kvs.nosuch" in message
    assert "kvs.memory" in message and "kvs.sqlite" in message


def test_malformed_backend_argument_never_echoes_value(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [store:x]
        backend = kvs.memory
        backend_argument = s3cr3t-password-without-a-name
    """)
    with pytest.raises(exception.ConfigurationError) as info:
        kvs.configure_stores(kvs.load_config([path]))
    assert "backend_argument" in str(info.value) and "[store:x]" in str(info.value)
    assert "s3cr3t" not in str(info.value)


def test_unknown_backend_argument_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [store:x]
        backend = kvs.memory
        backend_argument = filenme:typo.sqlite3
    """)
    with pytest.raises(exception.ConfigurationError) as info:
        kvs.configure_stores(kvs.load_config([path]))
    assert "filenme" in str(info.value) and "max_value_size" in str(info.value)
    assert not kvs.get_key_value_store("x").is_configured


def test_bad_typed_backend_argument_hides_secret(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
        [kvs]
        backends = flag={__name__}:FlagBackend
        [store:x]
        backend = flag
        backend_argument = flag:perhaps
        backend_argument = password:hunter2
    """)
    with pytest.raises(exception.ConfigurationError) as info:
        kvs.configure_stores(kvs.load_config([path]))
    assert "flag" in str(info.value) and "hunter2" not in str(info.value)


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    with pytest.raises(exception.ConfigurationError) as info:
        kvs.load_config([str(tmp_path / "nope.conf")])
    assert "nope.conf" in str(info.value)
    broken = tmp_path / "broken.conf"
    broken.write_text("[store:x\nbackend = kvs.memory\n")
    with pytest.raises(exception.ConfigurationError):
        kvs.load_config([str(broken)])


def test_stock_backend_from_config(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [store:stock]
        backend = dogpile.cache.memory
    """)
    store = kvs.configure_stores(kvs.load_config([path]))["stock"]
    assert not store.fenced
    store.set("k", {"a": 1})
    assert store.get("k") == {"a": 1}


def test_sample_config_is_current(tmp_path: Path) -> None:
    generated = tmp_path / "kvs.conf.sample"
    subprocess.run([sys.executable, "-m", "oslo_config.generator", "--namespace", "kvs",
                    "--namespace", "kvs.provider", "--output-file", str(generated)],
                   check=True, cwd=ROOT)
    shipped = (ROOT / "etc" / "kvs.conf.sample").read_text()
    assert generated.read_text() == shipped, "run `make sample-config` and commit the result"


def test_a_second_config_that_differs_raises_and_one_alike_is_a_no_op(tmp_path: Path) -> None:
    def config(name: str, filename: str, lock_timeout: float) -> str:
        path = tmp_path / name
        path.write_text(textwrap.dedent(f"""
            [store:counter]
            backend = kvs.sqlite
            backend_argument = filename:{tmp_path / filename}
            lock_timeout = {lock_timeout}
            """))
        return str(path)

    first = kvs.configure_stores(kvs.load_config([config("a.conf", "a.sqlite3", 3)]))
    first["counter"].set("n", 1)
    again = kvs.configure_stores(kvs.load_config([config("b.conf", "a.sqlite3", 3)]))
    assert again["counter"] is first["counter"] and again["counter"].get("n") == 1
    with pytest.raises(exception.BrokenStores) as info:
        kvs.configure_stores(kvs.load_config([config("c.conf", "other.sqlite3", 4)]))
    assert isinstance(info.value.errors["store:counter"], exception.AlreadyConfigured)
    message = str(info.value)
    assert "[store:counter]" in message
    assert "filename" in message and "lock_timeout" in message
    assert first["counter"].lock_timeout == 3


def test_an_unparsable_file_never_quotes_its_lines(tmp_path: Path) -> None:
    broken = tmp_path / "broken.conf"
    broken.write_text("[store:x]\nbackend = kvs.memory\nhunter2-and-no-equals-sign\n")
    with pytest.raises(exception.ConfigurationError) as info:
        kvs.load_config([str(broken)])
    assert "line 3" in str(info.value) and "broken.conf" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_bad_backends_entries_fail_validation_as_loading_does(tmp_path: Path) -> None:
    path = write(tmp_path, """
        [kvs]
        backends = kvs.redis=somewhere.else:Backend
    """)
    with pytest.raises(exception.ConfigurationError, match=r"kvs\.redis") as info:
        kvs.load_config([path])
    assert info.value.context["option"] == "backends"
