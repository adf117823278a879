"""What every command shares: exit statuses, the session (configuration, stores,
providers, output) and signal handling."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any, TextIO

from oslo_config import cfg

from kvs import core, exception, loader
from kvs.cli.output import Scrubber, to_json

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_LOCKED = 4
EXIT_DATA = 5
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

EXIT_STATUSES = {
    EXIT_OK: "success",
    EXIT_FAILED: "key or endpoint not found, a check failed, or a confirmation was declined",
    EXIT_USAGE: "usage or configuration error (bad arguments, missing or invalid config "
                "file, unknown store)",
    EXIT_UNAVAILABLE: "backend unavailable",
    EXIT_LOCKED: "lease held by another holder (or lost), or endpoint locked out",
    EXIT_DATA: "a stored value cannot be read (corrupt, or it fails its signature or "
               "decryption check)",
    EXIT_INTERNAL: "internal error: a bug in kvs or in a plugin (--debug shows the traceback)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

#: The config file used when none is given and the command runs from a checkout.
CHECKOUT_CONFIG = os.path.join("etc", "kvs.conf")

FORMATS = ("table", "json")


class Failure(Exception):
    """A command ends with ``status`` after printing ``message`` on stderr.

    Internal to the command (``main`` turns it into an exit status): for outcomes
    that are no library error, like a declined confirmation.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Session:
    """One run of the command: its configuration, stores and output streams."""

    def __init__(self, conf: cfg.ConfigOpts, scrub: Scrubber, stdout: TextIO,
                 stderr: TextIO, stdin: TextIO) -> None:
        self.conf = conf
        self.scrub = scrub
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin
        self._stores: dict[str, core.KeyValueStore] = {}
        self._broken: dict[str, exception.KVSError] = {}
        self._backends_registered = False
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
    def names(self) -> list[str]:
        """The ``[store:NAME]`` sections of the configuration."""
        return loader.store_names(self.conf)

    def all_stores(self) -> dict[str, core.KeyValueStore | exception.KVSError]:
        """Every store section: its store, or the error that keeps it from configuring."""
        found: dict[str, core.KeyValueStore | exception.KVSError] = {}
        for name in self.names:
            try:
                found[name] = self.store(name)
            except (exception.ConfigurationError, exception.AlreadyConfigured) as error:
                found[name] = error
        return found

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
        """Store ``name``, configured on first use, alone: a broken section of another
        store does not stop commands on this one."""
        if name in self._stores:
            return self._stores[name]
        if name in self._broken:
            raise self._broken[name]
        names = self.names
        if name not in names:
            known = ", ".join(sorted(names)) or "none"
            raise exception.ConfigurationError(
                f"unknown store {name!r} (configured stores: {known}; {self._where()})",
                option="store")
        if not self._backends_registered:
            loader.register_extra_backends(self.conf)
            self._backends_registered = True
        try:
            self._stores[name] = configure_store(self.conf, name)
        except (exception.ConfigurationError, exception.AlreadyConfigured) as error:
            self._broken[name] = error
            raise
        return self._stores[name]

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
        """One line on stderr (never secret-bearing, but scrubbed anyway); with
        ``--format json`` a JSON object ``{"note": text}``."""
        text = self.scrub(text)
        if self.json:
            text = to_json({"note": text.removeprefix("kvs: ")}, indent=None)
        self.stderr.write(text + "\n")
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
    return loader.configure_store(conf, name)


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


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT (Ctrl-C) or SIGTERM for the duration of the block."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        # Not stop.set() here: the handler runs in the main thread, which may be
        # inside stop.wait() holding the event's internal lock, and set() would
        # then wait for that lock forever.  A helper thread sets it instead.
        threading.Thread(target=stop.set, name="kvs-signal", daemon=True).start()

    previous = {signum: signal.signal(signum, handler)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
