"""kvs.etcd against real etcd: configuration, outages, TLS and auth, failover, fences.

The contract suite (tests/contract) already runs on the plain 3-member
cluster; these tests cover what a user of etcd in particular counts on:
configuration errors at configure() time naming the option, calls that fail
within ``timeout`` naming a member and never a password, the secure member
(TLS with client certificates, auth), failover to another member, fences
that are etcd revisions, watch-based wake-ups, long multi-key calls, lost
replies of plain writes, a plain dogpile region and a forked child.

Closed loopback ports stand for members that are down: 127.0.0.1:9 (discard,
never served here) and ports ``free_port()`` just found free.
"""

from __future__ import annotations

import json
import os
import select
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dogpile.cache import make_region
from dogpile.cache.api import NO_VALUE

import kvs
import kvs.testing
from kvs import exception
from kvs.backends.etcd import MAX_TXN_OPS, VALUE_LIMIT, EtcdBackend
from tests.fixtures.common import free_port
from tests.fixtures.etcd import ROOT_PASSWORD, ROOT_USER
from tests.fixtures.etcd_servers import EtcdCertificates, EtcdCluster, EtcdMember, b64
from tests.functional.fault_support import returns_within
from tests.functional.faultproxy import FaultProxy

#: How far past its ``timeout`` a failing call may return (the machine is shared).
SLACK = 1.0

NAMESPACE = "kvs/"


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    with kvs.testing.isolated_stores():
        yield


def _store(config: dict[str, Any], prefix: str | None = None,
           **overrides: Any) -> kvs.KeyValueStore:
    """A configured store with a fresh name; stores made with one ``prefix`` share keys."""
    store = kvs.get_key_value_store(f"etcd-{uuid.uuid4().hex[:10]}")
    store.configure(**{**config, "key_prefix": prefix or _prefix(), **overrides})
    return store


def _prefix() -> str:
    return f"etcd-backend-{uuid.uuid4().hex[:8]}"


def _backend(store: kvs.KeyValueStore) -> EtcdBackend:
    backend = store.region.actual_backend
    assert isinstance(backend, EtcdBackend)
    return backend


def _closed_ports(count: int) -> list[str]:
    return ["127.0.0.1:9", *[f"127.0.0.1:{free_port()}" for _ in range(count - 1)]]


def _plain_config(endpoints: list[str], **extra: Any) -> dict[str, Any]:
    return {"backing_store": "kvs.etcd", "endpoints": ",".join(endpoints), **extra}


def _lease_kv(member: EtcdMember, lease_key: str, token: str | None = None) -> dict[str, Any]:
    """The lease key's record, read with a raw linearizable range on ``member``."""
    answer = member.call("/v3/kv/range", {"key": b64(f"{NAMESPACE}l/{lease_key}")},
                         token=token)
    kvs_ = answer.get("kvs", [])
    assert len(kvs_) == 1, answer
    return dict(kvs_[0])


def _everything_said(error: BaseException) -> str:
    """The message, repr, context and the whole formatted traceback (chained ones too)."""
    context = getattr(error, "context", {})
    return "\n".join([str(error), repr(error), repr(context),
                      "".join(traceback.format_exception(error))])


