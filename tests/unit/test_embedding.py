"""kvs embedded in a service's own ConfigOpts, as oslo.cache is (register, parse, configure)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from oslo_config import cfg

import kvs
from kvs import exception
from kvs.testing import reset_registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    reset_registry()
    yield
    reset_registry()


def service_conf() -> cfg.ConfigOpts:
    """A service's own ConfigOpts: its options and a CLI flag of its own."""
    conf = cfg.ConfigOpts()
    conf.register_opts([cfg.PortOpt("bind_port", default=8080)])
    conf.register_cli_opt(cfg.BoolOpt("trace", default=False))
    return conf


def service_file(tmp_path: Path, extra: str = "", kvs_section: str = "") -> str:
    path = tmp_path / "service.conf"
    path.write_text("\n".join([
        "[DEFAULT]", "bind_port = 8081", "[kvs]", kvs_section, "[store:counter]",
        "backend = kvs.sqlite", f"backend_argument = filename:{tmp_path / 'counter.sqlite3'}",
    ]) + "\n" + textwrap.dedent(extra))
    return str(path)


def parsed(conf: cfg.ConfigOpts, path: str) -> cfg.ConfigOpts:
    conf(["--config-file", path, "--trace"], project="service", prog="service-api")
    return conf


def assert_service_settings_kept(conf: cfg.ConfigOpts, path: str) -> None:
    assert conf.bind_port == 8081 and conf.trace is True
    assert conf.config_file == [path] and conf.project == "service"
    assert conf.prog == "service-api"


def test_register_parse_configure_keeps_the_service_config(tmp_path: Path) -> None:
    path = service_file(tmp_path, kvs_section="default_lock_timeout = 7")
    conf = service_conf()
    kvs.register_opts(conf)
    parsed(conf, path)
    stores = kvs.configure_stores(conf)
    assert list(stores) == ["counter"]
    assert stores["counter"].update("hits", lambda n: n + 1, default=0) == 1
    assert stores["counter"].lock_timeout == 7
    assert_service_settings_kept(conf, path)
    # Configuring again from the same conf is a no-op, and still re-parses nothing.
    assert kvs.configure_stores(conf)["counter"] is stores["counter"]
    assert_service_settings_kept(conf, path)


def test_configure_stores_alone_registers_what_it_needs(tmp_path: Path) -> None:
    path = service_file(tmp_path)
    conf = parsed(service_conf(), path)   # kvs.register_opts never called
    stores = kvs.configure_stores(conf)
    assert stores["counter"].exists("nothing") is False
    assert stores["counter"].lock_timeout == 5.0  # [kvs] default_lock_timeout's default
    assert_service_settings_kept(conf, path)


def test_load_config_refuses_a_parsed_conf_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    path = service_file(tmp_path)
    conf = service_conf()
    kvs.register_opts(conf)
    parsed(conf, path)
    with pytest.raises(exception.ConfigurationError, match="already parsed") as info:
        kvs.load_config(conf=conf)
    assert "configure_stores" in str(info.value)
    with pytest.raises(exception.ConfigurationError, match="already parsed"):
        kvs.load_config([path], conf=conf)
    assert_service_settings_kept(conf, path)
    assert kvs.loader.store_names(conf) == ["counter"]


def test_kvs_defaults_apply_to_stores_the_service_configures_itself(tmp_path: Path) -> None:
    path = service_file(tmp_path, kvs_section="default_lock_timeout = 7\n"
                                             "enable_key_mangler = false")
    conf = service_conf()
    kvs.register_opts(conf)
    parsed(conf, path)
    direct = kvs.get_key_value_store("direct")
    direct.configure("kvs.memory")
    assert direct.lock_timeout == 7 and direct.lock_wait_timeout == 7
    assert direct.region.key_mangler("k") == "direct:k"      # no SHA-1: mangling disabled
    explicit = kvs.get_key_value_store("explicit")
    explicit.configure("kvs.memory", lock_timeout=2, enable_key_mangler=True)
    assert explicit.lock_timeout == 2 and explicit.region.key_mangler("k") != "explicit:k"
    # The test helpers' reset forgets the service defaults with the stores.
    reset_registry()
    plain = kvs.get_key_value_store("direct")
    plain.configure("kvs.memory")
    assert plain.lock_timeout == 5.0


def test_a_bad_kvs_default_names_the_option_never_the_value(tmp_path: Path) -> None:
    path = service_file(tmp_path, kvs_section="default_lock_timeout = s3cr3t")
    conf = service_conf()
    kvs.register_opts(conf)
    parsed(conf, path)
    with pytest.raises(exception.ConfigurationError) as info:
        kvs.get_key_value_store("direct").configure("kvs.memory")
    assert "default_lock_timeout" in str(info.value) and "[kvs]" in str(info.value)
    assert "s3cr3t" not in str(info.value)
    assert not kvs.get_key_value_store("direct").is_configured


