"""kvs.memcached without a server: keys, expiry times, meta replies, arguments."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("pymemcache")

from kvs import exception
from kvs.backends import memcached
from kvs.backends.memcached import MemcachedBackend, expire_time, memcached_key


def _memcached_safe(key: str) -> bool:
    data = key.encode("ascii")  # raises for non-ASCII
    return 0 < len(data) <= 250 and all(0x21 <= byte <= 0x7E for byte in data)


@given(st.text(max_size=400))
def test_every_key_becomes_memcached_safe_with_room_for_internal_prefixes(key: str) -> None:
    safe = memcached_key(key)
    assert _memcached_safe(safe)
    for internal in MemcachedBackend.item_keys(key):
        assert _memcached_safe(internal)
    assert memcached_key(key) == safe  # deterministic


@given(st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7D), min_size=1,
               max_size=247))
def test_safe_keys_pass_unchanged(key: str) -> None:
    assert memcached_key(key) == key


@pytest.mark.parametrize("key", [
    "a" * 248, "a" * 300, "with space", "tab\tkey", "new\nline", "nul\x00", "\x7f",
    "caf\u00e9", "~l:looks-internal", "~h:looks-hashed", "",
])
def test_unsafe_long_or_reserved_keys_are_hashed(key: str) -> None:
    safe = memcached_key(key)
    assert safe.startswith("~h:") and _memcached_safe(safe)


def test_hashed_keys_do_not_collide() -> None:
    keys = ["a" * 248, "a" * 249, "a b", "a  b", "~x", "~y", "caf\u00e9", "cafe\u0301"]
    assert len({memcached_key(key) for key in keys}) == len(keys)
    # A user key equal to some hashed form is itself hashed again.
    hashed = memcached_key("a b")
    assert memcached_key(hashed) != hashed


@pytest.mark.parametrize(("ttl", "expected"), [
    (None, 0), (0.001, 2), (0.5, 2), (1, 2), (1.0001, 3), (59.2, 61),
    (30 * 24 * 3600 - 1, 30 * 24 * 3600),
])
def test_expire_time_rounds_up_and_adds_the_clock_tick(ttl: float | None,
                                                        expected: int) -> None:
    assert expire_time(ttl) == expected


def test_expire_time_beyond_thirty_days_is_absolute() -> None:
    ttl = 31 * 24 * 3600
    before = int(time.time())
    value = expire_time(ttl)
    assert before + ttl + 1 <= value <= int(time.time()) + ttl + 1


def test_meta_replies_are_split_by_length_not_by_line() -> None:
    raw = b"VA 4 c12 t-1\r\na\r\nb\r\nEN\r\nHD\r\nVA 0\r\n\r\n"
    replies = memcached.parse_meta_replies(raw)
    assert [reply.code for reply in replies] == [b"VA", b"EN", b"HD", b"VA"]
    assert replies[0].value == b"a\r\nb" and replies[0].int_flag(b"t") == -1
    assert replies[0].flags[b"c"] == b"12"
    assert replies[3].value == b""


def test_meta_error_reply_raises() -> None:
    from pymemcache.exceptions import MemcacheUnknownError

    with pytest.raises(MemcacheUnknownError):
        memcached.parse_meta_replies(b"SERVER_ERROR out of memory\r\n")


def test_unknown_argument_is_refused() -> None:
    with pytest.raises(exception.ConfigurationError) as info:
        MemcachedBackend({"servers": ["127.0.0.1:1"], "dead_retry": 3})
    assert "dead_retry" in str(info.value) and "dead_timeout" in str(info.value)


def test_ini_text_arguments_are_parsed() -> None:
    backend = MemcachedBackend({
        "servers": "127.0.0.1:1, [::1]:2, unix:/tmp/mc.sock", "use_pooling": "yes",
        "max_pool_size": "4", "timeout": "0.5", "retry_attempts": "0",
        "memcached_expire_time": "60", "lease_safety_margin": "1.5",
    })
    assert [server.name for server in backend.servers] == [
        "127.0.0.1:1", "[::1]:2", "unix:/tmp/mc.sock"]
    assert backend.options["use_pooling"] is True and backend.options["timeout"] == 0.5


@pytest.mark.parametrize("servers", [[], ["127.0.0.1:notaport"], ["a:1", "a:1"]])
def test_bad_server_lists_are_refused(servers: list[str]) -> None:
    with pytest.raises(exception.ConfigurationError) as info:
        MemcachedBackend({"servers": servers})
    assert info.value.context["option"] == "servers"


def test_tls_files_that_cannot_load_name_the_option(tmp_path: Path) -> None:
    secret_path = tmp_path / "missing-ca.pem"
    with pytest.raises(exception.ConfigurationError) as info:
        MemcachedBackend({"servers": ["127.0.0.1:1"], "tls_ca_certs": str(secret_path)})
    assert info.value.context["option"] == "tls_ca_certs"
    with pytest.raises(exception.ConfigurationError) as info:
        MemcachedBackend({"servers": ["127.0.0.1:1"], "tls_keyfile": str(secret_path)})
    assert info.value.context["option"] == "tls_keyfile"


def test_clients_never_use_noreply() -> None:
    """The pymemcache trap: with its default noreply, add() always reports success."""
    for pooling in (False, True):
        backend = MemcachedBackend({"servers": ["127.0.0.1:1"], "use_pooling": pooling,
                                    "retry_attempts": 0})
        client = backend.servers[0].client()
        assert client.default_noreply is False


def test_keys_spread_over_servers_deterministically() -> None:
    servers = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    first = MemcachedBackend({"servers": servers})
    second = MemcachedBackend({"servers": list(reversed(servers))})
    keys = [f"store:key-{index}" for index in range(300)]
    placement = [first.server_for(key).name for key in keys]
    assert placement == [second.server_for(key).name for key in keys]
    counts = {name: placement.count(name) for name in servers}
    assert all(count > 50 for count in counts.values()), counts
