"""A small TCP proxy for network-fault tests: forward, drop one reply, delay, black-hole.

The proxy listens on a free loopback port and forwards every connection to
one upstream ``host:port`` (also loopback).  Each connection gets two pump
threads, one per direction.  Faults are switched at run time, for every
connection at once::

    with FaultProxy("127.0.0.1", server.port) as proxy:
        proxy.drop_next_reply()          # swallow the next server->client chunk
        proxy.delay_requests(1.5)        # hold each client->server chunk 1.5 s
        proxy.blackhole()                # discard everything, both ways
        proxy.forward()                  # back to normal

A "chunk" is what one ``recv`` returned.  Redis and memcached clients send a
request and wait for its reply before sending the next, so on an idle,
single-client connection one chunk is one reply.

Bounded: at most ``max_connections`` live connections (others are closed at
once), daemon threads only, every socket polled with a short timeout so that
``close()`` returns promptly.  Only loopback addresses are accepted.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import threading
import time
from types import TracebackType

_POLL = 0.05
_CHUNK = 65536


def _require_loopback(host: str) -> None:
    if not ipaddress.ip_address(socket.gethostbyname(host)).is_loopback:
        raise ValueError(f"FaultProxy only talks to loopback, not {host!r}")


class Mode(enum.Enum):
    FORWARD = "forward"
    BLACKHOLE = "blackhole"


class FaultProxy:
    """A loopback TCP proxy whose faults tests switch on and off."""

    def __init__(self, upstream_host: str, upstream_port: int, max_connections: int = 64) -> None:
        _require_loopback(upstream_host)
        self.upstream = (upstream_host, upstream_port)
        self.max_connections = max_connections
        self._lock = threading.Lock()
        self._mode = Mode.FORWARD
        self._request_delay = 0.0
        self._reply_delay = 0.0
        self._drop_replies = 0
        self._skip_replies = 0
        self._close_after_drop = False
        #: Replies swallowed so far (tests assert the fault really happened).
        self.dropped = 0
        self._closed = threading.Event()
        self._connections: list[tuple[socket.socket, socket.socket]] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(_POLL)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name="faultproxy-accept",
                                          daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- faults -------------------------------------------------------------

    def forward(self) -> None:
        """Forward everything at once, both ways (clears every fault)."""
        with self._lock:
            self._mode = Mode.FORWARD
            self._request_delay = self._reply_delay = 0.0
            self._drop_replies = self._skip_replies = 0

    def blackhole(self) -> None:
        """Discard all traffic both ways; connections stay open (a silent partition)."""
        with self._lock:
            self._mode = Mode.BLACKHOLE

    def drop_next_reply(self, close: bool = False, skip: int = 0) -> None:
        """Swallow the next server->client chunk; with ``close``, then cut that connection.

        Without ``close`` the client waits for its socket timeout; with it the
        client sees the connection reset at once.  Either way the server has
        already executed the request.  ``skip`` lets that many replies through
        first (to hit the second step of a two-step call).
        """
        with self._lock:
            self._drop_replies += 1
            self._close_after_drop = close
            self._skip_replies = skip

    def delay_requests(self, seconds: float) -> None:
        """Hold each client->server chunk ``seconds`` before passing it on (in order)."""
        with self._lock:
            self._request_delay = seconds

    def delay_replies(self, seconds: float) -> None:
        """Hold each server->client chunk ``seconds`` before passing it on (in order)."""
        with self._lock:
            self._reply_delay = seconds

    def cut_connections(self) -> None:
        """Reset every open connection (the client must reconnect)."""
        with self._lock:
            connections, self._connections = self._connections, []
        for pair in connections:
            for sock in pair:
                _close(sock)

    # -- plumbing -----------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                full = len(self._connections) >= self.max_connections
            if full:
                _close(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)  # upstream down: the client sees a reset, like a real outage
                continue
            for sock in (client, server):
                sock.settimeout(_POLL)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._connections.append((client, server))
            for source, target, reply in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(source, target, reply, (client, server)),
                                 name="faultproxy-pump", daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, reply: bool,
              pair: tuple[socket.socket, socket.socket]) -> None:
        try:
            while not self._closed.is_set():
                try:
                    data = source.recv(_CHUNK)
                except TimeoutError:
                    continue
                if not data:
                    break
                with self._lock:
                    mode = self._mode
                    delay = self._reply_delay if reply else self._request_delay
                    drop = reply and self._drop_replies > 0 and mode is Mode.FORWARD
                    if drop and self._skip_replies > 0:
                        self._skip_replies -= 1
                        drop = False
                    elif drop:
                        self._drop_replies -= 1
                        self.dropped += 1
                        cut = self._close_after_drop
                if mode is Mode.BLACKHOLE:
                    continue
                if drop:
                    if cut:
                        break
                    continue
                if delay:
                    time.sleep(delay)
                target.sendall(data)
        except OSError:
            pass
        finally:
            self._forget(pair)

    def _forget(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            if pair in self._connections:
                self._connections.remove(pair)
        for sock in pair:
            _close(sock)

    def close(self) -> None:
        """Stop accepting, cut every connection, and let the threads end."""
        self._closed.set()
        _close(self._listener)
        self.cut_connections()
        self._acceptor.join(2)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
