"""No secret ever leaves kvs: one sweep over logs, errors, repr() and CLI output.

Secrets under test: a Redis ACL password given as a backend argument and inside
a URL, a wrong password, and ``secret_key``.  The test drives configuration
from an ini file, normal use, lease expiry, tampering, authentication failure,
an unreachable server and malformed config, with every logger at DEBUG, and
collects everything a user or an operator could see:

* every log record (message, arguments and traceback) of every logger,
  including oslo.config's ``log_opt_values`` dump that services run at start;
* ``str``, ``repr`` and the formatted traceback chain of every exception;
* ``repr`` of stores, locks, regions and backends;
* the output of the ``kvs`` command (run in-process), with ``--debug``.

Not one secret may appear in any of it.  (The ``kvs`` command's own secret
tests, per sub-command and as a subprocess, are in tests/functional/test_cli.py.)
"""

from __future__ import annotations

import io
import logging
import textwrap
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import kvs
import kvs.testing
from kvs import cli, exception
from tests.fixtures.redis import ACL_PASSWORD, ACL_USER
from tests.fixtures.redis_servers import RedisServer, free_port

SECRET_KEY = "mac-Secret-7f3a9c-never-shown"
WRONG_PASSWORD = "Wr0ng-pa55word-never-shown"


class Evidence:
    """Everything collected so far, and the secrets that must not be in it."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []
        self.secrets = [ACL_PASSWORD, SECRET_KEY, WRONG_PASSWORD]

    def add(self, where: str, text: object) -> None:
        self.texts.append((where, str(text)))

    def error(self, where: str, error: BaseException) -> None:
        self.add(f"{where}: str", error)
        self.add(f"{where}: repr", repr(error))
        self.add(f"{where}: traceback",
                 "".join(traceback.format_exception(type(error), error, error.__traceback__)))

    def expect_error(self, where: str, call: Callable[[], Any],
                     kind: type[BaseException] = exception.KVSError) -> BaseException:
        with pytest.raises(kind) as info:
            call()
        self.error(where, info.value)
        return info.value

    def leaks(self) -> list[str]:
        return [f"{secret!r} in {where}" for where, text in self.texts
                for secret in self.secrets if secret in text]


def write_config(directory: Path, text: str, name: str = "kvs.conf") -> str:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_no_secret_in_logs_errors_repr_or_cli(tmp_path: Path, redis_acl_server: RedisServer,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, kvs, dogpile, redis-py, oslo.config
    evidence = Evidence()
    port = redis_acl_server.port
    run = uuid.uuid4().hex[:8]
    config = write_config(tmp_path, f"""\
        [store:byargs-{run}]
        backend = kvs.redis
        backend_argument = host:127.0.0.1
        backend_argument = port:{port}
        backend_argument = username:{ACL_USER}
        backend_argument = password:{ACL_PASSWORD}
        security_strategy = mac
        secret_key = {SECRET_KEY}
        lock_timeout = 0.2

        [store:byurl-{run}]
        backend = kvs.redis
        backend_argument = url:redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}/0
        key_prefix = byargs-{run}
        security_strategy = mac
        secret_key = {SECRET_KEY}

        [store:wrong-{run}]
        backend = kvs.redis
        backend_argument = url:redis://{ACL_USER}:{WRONG_PASSWORD}@127.0.0.1:{port}/0

        [store:down-{run}]
        backend = kvs.redis
        backend_argument = url:redis://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{free_port()}/0
        backend_argument = socket_connect_timeout:0.5

        [store:local-{run}]
        backend = kvs.sqlite
        backend_argument = filename:{tmp_path / 'local.sqlite3'}
        security_strategy = encrypt
        secret_key = {SECRET_KEY}
        serializer = pickle
        """)

    with kvs.testing.isolated_stores():
        conf = kvs.load_config([config])
        conf.log_opt_values(logging.getLogger("service.startup"), logging.DEBUG)
        stores = kvs.configure_stores(conf)
        byargs, byurl = stores[f"byargs-{run}"], stores[f"byurl-{run}"]
        wrong, down, local = (stores[f"wrong-{run}"], stores[f"down-{run}"],
                              stores[f"local-{run}"])

        # Normal use, including a lease that runs out and a late release.
        byargs.set("k", {"v": 1})
        assert byurl.get("k") == {"v": 1}
        assert byurl.update("k", lambda value: {"v": value["v"] + 1}) == {"v": 2}
        lock = byargs.get_lock("k").acquire()
        evidence.add("repr(lock)", repr(lock))
        time.sleep(0.3)
        evidence.expect_error("expired lock", lambda: byargs.set("k", 0, lock=lock),
                              exception.LockTimeout)
        lock.release()
        local.set("k", b"bytes")
        assert local.get("k") == b"bytes"

        # Tampering: a value forged by someone who can write to the server.
        admin = redis_acl_server.client()
        try:
            admin.set(byargs.backend_key("k"), b"forged")  # the value, as dogpile names it
        finally:
            admin.close()
        evidence.expect_error("tampered", lambda: byurl.get("k"), exception.TamperedValue)

        # Failures that involve the credentials themselves.
        evidence.expect_error("wrong password", lambda: wrong.get("k"),
                              exception.BackendUnavailable)
        evidence.expect_error("wrong password lock", lambda: wrong.get_lock("k").acquire(),
                              exception.BackendUnavailable)
        evidence.expect_error("server down", lambda: down.get("k"),
                              exception.BackendUnavailable)
        evidence.expect_error("ping down", down.ping, exception.BackendUnavailable)

        for store in stores.values():
            evidence.add(f"repr({store.name})", repr(store))
            evidence.add(f"repr(region {store.name})", repr(store.region))
            evidence.add(f"repr(backend {store.name})", repr(store.region.actual_backend))
            evidence.add(f"repr(proxy {store.name})", repr(store.region.backend))

    # Malformed configuration around secrets.
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store(f"bad-{run}")
        evidence.expect_error("bad strategy", lambda: store.configure(
            "kvs.memory", security_strategy="rot13", secret_key=SECRET_KEY))
        evidence.expect_error("bad scheme", lambda: store.configure(
            "kvs.redis", url=f"http://{ACL_USER}:{ACL_PASSWORD}@127.0.0.1:{port}/0"))
        evidence.expect_error("bad password type", lambda: store.configure(
            "kvs.redis", host="127.0.0.1", port=port, password=[ACL_PASSWORD]))
        evidence.expect_error("url and host", lambda: store.configure(
            "kvs.redis", url=f"redis://:{ACL_PASSWORD}@127.0.0.1:{port}/0", host="127.0.0.1"))
    bad_config = write_config(tmp_path, f"""\
        [store:bad-{run}]
        backend = kvs.redis
        backend_argument = password:{ACL_PASSWORD}
        backend_argument = password:{WRONG_PASSWORD}
        secret_key = {SECRET_KEY}
        lock_timeout = {ACL_PASSWORD}
        """, name="bad.conf")
    evidence.expect_error("malformed ini",
                          lambda: kvs.configure_stores(kvs.load_config([bad_config])))

    # The kvs command, in this process, so its log records land in caplog too.
    for args in (["stores"], ["--format", "json", "stores"], ["check"],
                 ["--debug", "get", f"byargs-{run}", "k"], ["--debug", "get", f"wrong-{run}", "k"],
                 ["--debug", "get", f"down-{run}", "k"], ["--debug", "lock", f"byurl-{run}", "x",
                                                          "--hold", "0"]):
        out, err = io.StringIO(), io.StringIO()
        with kvs.testing.isolated_stores():
            status = cli.main(["--config-file", config, *args], stdout=out, stderr=err)
        evidence.add(f"kvs {' '.join(args)} (status {status}) stdout", out.getvalue())
        evidence.add(f"kvs {' '.join(args)} stderr", err.getvalue())

    for record in caplog.records:
        evidence.add(f"log {record.name}", record.getMessage())
        if record.exc_info and record.exc_info[1] is not None:
            evidence.error(f"log {record.name} exc_info", record.exc_info[1])
    evidence.add("caplog.text", caplog.text)

    assert evidence.leaks() == []
    # The sweep saw the places where a leak would show (the test can fail).
    seen = "\n".join(text for _where, text in evidence.texts)
    assert f"127.0.0.1:{port}" in seen  # hosts are named...
    assert "authentication" in seen and "TamperedValue" in seen
    assert "secret_key" in seen or "backend_argument" in seen  # ...options by name
    assert any(record.name == "service.startup" for record in caplog.records)
