"""Declared stores from an ini file: config, get/set, calibration, lockout,
subscribers, scheduled logging.  Every test runs on kvs.memory and kvs.sqlite."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import kvs
import kvs.provider
from kvs import exception
from kvs.provider import Provider
from tests.unit.provider_support import (
    PRICES,
    PROVIDER_BACKENDS,
    Collector,
    Loader,
    load,
    loader_context,
    wait_until,
)


@pytest.fixture(params=PROVIDER_BACKENDS)
def loader(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Loader]:
    with loader_context(tmp_path, str(request.param)) as value:
        yield value


@pytest.fixture
def prices(loader: Loader) -> Provider:
    return loader(PRICES)


# -- configuration ---------------------------------------------------------------


def test_endpoints_and_initial_values(prices: Provider) -> None:
    assert prices.list_endpoints() == ["chips", "peaches", "status", "waffles"]
    assert prices.endpoint_names == ["chips", "peaches", "status", "waffles"]
    assert set(prices.endpoints) == set(prices.list_endpoints())
    assert kvs.provider.get_provider("prices") is prices
    # JSON literals keep their type; other text stays a string
    assert prices.get("peaches") == {"value_raw": 0.75, "value_cal": 0.75}
    assert prices.get("waffles") == {"value_raw": 4.0, "value_cal": 8.0}
    assert prices.get("status") == {"value_raw": "CLOSE", "value_cal": "on"}
    # the values are ordinary keys of the store
    assert prices.store.get("chips") == 1.75


def test_initial_values_of_every_json_kind(loader: Loader) -> None:
    provider = loader("""
        [store:{store}]
        {backend}
        endpoints = f, i, b, n, l, d, s, q, qq, none

        [endpoint:{store}.f]
        initial_value = 0.75
        [endpoint:{store}.i]
        initial_value = 3
        [endpoint:{store}.b]
        initial_value = true
        [endpoint:{store}.n]
        initial_value = null
        [endpoint:{store}.l]
        initial_value = [1, 2]
        [endpoint:{store}.d]
        initial_value = {{"a": [1, "x"]}}
        [endpoint:{store}.s]
        initial_value = CLOSE
        [endpoint:{store}.q]
        initial_value = '"0.75"'
        [endpoint:{store}.qq]
        initial_value = "0.75"
        """)
    expected = {"f": 0.75, "i": 3, "b": True, "n": None, "l": [1, 2], "d": {"a": [1, "x"]},
                "s": "CLOSE", "q": "0.75", "none": None,
                # oslo.config strips one pair of quotes: the JSON string needs two
                "qq": 0.75}
    for name, value in expected.items():
        raw = provider.get(name)["value_raw"]
        assert raw == value and type(raw) is type(value), name
        assert "value_cal" not in provider.get(name)


@pytest.mark.parametrize(("section", "why"), [
    ("[endpoint:{store}.a]\ncalibration = __import__('os').system('true')", "calibration"),
    ("[endpoint:{store}.a]\ncalibration = nosuch({{}})", "not a registered"),
    ("[endpoint:{store}.a]\ncalibration = 2*{{}}\ncalibration_map = A:b", "not both"),
    ("[endpoint:{store}.a]\nmax_interval = -1", "max_interval"),
    ("[endpoint:{store}.a]\nmax_fractional_change = lots", "max_fractional_change"),
    ("[endpoint:{store}.a]\nschedule_interval = -0.5", "schedule_interval"),
    ("[endpoint:{store}.a]\nget_on_set = perhaps", "get_on_set"),
    ("[endpoint:{store}.a]\nalert_channel =   ", "alert_channel"),
    ("[endpoint:{store}.a]\ncalibration_map = ", "empty"),
    ("[endpoint:{store}.zzz]\ninitial_value = 1", "does not declare"),
])
def test_bad_endpoint_config_is_refused_at_load(loader: Loader, section: str,
                                                why: str) -> None:
    text = "[store:{store}]\n{backend}\nendpoints = a\n\n" + section + "\n"
    with pytest.raises(exception.ConfigurationError) as caught:
        loader(text)
    assert why in str(caught.value)
    assert "[endpoint:prices." in str(caught.value) or "[store:prices]" in str(caught.value)


@pytest.mark.parametrize("endpoints", ["a, a", "a.b", "1a", "a:b"])
def test_bad_endpoint_names_are_refused(loader: Loader, endpoints: str) -> None:
    with pytest.raises(exception.ConfigurationError, match=r"\[store:prices\]"):
        loader("[store:{store}]\n{backend}\nendpoints = " + endpoints + "\n")


def test_bad_config_writes_nothing(loader: Loader) -> None:
    text = """
        [store:{store}]
        {backend}
        endpoints = good, bad
        [endpoint:{store}.good]
        initial_value = 1
        [endpoint:{store}.bad]
        calibration = import_os({{}})
        """
    with pytest.raises(exception.ConfigurationError, match=r"\[endpoint:prices\.bad\]"):
        loader(text)
    # A store whose endpoint sections are broken is not configured at all.
    assert not kvs.get_key_value_store("prices").is_configured


def test_store_without_endpoints_has_no_provider(loader: Loader) -> None:
    path = loader.write("[store:{store}]\n{backend}\n")
    load(path)
    with pytest.raises(exception.NotFound, match="declares no endpoints"):
        kvs.provider.get_provider("prices")


def test_initial_values_never_clobber_existing_keys(loader: Loader) -> None:
    path = loader.write(PRICES)
    conf, providers = load(path)
    provider = providers["prices"]
    provider.set("peaches", 9.5)
    provider.store.delete("waffles")
    # a second configuration pass (another process starting, or a restart)
    again = kvs.provider.configure_providers(conf, {"prices": provider.store})["prices"]
    assert again.get("peaches")["value_raw"] == 9.5
    assert again.get("waffles")["value_raw"] == 4.0  # missing keys are written again
    assert again.initialize() == []


def test_restart_keeps_live_values(loader: Loader) -> None:
    if loader.backend == "memory":
        pytest.skip("kvs.memory data does not survive the process's stores")
    path = loader.write(PRICES)
    load(path)[1]["prices"].set("chips", 2.5)
    restarted = loader.restart(path)
    assert restarted.get("chips")["value_raw"] == 2.5


def test_concurrent_initialization_writes_once(loader: Loader) -> None:
    path = loader.write(PRICES)
    _, providers = load(path)
    store = providers["prices"].store
    store.delete_multi(["peaches", "chips", "waffles", "status"])
    written: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def initialize() -> None:
        barrier.wait()
        try:
            written.append(providers["prices"].initialize())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=initialize) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    names = sorted(name for batch in written for name in batch)
    assert names == ["chips", "peaches", "status", "waffles"]  # each exactly once


# -- get / set -------------------------------------------------------------------


def test_set_keeps_type_and_precision(prices: Provider) -> None:
    assert prices.set("waffles", 1.79) is None  # no get_on_set
    assert prices.get("waffles")["value_raw"] == 1.79  # no truncation to 1.78
    assert prices.set("chips", 1.79) == {"value_raw": 1.79, "value_cal": pytest.approx(5.37)}
    prices.set("waffles", 500)
    assert prices.get("waffles") == {"value_raw": 500, "value_cal": 1000}
    prices.set("waffles", -1.234)
    assert prices.get("waffles")["value_raw"] == -1.234


def test_calibration_types(prices: Provider) -> None:
    assert prices.get("chips") == {"value_raw": 1.75, "value_cal": 5.25}
    prices.set("chips", "1.75")  # numeric text works in a template
    assert prices.get("chips") == {"value_raw": "1.75", "value_cal": 5.25}
    prices.set("status", "OPEN")
    assert prices.get("status") == {"value_raw": "OPEN", "value_cal": "off"}


def test_calibration_errors_carry_the_raw_value(prices: Provider) -> None:
    prices.set("status", "AJAR")
    with pytest.raises(exception.CalibrationError) as caught:
        prices.get("status")
    assert caught.value.value_raw == "AJAR"
    prices.set("waffles", "soggy")
    with pytest.raises(exception.CalibrationError) as template_error:
        prices.get("waffles")
    assert template_error.value.result == {"value_raw": "soggy"}


def test_unknown_endpoint(prices: Provider) -> None:
    for call in (lambda: prices.endpoint("nope"), lambda: prices.get("nope"),
                 lambda: prices.set("nope", 1), lambda: prices.watch(["nope"]),
                 lambda: prices.start_logging(["nope"])):
        with pytest.raises(exception.NotFound, match="nope"):
            call()
    with pytest.raises(KeyError):
        prices.endpoint("_provider:lockout")


def test_endpoint_objects(prices: Provider) -> None:
    chips = prices.endpoint("chips")
    assert chips.name == "chips" and chips.address == "prices.chips"
    assert chips.calibration == "times3({})" and chips.get_on_set and not chips.log_on_set
    assert chips.alert_channel == "sensor_value.chips"
    assert chips.set(2) == {"value_raw": 2, "value_cal": 6.0}
    assert chips.get() == {"value_raw": 2, "value_cal": 6.0}


def test_resolve(loader: Loader) -> None:
    provider = loader(PRICES)
    assert kvs.provider.resolve("prices.chips") is provider.endpoint("chips")
    with pytest.raises(exception.NotFound):
        kvs.provider.resolve("node1.prices.chips")  # no node_name configured
    for bad in ("prices", "prices.nope", "other.chips", ""):
        with pytest.raises(exception.NotFound):
            kvs.provider.resolve(bad)


def test_resolve_with_node_name(loader: Loader) -> None:
    provider = loader("[kvs]\nnode_name = node1\n" + PRICES)
    chips = provider.endpoint("chips")
    assert kvs.provider.resolve("node1.prices.chips") is chips
    assert kvs.provider.resolve("prices.chips") is chips
    with pytest.raises(exception.NotFound):
        kvs.provider.resolve("node2.prices.chips")


def test_ping(prices: Provider) -> None:
    assert prices.ping() is True
    prices.lock()
    assert prices.ping() is True


# -- lockout ---------------------------------------------------------------------


def test_store_lock_cascades_and_returns_a_uuid(prices: Provider) -> None:
    key = prices.lock()
    assert isinstance(key, str) and len(key) == 36
    assert prices.is_locked
    assert all(prices.endpoint(name).is_locked for name in prices.list_endpoints())
    with pytest.raises(exception.Locked, match="lockout_key required"):
        prices.set("peaches", 1.0)
    with pytest.raises(exception.Locked, match="wrong lockout_key"):
        prices.set("peaches", 1.0, lockout_key="not-the-key")
    with pytest.raises(PermissionError):  # Locked is a PermissionError
        prices.endpoint("chips").set(1.0)
    assert prices.get("peaches")["value_raw"] == 0.75  # gets always work, unchanged
    assert prices.set("peaches", 1.0, lockout_key=key) == {"value_raw": 1.0, "value_cal": 1.0}
    assert prices.set("peaches", 2.0, lockout_key=key.replace("-", "").upper()) is not None


def test_unlock_rules(prices: Provider) -> None:
    key = prices.lock("my-own-key")
    assert key == "my-own-key"
    assert prices.lock("my-own-key") == "my-own-key"  # the holder relocking: a no-op
    with pytest.raises(exception.Locked):
        prices.lock("another-key")
    with pytest.raises(exception.Locked, match="force=True"):
        prices.unlock()
    with pytest.raises(exception.Locked):
        prices.unlock("another-key")
    assert prices.unlock("my-own-key") is True
    assert not prices.is_locked
    assert not any(prices.endpoint(name).is_locked for name in prices.list_endpoints())
    assert prices.unlock() is False  # not locked: a reported no-op
    prices.set("peaches", 3.0)


def test_force_unlock_and_per_endpoint_keys(prices: Provider) -> None:
    chips = prices.endpoint("chips")
    own = chips.lock()
    store_key = prices.lock()
    assert own != store_key
    with pytest.raises(exception.Locked):
        prices.set("chips", 1, lockout_key=store_key)  # chips keeps its own key
    prices.set("chips", 1, lockout_key=own)
    prices.set("peaches", 1, lockout_key=store_key)
    assert prices.unlock(store_key) is True
    assert chips.is_locked  # locked with another key: kept unless forced
    with pytest.raises(exception.Locked):
        chips.unlock(store_key)
    assert chips.unlock(force=True) is True
    assert chips.unlock() is False
    prices.lock()
    assert prices.unlock(force=True) is True
    assert not prices.is_locked and not chips.is_locked


def test_lockout_key_cannot_be_read_back(prices: Provider) -> None:
    key = prices.lock()
    with pytest.raises(exception.Locked):
        prices.endpoint("chips").lock()  # already locked by the store, with another key
    info = prices.lock_info()
    assert info["locked"] is True and "holder" in info and "since" in info
    seen = [prices.get(name) for name in prices.list_endpoints()]
    seen += [info, prices.endpoint("chips").lock_info()]
    seen += [vars(prices), vars(prices.endpoint("chips")), vars(prices._lockout)]
    for stored_key in ("_provider:lockout", "_provider:lockout:chips"):
        seen.append(prices.store.get(stored_key))
    assert key not in repr(seen) and key.replace("-", "") not in repr(seen)
    assert not hasattr(prices, "lockout_key")
    assert not hasattr(prices.endpoint("chips"), "lockout_key")


def test_invalid_lockout_keys(prices: Provider) -> None:
    for bad in ("", "   ", 42):
        with pytest.raises(exception.InvalidKey):
            prices.lock(bad)  # type: ignore[arg-type]


def test_lockout_is_shared_by_every_provider_on_the_store(loader: Loader) -> None:
    if loader.backend == "memory":
        pytest.skip("kvs.memory is per store object; cross-process lockout is tested on sqlite")
    path = loader.write(PRICES)
    first = load(path)[1]["prices"]
    key = first.lock()
    second = loader.restart(path)  # a fresh store object and provider on the same file
    assert second.is_locked and second.endpoint("peaches").is_locked
    with pytest.raises(exception.Locked):
        second.set("peaches", 5)
    second.set("peaches", 5, lockout_key=key)
    assert second.unlock(key)


# -- subscribers and log_on_set -----------------------------------------------------


def test_log_on_set_broadcasts_once_per_set(prices: Provider) -> None:
    collector = Collector()
    handle = prices.subscribe(collector)
    prices.set("peaches", 1.25)
    prices.set("peaches", 1.25)  # unchanged: still broadcast (on_set bypasses the rule)
    prices.set("chips", 3)  # no log_on_set
    events = collector.drain()
    assert [event["reason"] for event in events] == ["on_set", "on_set"]
    assert events[0]["store"] == "prices" and events[0]["endpoint"] == "peaches"
    assert events[0]["value_raw"] == 1.25 and events[0]["value_cal"] == 1.25
    assert events[0]["timestamp"].endswith("+00:00")
    baseline = prices.baseline("peaches")
    assert baseline is not None and baseline.value == 1.25  # the baseline was reset
    handle.close()
    prices.set("peaches", 2)
    assert collector.drain() == []


def test_log_on_set_with_a_failing_calibration_still_sets_and_broadcasts(
        prices: Provider) -> None:
    collector = Collector()
    prices.subscribe(collector)
    prices.set("status", "AJAR")  # not in the map
    event = collector.next()
    assert event["value_raw"] == "AJAR" and "value_cal" not in event
    assert prices.store.get("status") == "AJAR"


def test_a_raising_subscriber_never_breaks_set(prices: Provider) -> None:
    collector = Collector()

    def broken(event: dict[str, Any]) -> None:
        raise RuntimeError("subscriber bug")

    prices.subscribe(broken)
    prices.subscribe(collector)
    assert prices.set("peaches", 4.0) == {"value_raw": 4.0, "value_cal": 4.0}
    assert collector.next()["value_raw"] == 4.0


def test_watch_sees_events_of_this_process(prices: Provider) -> None:
    watcher = prices.watch(names=["status"], timeout=0.5, poll_interval=0.01)
    prices.set("peaches", 1)
    prices.set("status", "OPEN")
    events = list(watcher)
    assert [(event["endpoint"], event["value_cal"]) for event in events] == [("status", "off")]


# -- scheduled logging --------------------------------------------------------------

SCHEDULED = """
[store:{store}]
{backend}
endpoints = temp, label, idle

