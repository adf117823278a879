"""kvs.redis validates its URL at configure() and never shows it (it may hold a password)."""

from __future__ import annotations

from typing import Any

import pytest

import kvs
from kvs import exception

SECRET = "s3cr3t-pw"
PORT = 1  # closed loopback port: nothing here connects, but be safe


@pytest.mark.parametrize("url", [
    f"redis://:{SECRET}@127.0.0.1:{PORT}/0?socket_timeout=soon",
    f"redis://:{SECRET}@127.0.0.1:{PORT}/0?socket_connect_timeout=later",
    f"redis://:{SECRET}@127.0.0.1:{PORT}/0?health_check_interval=x",
    f"rediss://:{SECRET}@127.0.0.1:{PORT}/0?ssl_cert_reqs=whenever",
    f"redis://:{SECRET}@127.0.0.1:99999999/0",
    f"redis://:{SECRET}@127.0.0.1:{PORT}/zero",
    f"redis://:{SECRET}@127.0.0.1:{PORT}/0".encode(),
])
def test_malformed_url_is_a_configuration_error_without_the_url(url: Any) -> None:
    store = kvs.get_key_value_store("url-check")
    with pytest.raises(exception.ConfigurationError) as info:
        store.configure("kvs.redis", url=url)
    assert info.value.context["option"] == "url"
    assert SECRET not in str(info.value) and SECRET not in repr(info.value.context)
    assert not store.is_configured


def test_well_formed_url_is_accepted_without_connecting() -> None:
    store = kvs.get_key_value_store("url-ok")
    store.configure("kvs.redis", url=f"redis://:{SECRET}@127.0.0.1:{PORT}/2?socket_timeout=0.5")
    assert store.is_configured
    backend: Any = store.region.actual_backend
    assert backend.endpoint == f"127.0.0.1:{PORT}"  # what messages name: never the password