def _count_posts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the path of every request the backend sends from now on."""
    sent: list[str] = []
    post_once = EtcdBackend._post_once

    def counting(self: EtcdBackend, index: int, path: str, body: Any,
                 read_timeout: float) -> Any:
        sent.append(path)
        return post_once(self, index, path, body, read_timeout)

    monkeypatch.setattr(EtcdBackend, "_post_once", counting)
    return sent


# -- 1. configuration errors, at configure() time -------------------------------

def _dummy_tls_files(tmp_path: Path) -> dict[str, str]:
    files = {}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        path = tmp_path / f"{name}.pem"
        path.write_text("not read at configure() time\n")
        files[name] = str(path)
    return files


CONFIG_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "no endpoints": ({}, "endpoints"),
    "empty endpoints": ({"endpoints": ""}, "endpoints"),
    "no port": ({"endpoints": "127.0.0.1"}, "endpoints"),
    "port not a number": ({"endpoints": "127.0.0.1:1,host:notaport"}, "endpoints"),
    "port out of range": ({"endpoints": "127.0.0.1:70000"}, "endpoints"),
    "unknown scheme": ({"endpoints": "ftp://x:1"}, "endpoints"),
    "http with TLS files": ({"endpoints": "http://127.0.0.1:1", "tls": "all"}, "endpoints"),
    "certfile without keyfile": ({"endpoints": "127.0.0.1:1", "tls": "ssl_certfile"},
                                 "ssl_keyfile"),
    "keyfile without certfile": ({"endpoints": "127.0.0.1:1", "tls": "ssl_keyfile"},
                                 "ssl_certfile"),
    "missing CA file": ({"endpoints": "https://127.0.0.1:1", "ssl_ca_certs": "MISSING"},
                        "ssl_ca_certs"),
    "username without password": ({"endpoints": "127.0.0.1:1", "username": "root"},
                                  "password"),
    "password without username": ({"endpoints": "127.0.0.1:1", "password": "s3cret-pw"},
                                  "username"),
    "unknown argument": ({"endpoints": "127.0.0.1:1", "endpoint_timeout": 1}, "endpoint_timeout"),
    "timeout below the minimum": ({"endpoints": "127.0.0.1:1", "timeout": 0}, "timeout"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_configuration_errors_name_the_option_at_configure_time(
        case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arguments, option = CONFIG_ERRORS[case]
    arguments = dict(arguments)
    files = _dummy_tls_files(tmp_path)
    tls = arguments.pop("tls", None)
    if tls == "all":
        arguments.update(files)
    elif tls is not None:
        arguments[tls] = files[tls]
    if arguments.get("ssl_ca_certs") == "MISSING":
        arguments["ssl_ca_certs"] = str(tmp_path / "no-such-ca.pem")
    sent = _count_posts(monkeypatch)
    store = kvs.get_key_value_store("bad-etcd")
    with pytest.raises(exception.ConfigurationError) as info:
        store.configure(backing_store="kvs.etcd", **arguments)
    assert info.value.context.get("option") == option, (case, info.value.context, info.value)
    assert option in str(info.value), str(info.value)
    assert "s3cret-pw" not in _everything_said(info.value)
    assert sent == [], "configure() sent a request"
    # The failed configure() left the store unconfigured: it can be configured again.
    with pytest.raises(exception.NotConfigured):
        store.get("k")
    store.configure(backing_store="kvs.etcd", endpoints="127.0.0.1:9")
    assert _backend(store).endpoints == [("http", "127.0.0.1", 9)]


def test_ini_endpoints_parse_to_a_list(tmp_path: Path) -> None:
    ini = tmp_path / "kvs.conf"
    ini.write_text("""
[store:etcd]
backend = kvs.etcd
backend_argument = endpoints:127.0.0.1:1, 127.0.0.1:2
backend_argument = timeout:0.25
backend_argument = namespace:app/
lock_timeout = 2
""")
    conf = kvs.load_config([str(ini)])
    store = kvs.configure_stores(conf)["etcd"]
    backend = _backend(store)
    assert backend.options["endpoints"] == ["127.0.0.1:1", "127.0.0.1:2"]
    assert backend.endpoints == [("http", "127.0.0.1", 1), ("http", "127.0.0.1", 2)]
    assert backend.timeout == 0.25
    assert backend.options["namespace"] == "app/"


def test_ini_malformed_endpoint_names_the_section(tmp_path: Path) -> None:
    ini = tmp_path / "kvs.conf"
    ini.write_text("""
