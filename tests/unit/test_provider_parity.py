"""Parity with dragonfly's kv_store (the seed), and channel publishing.

Each row of PARITY is one behaviour the seed documents: what dragonfly did,
what kvs does (the same, or fixed on purpose: see doc/provider.md), and a
check that runs against the seed's tutorial store.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import dogpile.cache
import pytest

import kvs
import kvs.provider
import kvs.testing
from kvs import exception
from kvs.backends.memory import MemoryBackend
from kvs.provider import EndpointSpec, Provider
from tests.unit.provider_support import PRICES, Collector, loader_context


@pytest.fixture
def prices(tmp_path: Path) -> Iterator[Provider]:
    with loader_context(tmp_path, "memory") as loader:
        yield loader(PRICES)


def _raises(error: type[BaseException], call: Callable[[], Any]) -> BaseException:
    with pytest.raises(error) as caught:
        call()
    return caught.value


def check_times3(p: Provider) -> None:
    assert p.get("chips")["value_cal"] == 5.25


def check_identity_templates(p: Provider) -> None:
    assert p.get("peaches") == {"value_raw": 0.75, "value_cal": 0.75}  # '1*{}'
    for template in ("1*{}", "{}*1", "1.*{}"):
        assert kvs.provider.TemplateCalibration(template).apply(4.0) == 4.0


def check_map(p: Provider) -> None:
    assert p.get("status") == {"value_raw": "CLOSE", "value_cal": "on"}
    p.set("status", "AJAR")
    error = _raises(exception.CalibrationError, lambda: p.get("status"))
    assert error.value_raw == "AJAR"  # type: ignore[attr-defined]


def check_raw_keeps_type(p: Provider) -> None:
    assert p.get("peaches")["value_raw"] == 0.75  # dragonfly: the string '0.75'


def check_no_cent_truncation(p: Provider) -> None:
    assert p.set("chips", 1.79)["value_raw"] == 1.79  # type: ignore[index]  # dragonfly: 1.78


def check_get_on_set(p: Provider) -> None:
    assert p.set("chips", 2) == {"value_raw": 2, "value_cal": 6.0}
    assert p.set("waffles", 2) is None


def check_log_on_set_once(p: Provider) -> None:
    collector = Collector()
    p.subscribe(collector)
    p.set("peaches", 1.0)
    p.set("peaches", 1.0)
    assert [event["reason"] for event in collector.drain()] == ["on_set", "on_set"]


def check_unknown_endpoint(p: Provider) -> None:
    assert isinstance(_raises(exception.NotFound, lambda: p.endpoint("nope")), KeyError)


def check_list_endpoints(p: Provider) -> None:
    assert p.list_endpoints() == p.endpoint_names == ["chips", "peaches", "status", "waffles"]


def check_lock_cascades_and_returns_key(p: Provider) -> None:
    key = p.lock()
    assert uuid.UUID(key)
    assert all(p.endpoint(name).is_locked for name in p.list_endpoints())


def check_locked_set_and_get(p: Provider) -> None:
    key = p.lock()
    _raises(exception.Locked, lambda: p.set("peaches", 1))
    assert p.get("peaches")["value_raw"] == 0.75
    p.set("peaches", 1, lockout_key=key)


def check_unlock_rules(p: Provider) -> None:
    p.lock()
    _raises(exception.Locked, lambda: p.unlock())
    assert p.unlock(force=True) is True
    assert p.unlock() is False  # dragonfly: success; the spec: "no action taken"


def check_ping_while_locked(p: Provider) -> None:
    p.lock()
    assert p.ping() is True  # dragonfly refused ping while locked


def check_key_not_disclosed(p: Provider) -> None:
    key = p.lock()
    assert not hasattr(p, "lockout_key")
    assert key not in repr(p.store.get("_provider:lockout"))


PARITY: list[tuple[str, str, str, Callable[[Provider], None]]] = [
    ("times3 on 1.75", "5.25", "5.25", check_times3),
    ("identity templates 1*{}, {}*1, 1.*{}", "identity", "identity", check_identity_templates),
    ("map calibration and a map miss", "on; miss is error 304", "on; CalibrationError",
     check_map),
    ("raw value type", "str(value)", "the stored type", check_raw_keeps_type),
    ("set 1.79", "1.78 (value - value % 0.01)", "1.79", check_no_cent_truncation),
    ("get_on_set", "returns the get result", "same", check_get_on_set),
    ("log_on_set", "broadcast on every set", "same, reason on_set", check_log_on_set_once),
    ("endpoint('nope')", "KeyError", "NotFound (a KeyError)", check_unknown_endpoint),
    ("list_endpoints()", "AttributeError", "sorted names", check_list_endpoints),
    ("provider lock", "cascades, returns None", "cascades, returns the key",
     check_lock_cascades_and_returns_key),
    ("set/get while locked", "set 307, get allowed", "Locked, get allowed",
     check_locked_set_and_get),
    ("unlock without key / force / twice", "307 / ok / ok", "Locked / True / False",
     check_unlock_rules),
    ("ping while locked", "307", "True", check_ping_while_locked),
    ("lockout key readable", "get <ep>.lockout_key", "never", check_key_not_disclosed),
]


@pytest.mark.parametrize(("behaviour", "dragonfly", "kvs_does", "check"), PARITY,
                         ids=[row[0] for row in PARITY])
def test_parity(prices: Provider, behaviour: str, dragonfly: str, kvs_does: str,
                check: Callable[[Provider], None]) -> None:
    check(prices)


# -- options for the sample generator -------------------------------------------------

def test_list_opts_names_every_option() -> None:
    groups = {getattr(group, "name", group): opts for group, opts in kvs.provider.list_opts()}
    assert {opt.name for opt in groups["endpoint_template"]} == {
        "initial_value", "calibration", "calibration_map", "get_on_set", "log_on_set",
        "schedule_interval", "max_interval", "max_fractional_change", "max_absolute_change",
        "alert_channel"}
    assert "endpoints" in {opt.name for opt in groups["store_template"]}
    assert "node_name" in {opt.name for opt in groups["kvs"]}


# -- channel publishing -------------------------------------------------------------

class PublishingMemoryBackend(MemoryBackend):
    """kvs.memory plus a ``publish`` call, standing in for a pub/sub backend."""

    name = "test.kvs_publishing_memory"
    published: ClassVar[list[tuple[str, str]]] = []

    def publish(self, channel: str, message: str) -> int:
        if message == "FAIL":
            raise ConnectionError("publisher down")
        self.published.append((channel, message))
        return 1


dogpile.cache.register_backend(PublishingMemoryBackend.name, __name__, "PublishingMemoryBackend")


def test_events_are_published_on_the_alert_channel(tmp_path: Path) -> None:
    PublishingMemoryBackend.published.clear()
    with loader_context(tmp_path, "memory") as loader:
        path = tmp_path / "publish.conf"
        text = PRICES.format(store="prices", backend=f"backend = {PublishingMemoryBackend.name}")
        path.write_text(text.replace("[endpoint:prices.chips]",
                                     "alert_channel = alerts.peaches\n[endpoint:prices.chips]"))
        provider = loader.restart(path)
        provider.set("peaches", 2.5)
        provider.set("status", "OPEN")
    channels = [channel for channel, _ in PublishingMemoryBackend.published]
    assert channels == ["alerts.peaches", "sensor_value.status"]
    event = json.loads(PublishingMemoryBackend.published[0][1])
    assert (event["store"], event["endpoint"], event["value_raw"], event["reason"]) == (
        "prices", "peaches", 2.5, "on_set")


def test_a_failing_publisher_never_breaks_set(tmp_path: Path, monkeypatch: Any) -> None:
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store("pub")
        store.configure(PublishingMemoryBackend.name)
        provider = Provider(store, [EndpointSpec(store="pub", name="x", log_on_set=True,
                                                 alert_channel="c")])
        monkeypatch.setattr("kvs.provider.provider.event_json", lambda event: "FAIL")
        collector = Collector()
        provider.subscribe(collector)
        provider.set("x", 1)
        assert collector.next()["value_raw"] == 1
        assert store.get("x") == 1


def test_pubsub_on_a_real_redis(request: pytest.FixtureRequest) -> None:
    if "kvs.redis" not in kvs.core.known_backends():
        pytest.skip("the kvs.redis backend does not exist yet")
    try:
        config = dict(request.getfixturevalue("redis_backend_config"))
    except pytest.FixtureLookupError:
        pytest.skip("no redis_backend_config fixture (tests/fixtures/redis.py) yet")
    import redis

    client = redis.Redis.from_url(config["url"]) if "url" in config else redis.Redis(
        host=config.get("host", "127.0.0.1"), port=int(config["port"]))
    pubsub = client.pubsub()
    pubsub.subscribe("sensor_value.temp")
    assert pubsub.get_message(timeout=10)["type"] == "subscribe"  # type: ignore[index]
    with kvs.testing.isolated_stores():
        name = f"pub-{uuid.uuid4().hex[:8]}"
        store = kvs.get_key_value_store(name)
        store.configure(**config)
        provider = Provider(store, [EndpointSpec(store=name, name="temp", log_on_set=True,
                                                 alert_channel="sensor_value.temp")])
        provider.set("temp", 21.5)
    message = pubsub.get_message(timeout=10)
    assert message is not None and message["channel"] == b"sensor_value.temp"
    event = json.loads(message["data"])
    assert (event["endpoint"], event["value_raw"], event["reason"]) == ("temp", 21.5, "on_set")
    pubsub.close()
