"""Declared stores: dragonfly's ``kv_store``, working, on any kvs backend.

A store section that lists ``endpoints`` becomes a :class:`Provider`::

    [store:prices]
    backend = kvs.sqlite
    backend_argument = filename:prices.sqlite3
    endpoints = peaches, status

    [endpoint:prices.peaches]
    initial_value = 0.75
    calibration = times3({})
    log_on_set = true

``kvs.configure_stores(conf)`` calls :func:`configure_providers` after the
stores are configured; :func:`get_provider` and :func:`resolve` find the
results.  See ``doc/provider.md``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from oslo_config import cfg

from kvs import exception
from kvs.core import KeyValueStore
from kvs.provider import options
from kvs.provider.broadcast import Baseline, BroadcastPolicy, Subscription, Watcher, decide
from kvs.provider.calibration import (
    REGISTRY,
    MapCalibration,
    TemplateCalibration,
    register_calibration,
    times2,
    times3,
)
from kvs.provider.options import EndpointSpec
from kvs.provider.provider import Endpoint, Provider

LOG = logging.getLogger(__name__)

__all__ = [
    "REGISTRY",
    "Baseline",
    "BroadcastPolicy",
    "Endpoint",
    "EndpointSpec",
    "MapCalibration",
    "Provider",
    "Subscription",
    "TemplateCalibration",
    "Watcher",
    "configure_providers",
    "decide",
    "get_provider",
    "list_opts",
    "register_calibration",
    "registered_providers",
    "reset_providers",
    "warn_unknown_stores",
    "resolve",
    "times2",
    "times3",
]

_PROVIDERS: dict[str, Provider] = {}
_GUARD = threading.Lock()
_node_name: str | None = None


def configure_providers(conf: cfg.ConfigOpts, stores: Mapping[str, KeyValueStore],
                        warn_unknown: bool = True) -> dict[str, Provider]:
    """Build the provider of every store in ``stores`` that declares endpoints.

    Registers the provider options on ``conf``, reads and checks every
    endpoint section first (a bad value raises
    :class:`~kvs.exception.ConfigurationError` naming section and option before
    anything is written), then writes initial values where keys do not exist
    yet, and starts scheduled logging where ``autostart_logging`` is on.
    Replaces (and stops) providers of the same names built earlier.
    ``warn_unknown``: warn about endpoint sections of stores not in ``stores``
    (:func:`kvs.configure_stores`, building one store at a time, warns once itself).
    """
    global _node_name
    node = options.node_name(conf)
    declared = {name: options.declared_endpoints(conf, name) for name in sorted(stores)}
    settings = {name: options.read_store_settings(conf, name) for name in declared}
    stray = options.stray_endpoint_sections(conf, declared)
    if stray:
        store = stray[0][len(options.ENDPOINT_GROUP_PREFIX):].rsplit(".", 1)[0]
        raise exception.ConfigurationError(
            f"section [{stray[0]}] configures an endpoint that [store:{store}] does not "
            f"declare in its endpoints option", option="endpoints", section=stray[0])
    if warn_unknown:
        warn_unknown_stores(conf, declared)
    specs = {name: [options.read_endpoint_spec(conf, name, endpoint) for endpoint in names]
             for name, names in declared.items() if names}

    built: dict[str, Provider] = {}
    for name, endpoint_specs in specs.items():
        provider = Provider(stores[name], endpoint_specs,
                            event_log_size=settings[name]["event_log_size"])
        written = provider.initialize()
        if written:
            LOG.info("store %r: wrote initial values of %s", name, ", ".join(written))
        built[name] = provider
    with _GUARD:
        for name, provider in built.items():
            old = _PROVIDERS.get(name)
            if old is not None:
                old.close()
            _PROVIDERS[name] = provider
        _node_name = node
    for name, provider in built.items():
        if settings[name]["autostart_logging"]:
            provider.start_logging()
    return built


def warn_unknown_stores(conf: cfg.ConfigOpts, declared: Mapping[str, Any]) -> None:
    """Warn about each ``[endpoint:S.E]`` section whose store ``S`` is not in ``declared``."""
    for section in conf.list_all_sections():
        if not section.startswith(options.ENDPOINT_GROUP_PREFIX):
            continue
        address = section[len(options.ENDPOINT_GROUP_PREFIX):]
        if not any(address.startswith(store + ".") for store in declared):
            LOG.warning("section [%s] belongs to no configured store; ignored", section)


def get_provider(name: str) -> Provider:
    """The provider of store ``name``; :class:`~kvs.exception.NotFound` if it has none."""
    with _GUARD:
        provider = _PROVIDERS.get(name)
    if provider is None:
        error = exception.NotFound(str(name))
        error.message = f"store {name!r} declares no endpoints (no provider configured)"
        error.args = (error.message,)
        raise error
    return provider


def registered_providers() -> dict[str, Provider]:
    """A snapshot of the providers of this process."""
    with _GUARD:
        return dict(_PROVIDERS)


def resolve(address: str) -> Endpoint:
    """The endpoint at ``store.endpoint`` (or ``node.store.endpoint`` when
    ``[kvs] node_name`` is set and ``node`` is this node).  NotFound otherwise."""
    if not isinstance(address, str):
        raise exception.InvalidKey(f"an endpoint address must be a str, not "
                                   f"{type(address).__name__}")
    candidates = [address]
    if _node_name and address.startswith(_node_name + "."):
        candidates.insert(0, address[len(_node_name) + 1:])
    providers = registered_providers()
    for candidate in candidates:
        store, dot, endpoint = candidate.rpartition(".")
        if dot and store in providers and endpoint in providers[store].endpoints:
            return providers[store].endpoint(endpoint)
    error = exception.NotFound(address)
    error.message = f"no declared endpoint at address {address!r}"
    error.args = (error.message,)
    raise error


def reset_providers() -> None:
    """Stop every sampler thread and forget every provider (tests only)."""
    global _node_name
    with _GUARD:
        providers = list(_PROVIDERS.values())
        _PROVIDERS.clear()
        _node_name = None
    for provider in providers:
        provider.close()


def list_opts() -> list[tuple[str | cfg.OptGroup, list[cfg.Opt]]]:
    """Options for oslo-config-generator, under template section names."""
    return options.list_opts()
