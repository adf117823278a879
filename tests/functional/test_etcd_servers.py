"""The etcd fixtures themselves: elections, replication, failover, TLS and auth, a proxy.

Everything goes through etcd's JSON gateway with ``requests``: keys and values
are base64, 64-bit integers are JSON strings, and fields at their default
value (a count of 0, an empty list) are left out.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from tests.fixtures import etcd_servers
from tests.fixtures.etcd import ROOT_PASSWORD, ROOT_USER, EtcdClusterFactory
from tests.fixtures.etcd_servers import EtcdCertificates, EtcdCluster, EtcdMember, b64, unb64
from tests.functional.faultproxy import FaultProxy


def _key() -> str:
    return f"kvs-fixture-test/{uuid.uuid4().hex}"


def _put(member: EtcdMember, key: str, value: str, token: str | None = None) -> None:
    member.call("/v3/kv/put", {"key": b64(key), "value": b64(value)}, token=token)


def _get(member: EtcdMember, key: str, token: str | None = None) -> str | None:
    """A linearizable read (the gateway's default: no ``serializable``)."""
    answer = member.call("/v3/kv/range", {"key": b64(key)}, token=token)
    kvs = answer.get("kvs", [])
    return unb64(kvs[0]["value"]).decode() if kvs else None


def test_cluster_elects_one_leader_on_free_loopback_ports(etcd_cluster: EtcdCluster) -> None:
    assert len(etcd_cluster.members) == 3
    leader = etcd_cluster.leader()
    assert leader in etcd_cluster.members
    for member in etcd_cluster.members:
        assert member.status()["leader"] == leader.member_id
    ports = {port for m in etcd_cluster.members for port in (m.client_port, m.peer_port)}
    assert len(ports) == 6 and not ports & {2379, 2380}
    assert etcd_cluster.endpoints == [f"127.0.0.1:{m.client_port}" for m in etcd_cluster.members]
    if etcd_servers.SHM.is_dir() and etcd_servers.SHM in etcd_cluster.members[0].data_dir.parents:
        assert all(m.data_dir.is_dir() for m in etcd_cluster.members)


def test_a_put_on_one_member_is_read_on_the_others(etcd_cluster: EtcdCluster) -> None:
    key = _key()
    _put(etcd_cluster.members[0], key, "written on member 0")
    for member in etcd_cluster.members[1:]:
        assert _get(member, key) == "written on member 0"
    assert "kvs" not in etcd_cluster.members[1].call("/v3/kv/range", {"key": b64(_key())})


def test_the_cluster_grants_one_second_leases(etcd_cluster: EtcdCluster) -> None:
    # The minimum TTL is 1.5 election timeouts (150 ms here), rounded up to 1 s.
    member = etcd_cluster.members[0]
    lease = member.call("/v3/lease/grant", {"TTL": 1})
    assert lease["TTL"] == "1"
    alive = member.call("/v3/lease/timetolive", {"ID": lease["ID"]})
    assert alive["grantedTTL"] == "1"
    member.call("/v3/lease/revoke", {"ID": lease["ID"]})


def test_killing_the_leader_elects_another_and_a_restart_rejoins(
        etcd_clusters_factory: EtcdClusterFactory) -> None:
    cluster = etcd_clusters_factory(3)
    old = cluster.leader()
    old_pid = old.pid
    old.kill()
    assert not old.running
    killed = time.monotonic()
    new = cluster.wait_for_leader(2.0, exclude=old)
    assert time.monotonic() - killed < 2.0
    assert new is not old
    key = _key()
    _put(new, key, "written without the old leader")

    old.start()
    assert old.running and old.pid != old_pid
    cluster.wait_healthy(5)
    assert old.status()["leader"] == cluster.leader().member_id
    assert _get(old, key) == "written without the old leader"


def test_a_paused_leader_is_replaced_and_follows_once_resumed(
        etcd_clusters_factory: EtcdClusterFactory) -> None:
    cluster = etcd_clusters_factory(3)
    old = cluster.leader()
    old.pause()
    try:
        new = cluster.wait_for_leader(2.0, exclude=old)
        key = _key()
        _put(new, key, "written while the old leader hung")
    finally:
        old.resume()
    cluster.wait_healthy(5)
    assert _get(old, key) == "written while the old leader hung"

    data_dirs = [member.data_dir for member in cluster.members]
    cluster.stop()
    assert not any(member.running for member in cluster.members)
    assert not any(path.exists() for path in data_dirs)


def test_the_secure_member_refuses_a_client_without_a_certificate(
        etcd_secure: EtcdCluster, etcd_certificates: EtcdCertificates) -> None:
    member = etcd_secure.members[0]
    assert member.client_url.startswith("https://")
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(f"{member.client_url}/v3/kv/range", json={"key": b64("k")},
                      verify=str(etcd_certificates.ca), timeout=2)


def test_the_secure_member_refuses_a_request_without_a_token(etcd_secure: EtcdCluster) -> None:
    response = etcd_secure.members[0].post("/v3/kv/range", {"key": b64("k")})
    assert response.status_code == 400
    assert "user name is empty" in response.json()["error"]
    bad = etcd_secure.members[0].post("/v3/kv/range", {"key": b64("k")}, token="forged.1")
    assert bad.status_code == 401 and "invalid auth token" in bad.json()["error"]
    wrong = etcd_secure.members[0].post("/v3/auth/authenticate",
                                        {"name": ROOT_USER, "password": "not it"})
    assert wrong.status_code == 400 and "authentication failed" in wrong.json()["error"]


def test_the_secure_member_accepts_a_certificate_and_a_token(etcd_secure: EtcdCluster) -> None:
    member = etcd_secure.members[0]
    token = etcd_secure.authenticate(auth=(ROOT_USER, ROOT_PASSWORD))
    key = _key()
    _put(member, key, "secret", token=token)
    assert _get(member, key, token=token) == "secret"


def test_the_gateway_refuses_a_client_certificate_with_a_common_name(
        etcd_secure: EtcdCluster, etcd_certificates: EtcdCertificates) -> None:
    # Why EtcdCertificates issues its client certificate without one.
    member = etcd_secure.members[0]
    token = etcd_secure.authenticate()
    response = requests.post(
        f"{member.client_url}/v3/kv/range", json={"key": b64("k")}, timeout=2,
        headers={"Authorization": token}, verify=str(etcd_certificates.ca),
        cert=(str(etcd_certificates.cn_client_cert), str(etcd_certificates.cn_client_key)))
    assert response.status_code == 400
    assert "CommonName" in response.text


def test_the_proxy_forwards_blackholes_and_restores(etcd_cluster: EtcdCluster) -> None:
    member = etcd_cluster.members[0]
    key = _key()
    _put(member, key, "through the proxy")
    body = {"key": b64(key)}
    with FaultProxy("127.0.0.1", member.client_port) as proxy, requests.Session() as session:
        url = f"http://{proxy.address}/v3/kv/range"
        answer = session.post(url, json=body, timeout=2)
        assert unb64(answer.json()["kvs"][0]["value"]) == b"through the proxy"

        proxy.blackhole()
        with pytest.raises(requests.exceptions.Timeout):
            session.post(url, json=body, timeout=0.3)  # the open connection
        with pytest.raises(requests.exceptions.Timeout):
            requests.post(url, json=body, timeout=0.3)  # a new one: accepted, then silence

        proxy.forward()
        answer = requests.post(url, json=body, timeout=2)
        assert unb64(answer.json()["kvs"][0]["value"]) == b"through the proxy"