[store:etcd]
backend = kvs.etcd
backend_argument = endpoints:127.0.0.1:1, host:notaport
""")
    conf = kvs.load_config([str(ini)])
    with pytest.raises(exception.ConfigurationError) as info:
        kvs.configure_stores(conf)
    assert "notaport" in str(info.value) and "store:etcd" in str(info.value), str(info.value)


# -- 2. every member down ------------------------------------------------------------

#: The calls, and how many backend calls each makes before it gives up: a lock's
#: acquire tries twice, then gives the lease back (best effort), each bounded by
#: ``timeout``; update() is an acquire first.
DOWN_CALLS = {
    "get": (lambda store: store.get("k"), 1),
    "set": (lambda store: store.set("k", "v"), 1),
    "acquire": (lambda store: store.get_lock("k").acquire(), 3),
    "update": (lambda store: store.update("k", lambda value: value + 1, default=0), 3),
}


@pytest.mark.parametrize("with_password", [False, True], ids=["no-auth", "auth"])
@pytest.mark.parametrize("call", list(DOWN_CALLS))
def test_all_members_down_fails_within_the_timeout_naming_a_member(
        call: str, with_password: bool) -> None:
    endpoints = _closed_ports(3)
    password = "pa55-" + uuid.uuid4().hex
    extra = {"username": "kvs-user", "password": password} if with_password else {}
    timeout = 0.15
    store = _store(_plain_config(endpoints, timeout=timeout, **extra), lock_wait_timeout=1)
    attempt, calls = DOWN_CALLS[call]
    started = time.monotonic()
    with pytest.raises(exception.BackendUnavailable) as info:
        attempt(store)
    elapsed = time.monotonic() - started
    assert elapsed < calls * timeout + SLACK, elapsed
    message = str(info.value)
    assert any(endpoint in message for endpoint in endpoints), message
    assert info.value.context.get("host") in endpoints, info.value.context
    assert password not in _everything_said(info.value)
    assert password not in repr(store) and password not in repr(_backend(store))


def test_all_members_down_each_call_is_bounded_by_timeout() -> None:
    """A plain get against nothing but refused ports: the timeout bounds it, tightly
    (refused members are retried until the deadline, in case one comes back)."""
    store = _store(_plain_config(_closed_ports(2), timeout=0.25))
    for _ in range(2):
        started = time.monotonic()
        with pytest.raises(exception.BackendUnavailable):
            store.get("k")
        elapsed = time.monotonic() - started
        assert 0.2 < elapsed < 0.25 + SLACK, elapsed


# -- 3. the secure member: TLS with client certificates, auth ---------------------

def test_secure_member_serves_the_whole_api(etcd_secure_backend_config: dict[str, Any],
                                            etcd_secure: EtcdCluster) -> None:
    store = _store(etcd_secure_backend_config, lock_timeout=5, lock_wait_timeout=2)
    store.set("plain", {"a": 1})
    assert store.get("plain") == {"a": 1}
    assert store.update("n", lambda value: value + 1, default=41) == 42
    assert store.get("n") == 42
    lock = store.get_lock("locked").acquire()
    try:
        assert lock.fence is not None
        store.set("locked", "fenced", lock=lock)
        info = store.lease_info("locked")
        assert info is not None and info.token == lock.token and info.fence == lock.fence
        assert info.remaining is not None and 0 < info.remaining <= 7
        member = etcd_secure.members[0]
        raw = _lease_kv(member, lock.lease_key, token=etcd_secure.authenticate())
        assert int(raw["create_revision"]) == lock.fence
        assert store.break_lock("locked") is True
        assert store.lease_info("locked") is None
        with pytest.raises(exception.LockTimeout):
            store.set("locked", "after the break", lock=lock)
    finally:
        lock.release()
    assert store.get("locked") == "fenced"
    assert store.break_lock("locked") is False


def test_secure_member_wrong_password_names_user_and_host_never_the_password(
        etcd_secure_backend_config: dict[str, Any], etcd_secure: EtcdCluster) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    store = _store({**etcd_secure_backend_config, "password": wrong, "timeout": 1.0})
    for call in (lambda: store.get("k"), lambda: store.set("k", "v")):
        with returns_within(1.0 + SLACK), pytest.raises(exception.BackendUnavailable) as info:
            call()
        message = str(info.value)
        assert ROOT_USER in message and etcd_secure.members[0].address in message, message
        said = _everything_said(info.value)
        assert wrong not in said and ROOT_PASSWORD not in said
    assert _store(etcd_secure_backend_config).exists("k") is False


@pytest.mark.parametrize("fault", ["no client certificate", "another CA", "system CAs"])
def test_secure_member_fails_closed(fault: str, etcd_secure_backend_config: dict[str, Any],
                                    etcd_secure: EtcdCluster, tmp_path: Path) -> None:
    config = {**etcd_secure_backend_config, "timeout": 0.8}
    if fault == "no client certificate":
        del config["ssl_certfile"], config["ssl_keyfile"]
    elif fault == "another CA":
        config["ssl_ca_certs"] = str(EtcdCertificates(tmp_path / "other", "other CA").ca)
    else:  # no CA given: the system's trust store, which does not know the test CA
        del config["ssl_ca_certs"]
    prefix = _prefix()
    store = _store(config, prefix)
    attempts = [lambda: store.set("k", "must not land"), lambda: store.get("k"),
                lambda: store.get_lock("k", lock_wait_timeout=0.5).acquire(),
                lambda: store.set_multi({"a": 1, "b": 2})]
    for attempt in attempts:
        with returns_within(2 * 0.8 + SLACK), \
                pytest.raises(exception.BackendUnavailable) as info:
            attempt()
        assert etcd_secure.members[0].address in str(info.value), str(info.value)
        assert ROOT_PASSWORD not in _everything_said(info.value)
    good = _store(etcd_secure_backend_config, prefix)
    assert not good.exists("k") and not good.exists("a") and not good.exists("b")
    assert good.lease_info("k") is None


def test_secure_member_expired_token_is_renewed_transparently(
        etcd_secure_backend_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(etcd_secure_backend_config, lock_timeout=5)
    store.set("k", "first")
    backend = _backend(store)
    assert backend._auth_token
    sent = _count_posts(monkeypatch)
    for step in range(3):
        backend._auth_token = f"bogus-token-{step}"
        if step == 0:
            store.set("k", "second")
        elif step == 1:
            assert store.get("k") == "second"
        else:
            with store.get_lock("k") as lock:
                store.set("k", "third", lock=lock)
        assert backend._auth_token and not backend._auth_token.startswith("bogus")
    assert sent.count("auth/authenticate") == 3, sent
    assert store.get("k") == "third"


# -- 4. failover -----------------------------------------------------------------------

def test_failover_when_the_member_in_use_stops(etcd_clusters_factory: Any) -> None:
    """The backend uses the first endpoint, here the leader: stopping it needs an
    election; then the member it moved to is stopped too (once the first is back)."""
    cluster: EtcdCluster = etcd_clusters_factory(3)
    leader = cluster.leader()
    members = [leader, *[member for member in cluster.members if member is not leader]]
    timeout = 1.5
    config = _plain_config([member.address for member in members], timeout=timeout)
    prefix = _prefix()
    store = _store(config, prefix, lock_timeout=5, lock_wait_timeout=2)
    backend = _backend(store)
    store.set("k", "before")
    assert backend._current == 0
    expected = "before"
    for round_ in range(2):
        in_use = backend._current
        stopped = members[in_use]
        was_leader = stopped is cluster.leader()
        assert was_leader or round_ > 0
        stopped.stop()
        started = time.monotonic()
        assert store.get("k") == expected
        store.set("k", f"after {round_}")
        with store.get_lock("k") as lock:
            store.set("k", f"locked {round_}", lock=lock)
        elapsed = time.monotonic() - started
        assert backend._current != in_use
        assert elapsed < timeout + SLACK, elapsed
        print(f"\nfailover from the {'leader' if was_leader else 'follower'} in use: get, "
              f"set and a locked set took {elapsed * 1000:.0f} ms")
        expected = f"locked {round_}"
        stopped.start()  # keep a quorum for the next round: two of three running
        cluster.wait_healthy()
    assert _store(config, prefix).get("k") == "locked 1"


def test_closed_endpoints_before_a_live_member_are_skipped(etcd_cluster: EtcdCluster) -> None:
    endpoints = [*_closed_ports(2), *etcd_cluster.endpoints]
    store = _store(_plain_config(endpoints, timeout=2.0))
    with returns_within(0.5):
        store.set("k", "v")
    assert _backend(store)._current == 2
    with returns_within(0.5):
        assert store.get("k") == "v"
        with store.get_lock("k") as lock:
            store.set("k", "w", lock=lock)
    assert store.get("k") == "w"


def test_secure_cluster_failover_keeps_the_session(etcd_clusters_factory: Any,
                                                   etcd_certificates: EtcdCertificates) -> None:
    """Three members with TLS and auth: stopping the member in use fails over, and the
    auth token (replicated through Raft) is honoured by the others: no new login."""
    cluster: EtcdCluster = etcd_clusters_factory(3, tls=True, auth=(ROOT_USER, ROOT_PASSWORD))
    config = {"backing_store": "kvs.etcd", "endpoints": ",".join(cluster.endpoints),
              "timeout": 1.5, "username": ROOT_USER, "password": ROOT_PASSWORD,
              "ssl_ca_certs": str(etcd_certificates.ca),
              "ssl_certfile": str(etcd_certificates.client_cert),
              "ssl_keyfile": str(etcd_certificates.client_key)}
    store = _store(config, lock_timeout=5)
    backend = _backend(store)
    store.set("k", "before")
    token = backend._auth_token
    in_use = backend._current
    cluster.members[in_use].stop()
    started = time.monotonic()
    assert store.get("k") == "before"
    assert store.update("k", lambda value: value + " and after") == "before and after"
    elapsed = time.monotonic() - started
    assert backend._current != in_use
    assert elapsed < 2 * 1.5 + SLACK, elapsed
    assert backend._auth_token == token


def test_namespace_separates_stores_and_keeps_the_documented_layout(
        etcd_cluster: EtcdCluster) -> None:
    prefix = _prefix()
    config = _plain_config(etcd_cluster.endpoints)
    first = _store(config, prefix, namespace="kvs-test-one/", lock_timeout=5)
    second = _store(config, prefix, namespace="kvs-test-two/")
    first.set("k", "in one")
    assert not second.exists("k")
    second.set("k", "in two")
    assert first.get("k") == "in one"
    member = etcd_cluster.members[1]
    raw = member.call("/v3/kv/range", {"key": b64(f"kvs-test-one/v/{first.backend_key('k')}")})
    assert len(raw.get("kvs", [])) == 1, raw
    with first.get_lock("k") as lock:
        lease = member.call("/v3/kv/range", {"key": b64(f"kvs-test-one/l/{lock.lease_key}")})
        assert int(lease["kvs"][0]["create_revision"]) == lock.fence
        assert "kvs" not in member.call(
            "/v3/kv/range", {"key": b64(f"kvs-test-two/l/{lock.lease_key}")})
        assert second.lease_info("k") is None


def test_a_hung_member_in_use_is_left_within_the_timeout(etcd_cluster: EtcdCluster) -> None:
    """The member in use stops answering (a black hole: connections stay open): a read
    moves on after half the timeout, and later calls go to the next member at once."""
    first, *others = etcd_cluster.members
    with FaultProxy("127.0.0.1", first.client_port) as proxy:
        timeout = 1.0
        store = _store(_plain_config([proxy.address, *[m.address for m in others]],
                                     timeout=timeout), lock_timeout=5)
        backend = _backend(store)
        store.set("k", "v")
        assert backend._current == 0
        proxy.blackhole()
        with returns_within(timeout):
            assert store.get("k") == "v"
        assert backend._current == 1
        with returns_within(0.5):
            store.set("k", "w")
            with store.get_lock("k") as lock:
                store.set("k", "locked", lock=lock)
            assert store.get("k") == "locked"


# -- 5. fences -----------------------------------------------------------------------

def test_fences_increase_across_grants_and_a_leader_change_and_are_revisions(
        etcd_clusters_factory: Any) -> None:
    cluster: EtcdCluster = etcd_clusters_factory(3)
    config = _plain_config(cluster.endpoints, timeout=2.0)
    prefix = _prefix()
    store = _store(config, prefix, lock_timeout=5, lock_wait_timeout=3)
    other = _store(config, prefix, lock_timeout=5, lock_wait_timeout=3)
    fences: list[int] = []

    def grant(via: kvs.KeyValueStore, reader: EtcdMember) -> None:
        with via.get_lock("k") as lock:
            assert lock.fence is not None
            raw = _lease_kv(reader, lock.lease_key)
            assert int(raw["create_revision"]) == lock.fence, raw
            assert raw["value"] == b64(lock.token or "")
            info = via.lease_info("k")
            assert info is not None and info.fence == lock.fence
            via.set("k", len(fences), lock=lock)
            fences.append(lock.fence)

    for turn in range(4):
        grant(store if turn % 2 == 0 else other, cluster.members[turn % 3])
    old_leader = cluster.leader()
    old_leader.kill()
    new_leader = cluster.wait_for_leader(exclude=old_leader)
    alive = [member for member in cluster.members if member is not old_leader]
    for turn in range(4):
        grant(store if turn % 2 == 0 else other, alive[turn % 2])
    assert new_leader is not old_leader
    assert fences == sorted(set(fences)), fences
    assert store.get("k") == len(fences) - 1


# -- 6. waiters are woken by the watch ----------------------------------------------

def test_a_waiter_gets_the_lease_soon_after_release(etcd_cluster: EtcdCluster,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The waiter blocks in one watch for the whole hold, however long, and is woken
    by the release: one wait per hold (a poller would wait several times, or wake
    late for one of two hold times), and the lease handed over in well under 0.5 s."""
    config = _plain_config(etcd_cluster.endpoints, timeout=2.0)
    prefix = _prefix()
    holder = _store(config, prefix, lock_timeout=10)
    waiter = _store(config, prefix, lock_timeout=10, lock_wait_timeout=5)
    backend = _backend(waiter)
    assert waiter._require_path().leases is backend
    waits: list[tuple[float, float]] = []
    wait_for_release = backend.wait_for_release

    def timed_wait(key: str, timeout: float) -> None:
        began = time.monotonic()
        try:
            wait_for_release(key, timeout)
        finally:
            waits.append((began, time.monotonic()))

    monkeypatch.setattr(backend, "wait_for_release", timed_wait)
    latencies = []
    for hold in (0.3, 1.0, 0.3):
        lock = holder.get_lock("k").acquire()
        got: dict[str, Any] = {}

        def wait(got: dict[str, Any] = got) -> None:
            try:
                with waiter.get_lock("k") as taken:
                    got["at"] = time.monotonic()
                    got["fence"] = taken.fence
            except BaseException as error:  # reported below
                got["error"] = error

        waits.clear()
        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        time.sleep(hold)
        assert "at" not in got and "error" not in got, got
        released = time.monotonic()
        lock.release()
        thread.join(5)
        assert not thread.is_alive()
        assert "error" not in got, got
        assert lock.fence is not None and got["fence"] > lock.fence
        latencies.append(got["at"] - released)
        assert len(waits) == 1, f"{len(waits)} waits during a hold of {hold} s"
        assert waits[0][0] < released <= waits[0][1]
    print(f"\nlease hand-off to a waiter: {', '.join(f'{s * 1000:.1f}' for s in latencies)} ms")
    assert max(latencies) < 0.5, latencies


