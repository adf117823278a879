"""Commands on a store's data: stores, get, set, delete."""

from __future__ import annotations

from typing import Any

from kvs import core, exception
from kvs.cli.leases import acquire
from kvs.cli.output import BrokenValue, parse_value, show_value, table
from kvs.cli.session import EXIT_OK, EXIT_USAGE, Failure, Session


def ping(store: core.KeyValueStore) -> str | None:
    """None when the backend answers, else why not."""
    try:
        store.ping()
    except exception.KVSError as error:
        return error.message
    return None


def cmd_stores(session: Session) -> int:
    if not session.config_files:
        raise Failure("no config file found: give --config-file (kvs --help lists the "
                      "files searched)", EXIT_USAGE)
    if not session.names:
        raise Failure(f"no [store:NAME] section in {', '.join(session.config_files)}",
                      EXIT_USAGE)
    rows, broken = [], []
    for name, found in sorted(session.all_stores().items()):
        if isinstance(found, exception.KVSError):
            # A broken section is listed, not fatal: the other stores still work.
            problem: str | None = found.message
            broken.append(found.message)
            backend, endpoints = _configured_backend(session, name), None
        else:
            problem = ping(found)
            backend, endpoints = found.backend_name, len(session.declared(name))
        rows.append({"store": name, "backend": backend, "reachable": problem is None,
                     "endpoints": endpoints,
                     **({"error": session.scrub(problem)} if problem else {})})
    session.emit(rows, table(["store", "backend", "reachable", "endpoints"],
                             [[row["store"], row["backend"], row["reachable"], row["endpoints"]]
                              for row in rows]))
    if not session.json:  # JSON has them in "error"
        for message in broken:
            session.note(f"kvs: {message}")
    return EXIT_OK


def _configured_backend(session: Session, name: str) -> str | None:
    """The ``backend`` option of a broken section, if it can be read."""
    from kvs import conf as kvs_conf

    try:
        return str(session.conf[kvs_conf.STORE_GROUP_PREFIX + name].backend)
    except Exception:  # the option itself may be what is broken
        return None


def cmd_get(session: Session) -> int:
    name, key = session.arg("store"), session.arg("key")
    value = session.store(name).get(key)
    session.emit({"store": name, "key": key, "value": value}, show_value(value))
    return EXIT_OK


def _declared(session: Session, store: str, key: str) -> Any:
    """The provider of ``store`` when ``key`` is one of its declared endpoints, else None."""
    if key in session.declared(store):
        return session.provider(store)
    return None


def cmd_set(session: Session) -> int:
    name, key = session.arg("store"), session.arg("key")
    value = session.arg("value")
    if not session.arg("string"):
        try:
            value = parse_value(value)
        except BrokenValue as error:
            raise Failure(str(error), EXIT_USAGE) from None
    ttl, locked = session.arg("ttl"), session.arg("locked")
    store = session.store(name)
    declared = _declared(session, name, key)
    result: dict[str, Any] = {"store": name, "key": key, "value": value}
    if declared is not None:
        # Endpoints go through their provider: lockout, log_on_set, get_on_set.
        if ttl is not None:
            raise exception.ConfigurationError(
                f"--ttl does not apply to declared endpoint {name}.{key}", option="--ttl")
        reading = declared.set(key, value, lockout_key=session.arg("lockout_key"))
        result["endpoint"] = True
        if reading is not None:
            result.update(reading)
        text = f"set endpoint {name}.{key}"
        if reading is not None and "value_cal" in reading:
            text += f" (value_cal {show_value(reading['value_cal'])})"
    elif locked:
        lock = store.get_lock(key)
        lock.lock_wait_timeout = session.arg("wait")
        acquire(store, lock)
        try:
            store.set(key, value, lock=lock, ttl=ttl)
        finally:
            lock.release()
        result.update({"ttl": ttl, "fence": lock.fence})
        text = f"set {key!r} in store {name!r} under lease fence {lock.fence}"
    else:
        store.set(key, value, ttl=ttl)
        result["ttl"] = ttl
        text = f"set {key!r} in store {name!r}"
    if ttl is not None:
        text += f", expires in {ttl:g} s"
    session.emit(result, text)
    return EXIT_OK


def cmd_delete(session: Session) -> int:
    name, key = session.arg("store"), session.arg("key")
    session.store(name).delete(key)
    session.emit({"store": name, "key": key, "deleted": True},
                 f"deleted {key!r} from store {name!r}")
    return EXIT_OK
