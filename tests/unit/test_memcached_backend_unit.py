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


# -- the hot path's own wire code (get, get_multi, set, set_multi) -------------

class ScriptedSocket:
    """A connected socket whose replies arrive in the given chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)

    def recv(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


def _pieces(data: bytes, size: int) -> list[bytes]:
    return [data[start:start + size] for start in range(0, len(data), size)]


#: Two values whose bytes imitate the protocol: only the lengths may split them.
TRICKY_REPLY = (b"VALUE a 0 11\r\nx\r\nEND\r\nEND\r\n"
                b"VALUE b 5 13\r\nVALUE c 0 1\r\n\r\nEND\r\n")


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 64])
def test_get_replies_are_split_by_length_whatever_the_chunks(size: int) -> None:
    found = memcached._read_values(ScriptedSocket(_pieces(TRICKY_REPLY, size)), 2)
    assert found == {b"a": b"x\r\nEND\r\nEND", b"b": b"VALUE c 0 1\r\n"}


_ITEM_BYTES = st.sampled_from([b"\r", b"\n", b"\r\n", b"END", b"END\r\n", b"VALUE k 0 1\r\n",
                               b" ", b"x", b"\x00", b"VALUE"])


@given(items=st.dictionaries(st.text("abcVALUE~:", min_size=1, max_size=8).map(str.encode),
                             st.lists(_ITEM_BYTES, max_size=6).map(b"".join), max_size=6),
       cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=12))
def test_get_replies_of_any_values_in_any_reads(items: dict[bytes, bytes],
                                               cuts: list[int]) -> None:
    reply = b"".join(b"VALUE %b %d %d\r\n%b\r\n" % (key, index, len(value), value)
                     for index, (key, value) in enumerate(items.items())) + b"END\r\n"
    pieces, start = [], 0
    for cut in cuts:
        if start < len(reply):
            pieces.append(reply[start:start + cut])
            start += cut
    pieces.append(reply[start:])
    pieces = [piece for piece in pieces if piece]
    assert memcached._read_values(ScriptedSocket(pieces), len(items)) == items
    if len(items) == 1:
        ((key, value),) = items.items()
        assert memcached._read_value(ScriptedSocket(pieces), key) == value
    found: dict[bytes, bytes] = {}
    assert memcached._scan_values(reply, found) == -1 and found == items
    assert memcached._split_values(reply) in (None, items)


def test_whole_replies_without_crlf_in_values_are_split_at_once() -> None:
    reply = b"VALUE a 0 1\r\nx\r\nVALUE b 3 0\r\n\r\nEND\r\n"
    assert memcached._split_values(reply) == {b"a": b"x", b"b": b""}
    assert memcached._split_values(b"END\r\n") == {}
    # A CRLF inside a value, a reply cut inside a value, a header of another shape:
    # left to _scan_values.
    assert memcached._split_values(b"VALUE a 0 3\r\nx\r\n\r\nEND\r\n") is None
    assert memcached._split_values(b"VALUE a 0 9\r\nx\r\nEND\r\n") is None
    assert memcached._split_values(b"VALUE a 0 1 7\r\nx\r\nEND\r\n") is None
    assert memcached._split_values(b"VALUE a 0 z\r\nx\r\nEND\r\n") is None


def test_a_one_key_get_reads_its_own_key_only() -> None:
    reply = b"VALUE other 0 1\r\nv\r\nEND\r\n"
    assert memcached._read_value(ScriptedSocket([reply]), b"k") is None
    assert memcached._read_value(ScriptedSocket([b"END\r\n"]), b"k") is None
    assert memcached._read_value(ScriptedSocket([reply[:9], reply[9:]]), b"other") == b"v"


def test_a_miss_is_an_empty_reply() -> None:
    assert memcached._read_values(ScriptedSocket([b"END\r\n"]), 1) == {}
    assert memcached._read_values(ScriptedSocket([b"EN", b"D\r", b"\n"]), 1) == {}


@pytest.mark.parametrize("reply, error", [
    (b"VALUE a 0 1\r\nx\r\nEND\r\nEND\r\n", "MemcacheUnknownError"),  # bytes after END
    (b"VALUE a 0 1\r\nxy\r\nEND\r\n", "MemcacheUnknownError"),  # value longer than said
    (b"VALUE a 0 -1\r\nEND\r\n", "MemcacheUnknownError"),
    (b"VALUE a 0\r\nEND\r\n", "MemcacheUnknownError"),
    (b"SERVER_ERROR out of memory\r\n", "MemcacheServerError"),
    (b"CLIENT_ERROR bad command line format\r\n", "MemcacheClientError"),
    (b"ERROR\r\n", "MemcacheUnknownCommandError"),
    (b"STORED\r\n", "MemcacheUnknownError"),
])
def test_unexpected_get_replies_raise(reply: bytes, error: str) -> None:
    with pytest.raises(Exception) as info:
        memcached._read_values(ScriptedSocket([reply]), 1)
    assert type(info.value).__name__ == error


def test_a_connection_closed_mid_reply_raises() -> None:
    from pymemcache.exceptions import MemcacheUnexpectedCloseError

    with pytest.raises(MemcacheUnexpectedCloseError):
        memcached._read_values(ScriptedSocket([b"VALUE a 0 10\r\nabc"]), 1)
    with pytest.raises(MemcacheUnexpectedCloseError):
        memcached._read_stored(ScriptedSocket([b"STORED\r\n"]), 2)


def test_set_replies_count_what_was_not_stored() -> None:
    from pymemcache.exceptions import MemcacheServerError

    assert memcached._read_stored(ScriptedSocket([b"STORED\r\n"]), 1) == 0
    replies = _pieces(b"STORED\r\nNOT_STORED\r\nSTORED\r\n", 3)
    assert memcached._read_stored(ScriptedSocket(replies), 3) == 1
    with pytest.raises(MemcacheServerError) as info:
        memcached._read_stored(ScriptedSocket([b"STORED\r\nSERVER_ERROR object too large "
                                               b"for cache\r\n"]), 2)
    assert b"too large" in info.value.args[0]


class ScriptedClient:
    """Stands in for this thread's pymemcache Client: each connection gets the next script."""

    def __init__(self, scripts: list[list[bytes] | Exception]) -> None:
        self.scripts = list(scripts)
        self.sock: ScriptedSocket | None = None
        self.sockets: list[ScriptedSocket] = []
        self.closed = 0

    def _connect(self) -> None:
        script = self.scripts.pop(0)
        if isinstance(script, Exception):
            raise script
        self.sock = ScriptedSocket(script)
        self.sockets.append(self.sock)

    def close(self) -> None:
        if self.sock is not None:
            self.closed += 1
        self.sock = None