# -- 7. multi-key calls, sizes, lost replies ---------------------------------------

def test_multi_key_calls_longer_than_one_transaction(etcd_backend_config: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(etcd_backend_config)
    count = 2 * MAX_TXN_OPS + 44
    mapping = {f"key-{index}": {"index": index} for index in range(count)}
    sent = _count_posts(monkeypatch)
    store.set_multi(mapping)
    assert sent.count("kv/txn") == 3, sent
    assert store.get_multi(list(mapping)) == list(mapping.values())
    reordered = list(reversed(mapping))
    assert store.get_multi(reordered) == [mapping[key] for key in reordered]
    with pytest.raises(exception.NotFound) as info:
        store.get_multi([*mapping, "missing-1", "missing-2"])
    assert info.value.keys == ["missing-1", "missing-2"]
    store.delete_multi(list(mapping)[:200])
    remaining = list(mapping)[200:]
    assert store.get_multi(remaining) == [mapping[key] for key in remaining]
    assert not store.exists("key-0") and not store.exists("key-199")


def test_values_above_the_limit_are_refused_before_anything_is_sent(
        etcd_backend_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(etcd_backend_config, lock_timeout=5)
    store.set("big", "small")
    huge = "x" * (VALUE_LIMIT + 1)
    lock = store.get_lock("big").acquire()
    sent = _count_posts(monkeypatch)
    with pytest.raises(exception.ValueTooLarge) as info:
        store.set("big", huge)
    assert "big" in str(info.value), str(info.value)
    with pytest.raises(exception.ValueTooLarge) as info:
        store.set("big", huge, lock=lock)
    assert "big" in str(info.value)
    with pytest.raises(exception.ValueTooLarge) as info:
        store.set_multi({"fine-1": 1, "too-big": huge, "fine-2": 2})
    assert "too-big" in str(info.value), str(info.value)
    assert sent == [], sent
    monkeypatch.undo()
    lock.release()
    assert store.get("big") == "small"
    assert not store.exists("fine-1") and not store.exists("fine-2")
    # update() takes the lease first; a result above the limit writes nothing and
    # gives the lease back at once.
    with pytest.raises(exception.ValueTooLarge) as info:
        store.update("big", lambda value: value + huge)
    assert "big" in str(info.value)
    assert store.get("big") == "small"
    assert store.lease_info("big") is None
    # Just under the limit goes through (serialized bytes; leave room for the framing).
    store.set("big", "y" * (VALUE_LIMIT - 1024))
    assert len(store.get("big")) == VALUE_LIMIT - 1024


def test_set_multi_of_values_each_within_the_limit(etcd_backend_config: dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Each value is within the limit, together they are far above etcd's 1.5 MiB
    request limit: set_multi splits by size too, and every value lands."""
    store = _store(etcd_backend_config)
    near = VALUE_LIMIT - 1024
    mapping: dict[str, Any] = {f"big-{index}": str(index) * near for index in range(3)}
    mapping.update({f"small-{index}": index for index in range(10)})
    sent = _count_posts(monkeypatch)
    store.set_multi(mapping)
    assert 3 <= sent.count("kv/txn") <= 4, sent
    assert store.get_multi(list(mapping)) == list(mapping.values())


def test_a_plain_set_whose_reply_is_lost_is_not_resent(
        etcd_cluster: EtcdCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    first, *others = etcd_cluster.members
    with FaultProxy("127.0.0.1", first.client_port) as proxy:
        endpoints = [proxy.address, *[member.address for member in others]]
        prefix = _prefix()
        store = _store(_plain_config(endpoints, timeout=2.0), prefix)
        store.set("k", "before")
        assert _backend(store)._current == 0
        puts: list[int] = []
        post_once = EtcdBackend._post_once

        def drop_put_reply(self: EtcdBackend, index: int, path: str, body: Any,
                           read_timeout: float) -> Any:
            if path == "kv/put":
                puts.append(index)
                if index == 0:
                    proxy.drop_next_reply(close=True)
            return post_once(self, index, path, body, read_timeout)

        monkeypatch.setattr(EtcdBackend, "_post_once", drop_put_reply)
        with returns_within(2.0 + SLACK), pytest.raises(exception.BackendUnavailable) as info:
            store.set("k", "after")
        assert proxy.dropped == 1
        assert puts == [0], "the plain set was resent"
        assert "may still land" in str(info.value), str(info.value)
        assert proxy.address in str(info.value)
        monkeypatch.undo()
        # It did land; and the store goes on working (through the next member).
        assert _store(_plain_config([m.address for m in others]), prefix).get("k") == "after"
        assert store.get("k") == "after"
        store.set("k", "later")
        assert store.get("k") == "later"


# -- 8. a plain dogpile region -------------------------------------------------------

def test_a_plain_dogpile_region(etcd_cluster: EtcdCluster) -> None:
    arguments = {"endpoints": ",".join(etcd_cluster.endpoints), "timeout": 2.0,
                 "mutex_timeout": 5.0}
    first = make_region().configure("kvs.etcd", arguments=arguments)
    second = make_region().configure("kvs.etcd", arguments=dict(arguments))
    assert isinstance(first.backend, EtcdBackend) and first.backend is not second.backend
    key = f"dogpile-{uuid.uuid4().hex}"
    assert first.get(key) is NO_VALUE
    first.set(key, {"value": 1})
    assert first.get(key) == {"value": 1}
    assert second.get(key) == {"value": 1}  # the same cluster, another backend
    calls = []

    def create() -> str:
        calls.append(1)
        return "created"

    other = f"{key}-created"
    assert first.get_or_create(other, create) == "created"
    assert first.get_or_create(other, create) == "created"
    assert second.get_or_create(other, create) == "created"
    assert len(calls) == 1
    first.delete(key)
    assert second.get(key) is NO_VALUE

    mutex_key = f"{key}-mutex"
    one = first.backend.get_mutex(mutex_key)
    two = second.backend.get_mutex(mutex_key)
    assert one.acquire(wait=False) is True
    try:
        assert two.acquire(wait=False) is False
        assert one.locked()
    finally:
        one.release()
    assert two.acquire(wait=False) is True
    try:
        assert one.acquire(wait=False) is False
    finally:
        two.release()
    # A waiting acquire is woken by the release of the other instance's mutex.
    assert one.acquire(wait=False) is True
    threading.Timer(0.2, one.release).start()
    started = time.monotonic()
    assert two.acquire(wait=True) is True
    waited = time.monotonic() - started
    two.release()
    assert 0.15 < waited < 1.5, waited


# -- 9. a fork -----------------------------------------------------------------------

def test_a_forked_child_uses_the_parents_store(etcd_backend_config: dict[str, Any]) -> None:
    prefix = _prefix()
    store = _store(etcd_backend_config, prefix, lock_timeout=5, lock_wait_timeout=3)
    store.set("parent", "from the parent")
    backend = _backend(store)
    parent_session = backend._session_clients()[0].session
    assert backend._pid == os.getpid()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, and never return into pytest
        code = 1
        try:
            os.close(read_end)
            report: dict[str, Any] = {"read": store.get("parent")}
            store.set("child", "from the child")
            report["update"] = store.update("n", lambda value: value + 1, default=10)
            with store.get_lock("locked") as lock:
                store.set("locked", "child", lock=lock)
                report["fence"] = lock.fence
            report["multi"] = store.get_multi(["parent", "child", "locked"])
            report["pid_matches"] = backend._pid == os.getpid()
            report["new_session"] = backend._session_clients()[0].session is not parent_session
            os.write(write_end, json.dumps(report).encode())
            code = 0
        except BaseException as error:
            os.write(write_end, json.dumps({"error": repr(error)}).encode())
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 30)
        assert ready, "the child did not answer within 30 s"
        data = b""
        while chunk := os.read(read_end, 65536):
            data += chunk
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    report = json.loads(data)
    assert "error" not in report, report
    assert os.waitstatus_to_exitcode(status) == 0
    assert report["read"] == "from the parent"
    assert report["update"] == 11
    assert report["multi"] == ["from the parent", "from the child", "child"]
    assert report["pid_matches"] and report["new_session"], report
    # The parent's store still works, on its own session, and sees the child's writes.
    assert backend._session_clients()[0].session is parent_session
    assert store.get("child") == "from the child"
    assert store.update("n", lambda value: value + 1) == 12
    with store.get_lock("locked") as lock:
        assert lock.fence is not None and lock.fence > report["fence"]
