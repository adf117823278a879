"""Refuse any connection a docs example makes to a server the tests did not start.

An audit hook (``sys.addaudithook``) checks every ``socket.connect``,
``socket.sendto`` and name lookup while a guard is active: TCP/UDP is allowed
only to a loopback address on one of the allowed ports, a unix socket only
under one of the allowed directories, and names only for loopback hosts.
Anything else raises ``PermissionError`` before a packet is sent.

The pytest process activates it with :func:`guarded`; the ``kvs`` commands
that shell examples run are started through :data:`BOOTSTRAP`, which
activates it from the ``KVS_DOCS_NETGUARD`` environment variable.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import sys
from collections.abc import Iterable, Iterator
from typing import Any

ENV = "KVS_DOCS_NETGUARD"
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}

#: ``python -c BOOTSTRAP args...`` runs ``kvs args...`` under the guard.
BOOTSTRAP = ("import sys; from tests.docs import netguard; netguard.install_from_env(); "
             "from kvs.cli import main; sys.exit(main())")

_policy: dict[str, Any] | None = None
_installed = False


def _loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check_address(address: Any) -> None:
    assert _policy is not None
    if isinstance(address, (str, bytes)):
        path = os.path.abspath(os.fsdecode(address))
        if not any(path.startswith(d.rstrip("/") + "/") for d in _policy["dirs"]):
            raise PermissionError(f"docs example tried to connect to unix socket {path}")
        return
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), int(address[1])
        if not _loopback(host) or port not in _policy["ports"]:
            raise PermissionError(f"docs example tried to connect to {host}:{port}, "
                                  "not a server the tests started")


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _policy is None:
        return
    if event == "socket.connect":
        sock, address = args
        if getattr(sock, "family", None) in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            _check_address(address)
    elif event == "socket.sendto":
        _check_address(args[1])
    elif event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex"):
        host = args[0]
        host = host.decode() if isinstance(host, bytes) else host
        if host is not None and not _loopback(str(host)):
            raise PermissionError(f"docs example tried to look up host {host!r}")


def _install() -> None:
    global _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True


def policy(ports: Iterable[int], dirs: Iterable[str]) -> dict[str, Any]:
    return {"ports": sorted(set(ports)), "dirs": [os.path.abspath(d) for d in dirs]}


@contextlib.contextmanager
def guarded(ports: Iterable[int], dirs: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Activate the guard in this process for the block."""
    global _policy
    _install()
    saved = _policy
    _policy = policy(ports, dirs)
    _policy["ports"] = set(_policy["ports"])
    try:
        yield _policy
    finally:
        _policy = saved


def environment(ports: Iterable[int], dirs: Iterable[str]) -> dict[str, str]:
    """The environment variable that activates the guard in a child process."""
    return {ENV: json.dumps(policy(ports, dirs))}


def install_from_env() -> None:
    global _policy
    raw = os.environ.get(ENV)
    if not raw:
        raise SystemExit(f"{ENV} is not set: refusing to run a docs example unguarded")
    loaded = json.loads(raw)
    _policy = {"ports": set(loaded["ports"]), "dirs": loaded["dirs"]}
    _install()