def test_one_broken_store_section_fails_alone(tmp_path: Path) -> None:
    path = service_file(tmp_path, extra="""
        [store:bad]
        backend = kvs.memory
        lock_timeout = soon
        [store:worse]
        backend = kvs.nosuch
        [store:declared]
        backend = kvs.memory
        event_log_size = abc
        """)
    conf = parsed(service_conf(), path)
    with pytest.raises(exception.BrokenStores) as info:
        kvs.configure_stores(conf)
    broken = info.value
    assert sorted(broken.errors) == ["store:bad", "store:declared", "store:worse"]
    message = str(broken)
    for needle in ("[store:bad]", "lock_timeout", "[store:worse]", "kvs.nosuch",
                   "[store:declared]", "event_log_size"):
        assert needle in message
    assert list(broken.stores) == ["counter"]
    counter = kvs.get_key_value_store("counter")
    counter.set("k", 1)
    assert counter.get("k") == 1
    assert not kvs.get_key_value_store("bad").is_configured
    # kvs.loader.validate checks without configuring and reports the same sections.
    with pytest.raises(exception.BrokenStores) as again:
        kvs.loader.validate(conf)
    assert sorted(again.value.errors) == ["store:bad", "store:declared"]  # backend: at configure


def test_the_sample_config_creates_no_store(tmp_path: Path) -> None:
    conf = kvs.load_config([str(ROOT / "etc" / "kvs.conf.sample")])
    assert kvs.loader.store_names(conf) == []
    assert kvs.configure_stores(conf) == {}
    assert not kvs.core.registered_stores()


# -- the example service, run as a user runs it ----------------------------------------

def start_service(tmp_path: Path, config: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "counter_service.py"),
         "--config-file", str(config)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("listening on "):
        process.kill()
        raise AssertionError(f"service did not start: {line!r} {process.stderr.read()}")
    return process, line.split()[-1]


def fetch(address: str, path: str) -> dict:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as response:
        return json.load(response)


def test_the_example_service_embeds_kvs_under_concurrent_requests(tmp_path: Path) -> None:
    config = tmp_path / "service.conf"
    shipped = (ROOT / "examples" / "service.conf").read_text()
    assert "bind_port = 8081" in shipped and "[store:counter]" in shipped
    # Any free port, and the data file in this test's directory.
    config.write_text(shipped.replace("bind_port = 8081", "bind_port = 0"))
    services = [start_service(tmp_path, config) for _ in range(2)]
    try:
        seen: list[int] = []
        guard = threading.Lock()

        def client(address: str) -> None:
            for _ in range(25):
                hits = fetch(address, "/hit")["hits"]
                with guard:
                    seen.append(hits)

        threads = [threading.Thread(target=client, args=(address,))
                   for _, address in services for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        # 2 processes x 4 threads x 25 requests, one update() each: none lost.
        assert sorted(seen) == list(range(1, 201))
        for _, address in services:
            settings = fetch(address, "/settings")
            assert settings == {"bind_port": 0, "trace": False, "config_file": [str(config)],
                                "project": "counter-service", "lock_timeout": 7.0}
    finally:
        for process, _ in services:
            process.terminate()
            process.wait(10)
            assert process.stderr is not None
            process.stderr.close()
            assert process.stdout is not None
            process.stdout.close()
    assert (tmp_path / "counter.sqlite3").exists()


class ExplodingBackend:
    """A backend whose constructor fails with an error that is not kvs's."""

    def __init__(self, arguments: dict) -> None:
        raise OSError("boom: /secret/path")


def test_a_store_whose_provider_or_backend_fails_fails_alone(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    path = service_file(tmp_path, kvs_section=f"backends = boom={__name__}:ExplodingBackend",
                        extra=f"""
        [store:declared_down]
        backend = kvs.redis
        backend_argument = url:redis://127.0.0.1:{closed}/0
        endpoints = level
        [endpoint:declared_down.level]
        initial_value = 1
        [store:declared_ok]
        backend = kvs.memory
        endpoints = level
        [endpoint:declared_ok.level]
        initial_value = 2
        [store:exploding]
        backend = boom
        """)
    conf = parsed(service_conf(), path)
    with pytest.raises(exception.BrokenStores) as info:
        kvs.configure_stores(conf)
    errors = info.value.errors
    assert sorted(errors) == ["store:declared_down", "store:exploding"]
    assert isinstance(errors["store:declared_down"], exception.BackendUnavailable)
    assert "OSError" in errors["store:exploding"].message
    assert "/secret/path" not in str(info.value)
    assert sorted(info.value.stores) == ["counter", "declared_ok"]
    assert kvs.provider.get_provider("declared_ok").get("level")["value_raw"] == 2


def test_isolated_stores_keep_the_service_defaults_apart(tmp_path: Path) -> None:
    path = service_file(tmp_path, kvs_section="default_lock_timeout = 7")
    conf = service_conf()
    kvs.register_opts(conf)
    parsed(conf, path)
    with kvs.testing.isolated_stores():
        inside = kvs.get_key_value_store("inside")
        inside.configure("kvs.memory")
        assert inside.lock_timeout == 5.0  # built-in defaults in the isolated block
    outside = kvs.get_key_value_store("outside")
    outside.configure("kvs.memory")
    assert outside.lock_timeout == 7      # the service's again after it
