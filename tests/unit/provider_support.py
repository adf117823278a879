"""Fixtures and helpers shared by the provider tests (tests/unit/test_provider*.py).

Also imported by child processes (spawn), so everything here is importable
without pytest running.
"""

from __future__ import annotations

import contextlib
import queue
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from oslo_config import cfg

import kvs
import kvs.provider
import kvs.testing

#: Backends every provider behaviour is tested on.
PROVIDER_BACKENDS = ["memory", "sqlite"]

#: The seed's tutorial store, in kvs ini form.
PRICES = """
[store:{store}]
{backend}
endpoints = peaches, chips, waffles, status

[endpoint:{store}.peaches]
initial_value = 0.75
calibration = 1*{{}}
get_on_set = true
log_on_set = true

[endpoint:{store}.chips]
initial_value = 1.75
calibration = times3({{}})
get_on_set = true

[endpoint:{store}.waffles]
initial_value = 4.00
calibration = 2*{{}}

[endpoint:{store}.status]
initial_value = CLOSE
calibration_map = CLOSE:on, OPEN:off
log_on_set = true
"""


def backend_lines(backend: str, directory: Path) -> str:
    if backend == "memory":
        return "backend = kvs.memory"
    if backend == "sqlite":
        return f"backend = kvs.sqlite\nbackend_argument = filename:{directory / 'kvs.sqlite3'}"
    raise ValueError(backend)


def load(path: Path) -> tuple[cfg.ConfigOpts, dict[str, kvs.provider.Provider]]:
    """Load ``path`` as the CLI would: load_config, configure_stores, providers.

    ``configure_stores`` builds the providers itself once the core wires the
    hook; until then (or if it does not), build them here.
    """
    conf = kvs.load_config([str(path)])
    stores = kvs.configure_stores(conf)
    registered = kvs.provider.registered_providers()
    if not any(name in registered for name in stores):
        kvs.provider.configure_providers(conf, stores)
        registered = kvs.provider.registered_providers()
    return conf, {name: registered[name] for name in stores if name in registered}


class Loader:
    """Writes ini text to a file and loads it (fresh registries each time)."""

    def __init__(self, directory: Path, backend: str) -> None:
        self.directory = directory
        self.backend = backend
        self.count = 0

    def backend_lines(self) -> str:
        return backend_lines(self.backend, self.directory)

    def write(self, text: str, store: str = "prices") -> Path:
        self.count += 1
        path = self.directory / f"kvs-{self.count}.conf"
        path.write_text(textwrap.dedent(text).format(store=store, backend=self.backend_lines()))
        return path

    def __call__(self, text: str, store: str = "prices") -> kvs.provider.Provider:
        _, providers = load(self.write(text, store))
        return providers[store]

    def restart(self, path: Path, store: str = "prices") -> kvs.provider.Provider:
        """Simulate a process restart: forget this process's stores and providers."""
        kvs.provider.reset_providers()
        kvs.testing.reset_registry()
        _, providers = load(path)
        return providers[store]


@contextlib.contextmanager
def loader_context(directory: Path, backend: str) -> Iterator[Loader]:
    """A Loader with isolated store and provider registries for the block."""
    with kvs.testing.isolated_stores():
        try:
            yield Loader(directory, backend)
        finally:
            kvs.provider.reset_providers()


class Collector:
    """A subscriber that queues events, with a bounded wait for the next one."""

    def __init__(self) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.put(event)

    def next(self, timeout: float = 20.0) -> dict[str, Any]:
        return self.events.get(timeout=timeout)

    def drain(self) -> list[dict[str, Any]]:
        items = []
        while True:
            try:
                items.append(self.events.get_nowait())
            except queue.Empty:
                return items


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0,
               interval: float = 0.02) -> bool:
    """Poll ``predicate`` until true; a generous bound that only stops hangs."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def unique_store() -> str:
    return f"p{uuid.uuid4().hex[:10]}"


# -- child processes (run by spawn; keep them importable and self-contained) -------

def child_set_values(path: str, store: str, values: list[Any]) -> None:
    """Load ``path`` in a fresh process and set ``peaches`` to each value."""
    _, providers = load(Path(path))
    for value in values:
        providers[store].set("peaches", value)


def child_sample_forever(path: str, store: str) -> None:
    """Load ``path``, start scheduled logging, and sample until killed."""
    import time

    _, providers = load(Path(path))
    providers[store].start_logging()
    while True:
        time.sleep(1)