def _scripted(scripts: list[list[bytes] | Exception], **arguments: object
              ) -> tuple[MemcachedBackend, ScriptedClient]:
    backend = MemcachedBackend({"servers": ["127.0.0.1:1"], "retry_delay": 0, **arguments})
    client = ScriptedClient(scripts)
    backend.servers[0]._local.raw = client
    return backend, client


def test_hot_calls_send_safe_keys_and_wait_for_every_reply() -> None:
    key = "store:caf\u00e9 key"  # not memcached-safe: hashed
    wire = memcached_key(key).encode()
    backend, client = _scripted([[b"STORED\r\n", b"VALUE " + wire + b" 0 2\r\nhi\r\nEND\r\n",
                                  b"END\r\n", b"STORED\r\nSTORED\r\n"]])
    backend.plain_set(key, b"hi", None)
    assert backend.get_serialized(key) == b"hi"
    assert backend.get_serialized_multi([key, "other"]) == [memcached.NO_VALUE] * 2
    backend.plain_set_multi({"a": b"1", "b": b"22"}, 10)
    sent = client.sockets[0].sent
    assert sent[0] == b"set " + wire + b" 0 0 2\r\nhi\r\n"  # flags 0, no noreply
    assert sent[1] == b"get " + wire + b"\r\n"
    assert sent[2] == b"get " + wire + b" other\r\n"
    assert sent[3] == b"set a 0 11 1\r\n1\r\nset b 0 11 2\r\n22\r\n"  # ceil(10) + 1
    assert client.closed == 0


def test_a_broken_connection_is_retried_on_a_fresh_one() -> None:
    backend, client = _scripted([[b""], [b"VALUE k 0 1\r\nv\r\nEND\r\n"]])
    assert backend.get_serialized("k") == b"v"
    assert client.closed == 1 and len(client.sockets) == 2

    backend, client = _scripted([[b""]], retry_attempts=0)
    with pytest.raises(exception.BackendUnavailable) as info:
        backend.get_serialized("k")
    assert "127.0.0.1:1" in str(info.value) and client.sock is None


def test_a_bad_reply_closes_the_connection_and_names_the_server() -> None:
    backend, client = _scripted([[b"VALUE k 0 1\r\nvv\r\nEND\r\n"], [b"END\r\n"]])
    with pytest.raises(exception.BackendUnavailable) as info:
        backend.get_serialized("k")  # not retried: the reply came, and was wrong
    assert "127.0.0.1:1" in str(info.value)
    assert client.sock is None
    assert backend.get_serialized("k") is memcached.NO_VALUE  # a fresh connection


def test_a_refused_oversized_set_is_value_too_large() -> None:
    backend, _ = _scripted([[b"SERVER_ERROR object too large for cache\r\n"]])
    with pytest.raises(exception.ValueTooLarge) as info:
        backend.plain_set("k", b"v", None)
    assert info.value.context["host"] == "127.0.0.1:1"


def test_a_timeout_is_not_retried() -> None:
    backend, client = _scripted([TimeoutError("timed out"), [b"END\r\n"]])
    with pytest.raises(exception.BackendUnavailable) as info:
        backend.get_serialized("k")
    assert "TimeoutError" in str(info.value) and len(client.scripts) == 1


def test_an_unstored_set_is_not_reported_as_written() -> None:
    backend, _ = _scripted([[b"NOT_STORED\r\n", b"STORED\r\nNOT_STORED\r\n"]])
    with pytest.raises(exception.BackendUnavailable):
        backend.plain_set("k", b"v", None)
    with pytest.raises(exception.BackendUnavailable) as info:
        backend.plain_set_multi({"a": b"1", "b": b"2"}, None)
    assert "1 of 2" in str(info.value)


def test_remembered_routes_follow_the_ring_and_stay_bounded() -> None:
    backend = MemcachedBackend({"servers": ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]})
    for index in range(memcached._ROUTES_KEPT + 5000):
        key = f"store:k{index}"
        wire, server = backend._new_route(key)
        assert wire == memcached_key(key).encode() and server is backend.server_for(key)
    assert len(backend._routes) <= memcached._ROUTES_KEPT
    assert f"store:k{memcached._ROUTES_KEPT + 4999}" in backend._routes
    long_key = "k" * 300
    assert backend._new_route(long_key)[0] == memcached_key(long_key).encode()
    assert long_key not in backend._routes
