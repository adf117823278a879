"""kvs: named, lockable key-value stores over dogpile.cache.

Quick start::

    import kvs

    store = kvs.get_key_value_store("prices")
    store.configure("kvs.sqlite", filename="prices.sqlite3")
    store.set("peaches", 0.75)
    with store.get_lock("peaches") as lock:
        store.set("peaches", store.get("peaches") * 2, lock=lock)
    store.update("visits", lambda n: n + 1, default=0)
"""

from kvs import exception
from kvs.core import KeyValueStore, get_key_value_store
from kvs.exception import LockTimeout  # keystone.common.kvs exported it here
from kvs.loader import configure_stores, load_config, register_opts
from kvs.lock import KeyValueStoreLock
from kvs.provider import Provider, get_provider, register_calibration, resolve

__all__ = [
    "KeyValueStore",
    "KeyValueStoreLock",
    "LockTimeout",
    "Provider",
    "configure_stores",
    "exception",
    "get_key_value_store",
    "get_provider",
    "load_config",
    "register_calibration",
    "register_opts",
    "resolve",
]

__version__ = "0.2.0"