[endpoint:{store}.temp]
initial_value = 20.0
schedule_interval = 0.02
max_absolute_change = 0.5

[endpoint:{store}.label]
initial_value = cold
schedule_interval = 0.02
max_interval = 3600
max_fractional_change = 0.1

[endpoint:{store}.idle]
initial_value = 1
"""


def test_scheduled_logging_start_stop_and_status(loader: Loader) -> None:
    provider = loader(SCHEDULED)
    collector = Collector()
    provider.subscribe(collector)
    assert provider.logging_status == {"idle": False, "label": False, "temp": False}
    assert provider.start_logging() == ["label", "temp"]
    assert provider.logging_status == {"idle": False, "label": True, "temp": True}
    first = {collector.next()["endpoint"], collector.next()["endpoint"]}
    assert first == {"label", "temp"}
    assert wait_until(lambda: provider.sampling)
    provider.set("temp", 20.4)  # below the threshold: not broadcast
    provider.set("temp", 21.0)  # above: broadcast with reason change
    event = collector.next()
    assert (event["endpoint"], event["reason"], event["value_raw"]) == ("temp", "change", 21.0)
    provider.set("label", "warm")
    event = collector.next()
    assert (event["endpoint"], event["reason"], event["value_raw"]) == ("label", "change", "warm")
    provider.stop_logging()
    assert provider.logging_status == {"idle": False, "label": False, "temp": False}
    assert not provider._sampler.running and not provider.sampling
    collector.drain()
    provider.set("temp", 99.0)
    assert collector.drain() == []  # nothing samples any more
    with pytest.raises(exception.ConfigurationError, match="schedule_interval"):
        provider.start_logging(["idle"])


def test_start_logging_of_some_names_and_stop_of_some(loader: Loader) -> None:
    provider = loader(SCHEDULED)
    assert provider.start_logging(["temp"]) == ["temp"]
    assert provider.start_logging(["label"]) == ["label", "temp"]
    provider.stop_logging(["temp"])
    assert provider.logging_status == {"idle": False, "label": True, "temp": False}
    kvs.provider.reset_providers()  # stops the thread
    assert not provider._sampler.running


def test_an_exception_in_a_sample_does_not_stop_the_loop(loader: Loader) -> None:
    provider = loader("""
        [store:{store}]
        {backend}
        endpoints = state

        [endpoint:{store}.state]
        initial_value = A
        calibration_map = A:1, B:2
        schedule_interval = 0.02
        max_absolute_change = 0
        """)
    collector = Collector()
    provider.subscribe(collector)
    provider.set("state", "broken")  # every sample now raises CalibrationError
    provider.start_logging()
    assert wait_until(lambda: provider.sampling)
    provider.set("state", "B")
    event = collector.next()
    assert (event["value_raw"], event["value_cal"], event["reason"]) == ("B", 2, "first")
    provider.stop_logging()


def test_sample_once(loader: Loader) -> None:
    provider = loader(SCHEDULED)
    assert provider.sample("temp", now=1000.0)["reason"] == "first"  # type: ignore[index]
    assert provider.sample("temp", now=1001.0) is None
    provider.set("temp", 30.0)
    event = provider.sample("temp", now=1002.0)
    assert event is not None and event["reason"] == "change"
    assert provider.sample("label", now=0.0)["reason"] == "first"  # type: ignore[index]
    assert provider.sample("label", now=3601.0)["reason"] == "interval"  # type: ignore[index]


def test_one_sampler_per_store(loader: Loader) -> None:
    if loader.backend == "memory":
        pytest.skip("kvs.memory stores are separate per store object")
    path = loader.write(SCHEDULED)
    first = load(path)[1]["prices"]
    first.start_logging()
    assert wait_until(lambda: first.sampling)
    # A second provider on the same file (as another process would be).
    kvs.provider.registered_providers()  # the registry keeps `first` running
    store = kvs.core.KeyValueStore("prices")
    store.configure("kvs.sqlite", filename=str(loader.directory / "kvs.sqlite3"))
    second = Provider(store, [first.endpoint(name).spec for name in first.list_endpoints()])
    try:
        second.start_logging()
        assert second.logging_status["temp"]
        assert wait_until(lambda: second._sampler.running)
        for _ in range(20):
            assert not (first.sampling and second.sampling)
            threading.Event().wait(0.02)
        first.stop_logging()  # gives the lease back
        assert wait_until(lambda: second.sampling)
    finally:
        second.close()
