"""Servers and libraries older than kvs needs are refused, naming both versions.

No Redis older than 6 can be installed from this machine's package archive, so
the Redis case runs on fakeredis with its INFO reply replaced; the SQLite case
replaces the version the sqlite3 module reports.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import fakeredis
import pytest

import kvs
from kvs import exception


def test_redis_older_than_6_is_refused_at_the_first_lease_call(
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())

    def info(section: str | None = None, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"redis_version": "5.0.14"}

    monkeypatch.setattr(client, "info", info)
    store = kvs.get_key_value_store("old-redis")
    store.configure("kvs.redis", client=client)
    with pytest.raises(exception.ConfigurationError) as error:
        store.get_lock("k").acquire()
    assert "5.0.14" in str(error.value) and "6.0" in str(error.value)


def test_redis_6_and_newer_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    monkeypatch.setattr(client, "info", lambda *a, **k: {"redis_version": "6.2.0"})
    store = kvs.get_key_value_store("new-redis")
    store.configure("kvs.redis", client=client)
    store.set("k", 1)
    assert store.get("k") == 1


def test_sqlite_older_than_3_35_is_refused(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.34.1")
    store = kvs.get_key_value_store("old-sqlite")
    with pytest.raises(exception.ConfigurationError) as error:
        store.configure("kvs.sqlite", filename=str(tmp_path / "old.sqlite3"))
    assert "3.34.1" in str(error.value) and "3.35" in str(error.value)
    assert not store.is_configured
