"""The ``kvs`` command: operate any configured store from a shell.

``kvs [--config-file FILE] [--config-dir DIR] [--format table|json] [--debug] COMMAND ...``

Options and sub-commands are oslo.config CLI options (a ``SubCommandOpt``, as
in ``keystone-manage``).  Without ``--config-file`` the command reads
``etc/kvs.conf`` when run from a checkout, else oslo.config's standard search
path for project ``kvs`` (``~/.kvs/kvs.conf``, ``~/kvs.conf``,
``/etc/kvs/kvs.conf``, ``/etc/kvs.conf``).

Exit statuses (see :data:`EXIT_STATUSES`): 0 success; 1 not found, a failed
check or a declined confirmation; 2 usage or configuration error (unknown
store, missing config file); 3 backend unavailable; 4 lease held by another
holder (or lost), or endpoint locked out; 130 interrupted.  Errors are one
line on stderr; ``--debug`` adds the traceback.  Nothing printed contains a
secret of the configuration (see :class:`kvs.cli_format.Scrubber`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

from dogpile.cache import make_region
from oslo_config import cfg

from kvs import conf as kvs_conf
from kvs import core, exception, loader
from kvs.cli_format import Scrubber, parse_value, show_value, table, to_json

LOG = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_LOCKED = 4
EXIT_INTERRUPTED = 130

EXIT_STATUSES = {
    EXIT_OK: "success",
    EXIT_FAILED: "key or endpoint not found, a check failed, or a confirmation was declined",
    EXIT_USAGE: "usage or configuration error (bad arguments, missing or invalid config "
                "file, unknown store)",
    EXIT_UNAVAILABLE: "backend unavailable",
    EXIT_LOCKED: "lease held by another holder (or lost), or endpoint locked out",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

#: The config file used when none is given and the command runs from a checkout.
CHECKOUT_CONFIG = os.path.join("etc", "kvs.conf")

#: Keys ``kvs bench`` writes (and deletes afterwards).
BENCH_PREFIX = "_bench:"

FORMATS = ("table", "json")


class Failure(Exception):
    """A command ends with ``status`` after printing ``message`` on stderr."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# -- sub-commands: arguments ---------------------------------------------------

def _common(parser: argparse.ArgumentParser) -> None:
    # Also accepted after the command (kvs get demo k --format json); separate
    # dests, because a sub-parser's defaults overwrite the main parser's values.
    parser.add_argument("--format", dest="sub_format", choices=FORMATS, default=None,
                        help="output format (default: table)")
    parser.add_argument("--debug", dest="sub_debug", action="store_true", default=False,
                        help="show tracebacks and debug logs")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0 or value != value:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0 seconds")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def add_command_parsers(subparsers: Any) -> None:
    """The sub-command handler of the ``command`` SubCommandOpt."""
    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(
            name, help=help_text, description=help_text)
        _common(parser)
        return parser

    add("stores", "list configured stores: backend, reachable, declared endpoints")

    parser = add("get", "print the value of a key (exit 1 if missing)")
    parser.add_argument("store")
    parser.add_argument("key")

    parser = add("set", "store a value (JSON, else plain text)")
    parser.add_argument("store")
    parser.add_argument("key")
    parser.add_argument("value", help="JSON (42, 1.5, true, null, [1], {\"a\": 1}, \"text\") "
                                      "or plain text")
    parser.add_argument("--ttl", type=_seconds, default=None,
                        help="seconds until the value expires")
    parser.add_argument("--locked", action="store_true",
                        help="write under a lease (a fenced write)")
    parser.add_argument("--wait", type=_seconds, default=0.0,
                        help="seconds to wait for the lease with --locked (default 0)")
    parser.add_argument("--lockout-key", default=None,
                        help="lockout key of a locked-out declared endpoint")

    parser = add("delete", "delete a key (exit 1 if missing)")
    parser.add_argument("store")
    parser.add_argument("key")

    parser = add("lock", "take a lease on a key, print its token and fence, hold it")
    parser.add_argument("store")
    parser.add_argument("key")
    parser.add_argument("--hold", type=_seconds, default=None,
                        help="seconds to hold the lease (default: until Ctrl-C)")
    parser.add_argument("--wait", type=_seconds, default=0.0,
                        help="seconds to wait for a lease held by another (default 0)")

    parser = add("unlock", "show a key's lease; break it with --force")
    parser.add_argument("store")
    parser.add_argument("key")
    parser.add_argument("--force", action="store_true", help="break the lease")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    parser = add("endpoints", "declared endpoints: values, lockout and logging status")
    parser.add_argument("store")

    parser = add("watch", "print change broadcasts as they arrive, until Ctrl-C")
    parser.add_argument("store")
    parser.add_argument("endpoints", nargs="*", metavar="ENDPOINT",
                        help="endpoints to watch (default: all)")
    parser.add_argument("--count", type=_positive_int, default=None,
                        help="stop after this many events")
    parser.add_argument("--timeout", type=_seconds, default=None,
                        help="stop after this many seconds without an event")
    parser.add_argument("--sample", action="store_true",
                        help="also run scheduled logging in this process while watching")

    add("check", "validate the configuration and ping every store's backend")

    parser = add("bench", "short benchmark of get, set, get_multi and update")
    parser.add_argument("store")
    parser.add_argument("--count", type=_positive_int, default=1000,
                        help="calls per operation (default 1000)")
    parser.add_argument("--batch", type=_positive_int, default=10,
                        help="keys per get_multi call (default 10)")

    parser = add("demo", "the demo of `make run`: 4 processes, one counter, no lost update")
    parser.add_argument("--store", default="demo", help="store to use (default: demo)")


