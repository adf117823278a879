"""set_multi is atomic for readers on the backends that promise it (memory, sqlite)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

import kvs
import kvs.testing


@pytest.mark.parametrize("backend", ["kvs.memory", "kvs.sqlite"])
def test_get_multi_never_sees_half_a_set_multi(backend: str, tmp_path: Path) -> None:
    args = {"filename": str(tmp_path / "atomic.sqlite3")} if backend == "kvs.sqlite" else {}
    with kvs.testing.isolated_stores():
        store = kvs.get_key_value_store("atomic")
        store.configure(backend, **args)
        keys = [f"k{i}" for i in range(64)]
        store.set_multi(dict.fromkeys(keys, 0))
        stop = threading.Event()

        def writer() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                store.set_multi(dict.fromkeys(keys, n))

        thread = threading.Thread(target=writer)
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads often, so a torn read would show
        thread.start()
        torn = 0
        try:
            for _ in range(2000):
                if len(set(store.get_multi(keys))) != 1:
                    torn += 1
        finally:
            stop.set()
            thread.join()
            sys.setswitchinterval(interval)
        assert torn == 0