def cli_opts() -> list[cfg.Opt]:
    """The options of the ``kvs`` command (besides oslo's --config-file/--config-dir)."""
    return [
        cfg.StrOpt("format", default="table", choices=FORMATS,
                   help="Output format: a readable table, or JSON for scripts."),
        cfg.BoolOpt("debug", default=False, help="Show tracebacks and debug logs."),
        cfg.SubCommandOpt("command", title="commands", handler=add_command_parsers,
                          help="kvs COMMAND --help shows a command's options"),
    ]


COMMAND_NAMES = ("stores", "get", "set", "delete", "lock", "unlock", "endpoints", "watch",
                 "check", "bench", "demo")


# -- the session: configuration and output -------------------------------------

class Session:
    """One run of the command: its configuration, stores and output streams."""

    def __init__(self, conf: cfg.ConfigOpts, scrub: Scrubber, stdout: TextIO,
                 stderr: TextIO, stdin: TextIO) -> None:
        self.conf = conf
        self.scrub = scrub
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin
        self._stores: dict[str, core.KeyValueStore] | None = None
        self._providers: dict[str, Any] = {}

    # -- arguments ----------------------------------------------------------

    @property
    def command(self) -> str:
        return str(self.conf.command.name)

    def arg(self, name: str) -> Any:
        return getattr(self.conf.command, name)

    @property
    def format(self) -> str:
        return str(self.arg("sub_format") or self.conf.format)

    @property
    def json(self) -> bool:
        return self.format == "json"

    # -- configuration ------------------------------------------------------

    @property
    def config_files(self) -> list[str]:
        """The config files read, in order, including those of --config-dir."""
        files = [path for path in (self.conf.config_file or []) if os.path.exists(path)]
        for directory in self.conf.config_dir or []:
            if os.path.isdir(directory):
                files += sorted(os.path.join(directory, name) for name in os.listdir(directory)
                                if name.endswith(".conf"))
        return files

    def _where(self) -> str:
        files = self.config_files
        return f"config files: {', '.join(files)}" if files else "no config file found"

    @property
    def stores(self) -> dict[str, core.KeyValueStore]:
        """Every configured store (configured on first use)."""
        if self._stores is None:
            loader.register_extra_backends(self.conf)
            self._stores = {name: configure_store(self.conf, name)
                            for name in loader.store_names(self.conf)}
        return self._stores

    def declared(self, name: str) -> list[str]:
        """The endpoints ``[store:<name>]`` declares, from the configuration alone."""
        from kvs.provider import options as provider_options

        return provider_options.declared_endpoints(self.conf, name)

    def provider(self, name: str) -> Any:
        """The provider of store ``name`` (built on first use), or None if it declares
        no endpoints.  Only this store's provider is built, so a declared store whose
        backend is down does not stop commands on the others."""
        store = self.store(name)
        if name not in self._providers:
            self._providers[name] = (provider_for(self.conf, name, store)
                                     if self.declared(name) else None)
        return self._providers[name]

    def store(self, name: str) -> core.KeyValueStore:
        stores = self.stores
        if name not in stores:
            known = ", ".join(sorted(stores)) or "none"
            raise exception.ConfigurationError(
                f"unknown store {name!r} (configured stores: {known}; {self._where()})",
                option="store")
        return stores[name]

    # -- output -------------------------------------------------------------

    def emit(self, data: Any, text: str, stream: bool = False) -> None:
        """Print ``data`` as JSON or ``text``, depending on --format.

        ``stream``: one of several events of a long-running command, printed as
        one line of JSON each (JSON Lines).
        """
        if self.json:
            self.write(to_json(data, indent=None if stream else 2))
        else:
            self.write(text)

    def write(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def note(self, text: str) -> None:
        """One line on stderr (never secret-bearing, but scrubbed anyway)."""
        self.stderr.write(self.scrub(text) + "\n")
        self.stderr.flush()

    def close(self) -> None:
        if any(found is not None for found in self._providers.values()):
            from kvs import provider

            provider.reset_providers()


def configure_store(conf: cfg.ConfigOpts, name: str) -> core.KeyValueStore:
    """``[store:<name>]`` configured as :func:`kvs.configure_stores` does it, alone.

    The command configures stores one by one, and builds a store's provider
    only when a command needs it (:meth:`Session.provider`): ``configure_stores``
    builds every provider at once, which writes initial values and so fails
    every command while any declared store's backend is down.
    """
    group = kvs_conf.STORE_GROUP_PREFIX + name
    kwargs = loader.store_arguments(conf, name)
    store = core.get_key_value_store(
        name, kvs_region=make_region(name=f"{conf.kvs.config_prefix}.{name}"))
    if store.is_configured:
        return store
    try:
        store.configure(**kwargs)
    except exception.ConfigurationError as error:
        if error.context.get("section"):
            raise
        raise exception.ConfigurationError(
            f"[{group}] {error.message}", option=error.context.get("option"),
            section=group) from None
    return store


def quiet_providers(conf: cfg.ConfigOpts) -> None:
    """Keep ``autostart_logging`` from starting samplers in a short-lived command."""
    from kvs.provider import options as provider_options

    for name in loader.store_names(conf):
        provider_options.register_store_opts(conf, name)
        conf.set_override("autostart_logging", False, group=provider_options.store_group(name))


class _OtherStoresFilter(logging.Filter):
    """Drops the provider's "section belongs to no configured store" warnings, which
    a provider built for one store of several would print for the others."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "belongs to no configured store" not in str(record.msg)


def provider_for(conf: cfg.ConfigOpts, name: str, store: core.KeyValueStore) -> Any:
    """The provider of one store: the loader's if it built one, else built here."""
    from kvs import provider

    found = provider.registered_providers().get(name)
    if found is not None and found.store is store:
        return found
    quiet_providers(conf)
    quiet = _OtherStoresFilter()
    logger = logging.getLogger(provider.__name__)
    logger.addFilter(quiet)
    try:
        return provider.configure_providers(conf, {name: store}).get(name)
    finally:
        logger.removeFilter(quiet)


# -- commands --------------------------------------------------------------------

def _ping(store: core.KeyValueStore) -> str | None:
    """None when the backend answers, else why not."""
    try:
        store.ping()
    except exception.KVSError as error:
        return error.message
    return None


def cmd_stores(session: Session) -> int:
    rows = []
    for name, store in sorted(session.stores.items()):
        problem = _ping(store)
        rows.append({"store": name, "backend": store.backend_name,
                     "reachable": problem is None, "endpoints": len(session.declared(name)),
                     **({"error": session.scrub(problem)} if problem else {})})
    session.emit(rows, table(["store", "backend", "reachable", "endpoints"],
                             [[row["store"], row["backend"], row["reachable"], row["endpoints"]]
                              for row in rows]))
    if not rows:
        session.note(f"kvs: no store configured ({session._where()})")
    return EXIT_OK


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
    value = parse_value(session.arg("value"))
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


def acquire(store: core.KeyValueStore, lock: Any) -> None:
    """``lock.acquire()``; when another holder has the lease, say who (fence, time left)."""
    try:
        lock.acquire()
    except exception.LockAcquireTimeout:
        info = store.lease_info(lock.key)
        left = ""
        if info is not None:
            left = ("; it never expires" if info.remaining is None
                    else f", {info.remaining:.1f} s left")
        held = f" (fence {info.fence}{left})" if info is not None else ""
        raise Failure(f"key {lock.key!r} in store {store.name!r} is leased by another "
                      f"holder{held}; waited {lock.lock_wait_timeout:g} s", EXIT_LOCKED) from None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT (Ctrl-C) or SIGTERM for the duration of the block."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def cmd_lock(session: Session) -> int:
    name, key, hold = session.arg("store"), session.arg("key"), session.arg("hold")
    store = session.store(name)
    lock = store.get_lock(key)
    lock.lock_wait_timeout = session.arg("wait")
    with stop_on_signals() as stop:
        acquire(store, lock)
        try:
            lease = lock.lock_timeout
            session.emit(
                {"event": "acquired", "store": name, "key": key, "token": lock.token,
                 "fence": lock.fence, "lock_timeout": lease, "hold": hold},
                table(["store", "key", "token", "fence", "hold"],
                      [[name, key, lock.token, lock.fence,
                        "until Ctrl-C" if hold is None else f"{hold:g} s"]]), stream=True)
            try:
                _hold(lock, hold, stop)
            except exception.LockTimeout:
                raise Failure(f"lost the lease on key {key!r} in store {name!r}: it was "
                              f"broken or taken over (fence {lock.fence})", EXIT_LOCKED) from None
        finally:
            lock.release()
    session.emit({"event": "released", "store": name, "key": key, "fence": lock.fence},
                 f"released lease fence {lock.fence} on {key!r} in store {name!r}", stream=True)
    return EXIT_OK


def _hold(lock: Any, hold: float | None, stop: threading.Event) -> None:
    """Keep ``lock`` until ``hold`` seconds pass or ``stop`` is set, renewing it."""
    deadline = None if hold is None else time.monotonic() + hold
    # Renew at a third of the lease, so one late renewal still leaves it alive.
    renew_every = lock.lock_timeout / 3 if lock.lock_timeout > 0 else None
    renewed = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        waits = [w for w in (None if deadline is None else deadline - now,
                             None if renew_every is None else renewed + renew_every - now)
                 if w is not None]
        # Wake at least once a second even with nothing to do: a bounded wait
        # keeps the signal handlers responsive everywhere.
        if stop.wait(max(0.0, min([*waits, 1.0]))):
            return
        now = time.monotonic()
        if renew_every is not None and now - renewed >= renew_every:
            # extend() adds to the deadline: add the time since the last renewal.
            lock.extend(max(now - renewed, 1e-3))
            renewed = now


def _lease_row(info: Any) -> dict[str, Any]:
    return {"token": info.token, "fence": info.fence, "remaining": info.remaining}


def _lease_text(info: Any) -> str:
    left = "never expires" if info.remaining is None else f"{info.remaining:.1f} s left"
    return f"fence {info.fence}, token {info.token or '?'}, {left}"


def cmd_unlock(session: Session) -> int:
    name, key = session.arg("store"), session.arg("key")
    store = session.store(name)
    info = store.lease_info(key)
    if info is None:
        session.emit({"store": name, "key": key, "lease": None, "broken": False},
                     f"no lease on {key!r} in store {name!r}")
        return EXIT_OK
    if not session.arg("force"):
        session.emit({"store": name, "key": key, "lease": _lease_row(info), "broken": False},
                     f"{key!r} in store {name!r} is leased: {_lease_text(info)}")
        raise Failure(f"lease on key {key!r} in store {name!r} is held; "
                      f"use --force to break it", EXIT_LOCKED)
    if not session.arg("yes"):
        session.stderr.write(f"break the lease on {key!r} in store {name!r} "
                             f"({_lease_text(info)})? [y/N] ")
        session.stderr.flush()
        answer = session.stdin.readline().strip().lower()
        if not session.stdin.isatty():
            session.stderr.write("\n")  # the answer was not echoed: end the prompt line
        if answer not in ("y", "yes"):
            raise Failure("not confirmed; the lease is kept", EXIT_FAILED)
    broken = store.break_lock(key)
    session.emit({"store": name, "key": key, "lease": _lease_row(info), "broken": broken},
                 f"broke lease fence {info.fence} on {key!r} in store {name!r}" if broken
                 else f"the lease on {key!r} in store {name!r} was already gone")
    return EXIT_OK


def _provider_of(session: Session, name: str) -> Any:
    found = session.provider(name)
    if found is None:
        raise Failure(f"store {name!r} declares no endpoints", EXIT_FAILED)
    return found


def cmd_endpoints(session: Session) -> int:
    from kvs.provider.scheduler import SAMPLER_LEASE_KEY

    name = session.arg("store")
    store = session.store(name)
    found = session.provider(name)
    if found is None:
        session.emit({"store": name, "locked": False, "sampler": False, "endpoints": []},
                     f"store {name!r} declares no endpoints")
        return EXIT_OK
    try:
        sampler = store.lease_info(SAMPLER_LEASE_KEY) is not None
    except exception.KVSError:
        sampler = False
    rows = [_endpoint_row(found.endpoint(endpoint), sampler)
            for endpoint in found.list_endpoints()]
    store_lock = found.lock_info()
    data = {"store": name, "locked": store_lock.get("locked", False),
            "sampler": sampler, "endpoints": rows}
    text = table(["endpoint", "value_raw", "value_cal", "calibration", "locked", "logging"],
                 [[row["endpoint"], row["value_raw"], row.get("value_cal"),
                   row["calibration"], _locked_text(row["lockout"]), row["logging_text"]]
                  for row in rows])
    if store_lock.get("locked"):
        text += f"\nstore {name!r} is locked out ({_locked_text(store_lock)})"
    for row in rows:
        del row["logging_text"]
    session.emit(data, text)
    return EXIT_OK


def _locked_text(info: dict[str, Any]) -> str:
    if not info.get("locked"):
        return "no"
    return f"yes, by {info.get('holder', '?')} since {info.get('since', '?')}"


def _endpoint_row(endpoint: Any, sampler: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"endpoint": endpoint.name, "value_raw": None}
    try:
        row.update(endpoint.get())
    except exception.NotFound:
        row["missing"] = True
    except exception.CalibrationError as error:
        row["value_raw"] = error.value_raw
        row["calibration_error"] = error.message
    row["calibration"] = endpoint.calibration
    row["lockout"] = endpoint.lock_info()
    interval = endpoint.schedule_interval
    row["schedule_interval"] = interval
    row["logging"] = bool(interval > 0 and sampler)
    if interval <= 0:
        row["logging_text"] = "off"
    else:
        row["logging_text"] = (f"every {interval:g} s, "
                               f"{'sampler running' if sampler else 'no sampler running'}")
    return row


def _event_text(event: dict[str, Any]) -> str:
    parts = [str(event.get("timestamp")), f"{event.get('store')}.{event.get('endpoint')}",
             f"value_raw={show_value(event.get('value_raw'))}"]
    if "value_cal" in event:
        parts.append(f"value_cal={show_value(event['value_cal'])}")
    parts.append(f"reason={event.get('reason')}")
    return "  ".join(parts)


def cmd_watch(session: Session) -> int:
    name = session.arg("store")
    found = _provider_of(session, name)
    names = session.arg("endpoints") or None
    count, seen = session.arg("count"), 0
    with stop_on_signals() as stop:
        watcher = found.watch(names, stop_event=stop, timeout=session.arg("timeout"))
        if session.arg("sample"):
            found.start_logging()
        session.note(f"watching store {name!r} "
                     f"({', '.join(names) if names else 'all endpoints'}); Ctrl-C stops")
        for event in watcher:
            session.write(to_json(event, indent=None) if session.json else _event_text(event))
            seen += 1
            if count is not None and seen >= count:
                break
    return EXIT_OK


def check(session: Session) -> tuple[list[dict[str, Any]], list[str]]:
    """Configure each store on its own and ping it; ``(rows, problems)``."""
    conf = session.conf
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    names = loader.store_names(conf)
    if not session.config_files:
        problems.append("no config file found (give --config-file)")
    elif not names:
        problems.append(f"no [store:NAME] section in {', '.join(session.config_files)}")
    try:
        loader.register_extra_backends(conf)
    except exception.KVSError as error:
        problems.append(error.message)
    configured: dict[str, core.KeyValueStore] = {}
    for name in names:
        row: dict[str, Any] = {"store": name, "backend": None, "ok": False, "problem": None}
        rows.append(row)
        group = kvs_conf.STORE_GROUP_PREFIX + name
        try:
            row["backend"] = conf[group].backend
            # One store at a time: one broken section does not hide the others.
            store = configure_store(conf, name)
        except exception.KVSError as error:
            where = "" if error.context.get("section") else f"[{group}] "
            row["problem"] = f"{where}{error.message}"
            continue
        configured[name] = store
        problem = _ping(store)
        if problem is not None:
            row["problem"] = f"store {name!r}: {problem}"
        else:
            row["ok"] = True
    problems += [row["problem"] for row in rows if row["problem"]]
    problems += check_declarations(conf, configured)
    return rows, [session.scrub(problem) for problem in problems]


def check_declarations(conf: cfg.ConfigOpts, stores: dict[str, core.KeyValueStore]
                       ) -> list[str]:
    """Problems in the endpoint declarations of ``stores``, read without building
    providers (which would write initial values)."""
    from kvs.provider import options as provider_options

    problems: list[str] = []
    declared: dict[str, list[str]] = {}
    for name in stores:
        try:
            declared[name] = provider_options.declared_endpoints(conf, name)
            for endpoint in declared[name]:
                provider_options.read_endpoint_spec(conf, name, endpoint)
        except exception.KVSError as error:
            problems.append(error.message)
    for section in provider_options.stray_endpoint_sections(conf, declared):
        problems.append(f"section [{section}] configures an endpoint its store does not "
                        f"declare in its endpoints option")
    known = loader.store_names(conf)
    for section in conf.list_all_sections():
        address = section.partition(provider_options.ENDPOINT_GROUP_PREFIX)[2]
        if section.startswith(provider_options.ENDPOINT_GROUP_PREFIX) and not any(
                address.startswith(name + ".") for name in known):
            problems.append(f"section [{section}] belongs to no [store:NAME] section")
    return problems


def cmd_check(session: Session) -> int:
    rows, problems = check(session)
    session.emit(
        {"ok": not problems, "config_files": session.config_files,
         "stores": [{**row, "problem": row["problem"] and session.scrub(row["problem"])}
                    for row in rows], "problems": problems},
        table(["store", "backend", "status"],
              [[row["store"], row["backend"], "ok" if row["ok"] else "FAILED"]
               for row in rows]))
    for problem in problems:
        session.note(f"kvs: {problem}")
    return EXIT_FAILED if problems else EXIT_OK


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar on stderr, or a stand-in when tqdm is missing or output is JSON."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not enabled:
        class Silent:
            def update(self, n: int) -> None:
                pass

            def set_description(self, text: str) -> None:
                pass

            def close(self) -> None:
                pass
        return Silent()
    # disable=None: no bar when stderr is not a terminal (logs, pipes, tests).
    return tqdm(total=total, unit="op", file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=None)


def cmd_bench(session: Session) -> int:
    name, count, batch = session.arg("store"), session.arg("count"), session.arg("batch")
    store = session.store(name)
    prefix = f"{BENCH_PREFIX}{uuid.uuid4().hex[:8]}:"
    keys = [f"{prefix}{index}" for index in range(max(batch, 100))]
    counter = f"{prefix}counter"
    operations: list[tuple[str, Callable[[int], Any]]] = [
        ("set", lambda i: store.set(keys[i % len(keys)], i)),
        ("get", lambda i: store.get(keys[i % len(keys)])),
        ("get_multi", lambda i: store.get_multi(
            [keys[(i + j) % len(keys)] for j in range(batch)])),
        ("update", lambda i: store.update(counter, lambda n: n + 1, default=0)),
    ]
    store.set_multi({key: 0 for key in keys})  # every get finds its key from the start
    bar = _progress(count * len(operations), enabled=not session.json)
    results = []
    try:
        for label, operation in operations:
            bar.set_description(label)
            elapsed = 0.0
            for start in range(0, count, 100):
                chunk = range(start, min(start + 100, count))
                began = time.perf_counter()
                for i in chunk:
                    operation(i)
                elapsed += time.perf_counter() - began
                bar.update(len(chunk))
            results.append({"operation": label, "calls": count,
                            "us_per_op": round(elapsed / count * 1e6, 2),
                            "ops_per_s": round(count / elapsed, 1) if elapsed > 0 else None})
    finally:
        bar.close()
        store.delete_multi([*keys, counter])
    text = table(["operation", "calls", "µs/op", "ops/s"],
                 [[row["operation"], row["calls"], f"{row['us_per_op']:.1f}",
                   f"{row['ops_per_s']:.0f}" if row["ops_per_s"] else "-"] for row in results])
    text += f"\nstore {name!r}, backend {store.backend_name}, get_multi of {batch} keys"
    session.emit({"store": name, "backend": store.backend_name, "batch": batch,
                  "results": results}, text)
    return EXIT_OK


def cmd_demo(session: Session) -> int:
    from kvs import demo

    name = session.arg("store")
    session.store(name)
    files = session.config_files
    if not files:
        raise exception.ConfigurationError(
            "the demo needs a config file (give --config-file)", option="config_file")
    lines: list[str] = []

    def write(text: str) -> None:
        if session.json:
            lines.append(text)
        else:
            session.write(text)

    final = demo.run(files, name, write=write)
    expected = demo.WORKERS * demo.INCREMENTS
    if session.json:
        session.write(to_json({"store": name, "final": final, "expected": expected,
                               "ok": final == expected, "output": lines}))
    return EXIT_OK if final == expected else EXIT_FAILED


COMMANDS: dict[str, Callable[[Session], int]] = {
    "stores": cmd_stores, "get": cmd_get, "set": cmd_set, "delete": cmd_delete,
    "lock": cmd_lock, "unlock": cmd_unlock, "endpoints": cmd_endpoints, "watch": cmd_watch,
    "check": cmd_check, "bench": cmd_bench, "demo": cmd_demo,
}


# -- main --------------------------------------------------------------------------

def status_of(error: BaseException) -> int:
    """The exit status for an error a command raised."""
    if isinstance(error, Failure):
        return error.status
    if isinstance(error, exception.BackendUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(error, (exception.LockTimeout, exception.Locked)):
        return EXIT_LOCKED
    if isinstance(error, (exception.ConfigurationError, exception.InvalidKey,
                          exception.NotConfigured, exception.AlreadyConfigured,
                          exception.SerializationError, exception.ValueTooLarge)):
        return EXIT_USAGE
    return EXIT_FAILED


def _command_in(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv``, found without parsing (for load errors)."""
    takes_value = {"--config-file", "--config-dir", "--format"}
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item in takes_value:
            skip = True
        elif not item.startswith("-"):
            return item if item in COMMAND_NAMES else None
    return None


def _format_in(argv: Sequence[str]) -> str:
    """The --format named in ``argv`` (for output before the arguments are parsed)."""
    for index, item in enumerate(argv):
        if item == "--format" and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith("--format="):
            return item.partition("=")[2]
    return "table"


def default_config_files() -> list[str]:
    """``etc/kvs.conf`` when run from a checkout, else oslo.config's standard search.

    The search is done here because oslo.config looks for both ``<project>.conf``
    and ``<prog>.conf``: for ``kvs`` they are the same file, which would be read
    twice (doubling every ``backend_argument``).
    """
    if os.path.isfile(CHECKOUT_CONFIG):
        return [CHECKOUT_CONFIG]
    return list(dict.fromkeys(cfg.find_config_files(project="kvs", prog="kvs")))


class ScrubbingFormatter(logging.Formatter):
    def __init__(self, scrub: Scrubber) -> None:
        super().__init__("kvs: %(levelname)s: %(message)s")
        self._scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return self._scrub(super().format(record))


def _setup_logging(debug: bool, scrub: Scrubber, stderr: TextIO) -> logging.Handler:
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(ScrubbingFormatter(scrub))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("kvs").setLevel(logging.DEBUG if debug else logging.WARNING)
    return handler


def load(conf: cfg.ConfigOpts, argv: Sequence[str], stderr: TextIO) -> int | None:
    """Parse ``argv`` and the config files into ``conf``; an exit status if that ends the run.

    argparse prints usage and a message itself and exits; its output is
    captured so that a usage error stays one line.
    """
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            loader.load_config(default_config_files(), args=argv, conf=conf)
    except SystemExit as exit_:
        text = captured.getvalue()
        code = exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
        if code == EXIT_OK:
            stderr.write(text)
            return EXIT_OK
        lines = [line for line in text.splitlines() if line.strip()]
        stderr.write((lines[-1] if lines else "kvs: invalid arguments") + "\n")
        return EXIT_USAGE
    stderr.write(captured.getvalue())
    return None


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None, stdin: TextIO | None = None) -> int:
    """Run the ``kvs`` command; return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    stdin = stdin or sys.stdin
    scrub = Scrubber()
    debug = "--debug" in args
    handler = _setup_logging(debug, scrub, stderr)
    conf = cfg.ConfigOpts()
    conf.register_cli_opts(cli_opts())
    session: Session | None = None
    try:
        try:
            ended = load(conf, args, stderr)
        except exception.ConfigurationError as error:
            if _command_in(args) != "check":
                raise
            # check reports a config that does not load as its one problem.
            if _format_in(args) == "json":
                stdout.write(to_json({"ok": False, "problems": [scrub(error.message)]}) + "\n")
            raise Failure(error.message, EXIT_FAILED) from None
        if ended is not None:
            return ended
        scrub.add_from_config(conf)
        session = Session(conf, scrub, stdout, stderr, stdin)
        debug = debug or bool(session.arg("sub_debug"))
        return COMMANDS[session.command](session)
    except KeyboardInterrupt:
        stderr.write("kvs: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (kvs watch | head): stop quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        return EXIT_OK
    except Exception as error:  # one line per error, no traceback unless --debug
        if debug:
            stderr.write(scrub(traceback.format_exc()))
        message = error.message if isinstance(error, exception.KVSError) else str(error)
        if not isinstance(error, (exception.KVSError, Failure)):
            message = f"unexpected {type(error).__name__}: {message}"
        stderr.write(f"kvs: {scrub(message)}\n")
        stderr.flush()
        return status_of(error)
    finally:
        if session is not None:
            session.close()
        logging.getLogger().removeHandler(handler)


if __name__ == "__main__":
    sys.argv[0] = "kvs"  # oslo.config names the program (and its config) after argv[0]
    sys.exit(main())
