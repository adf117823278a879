"""From an ini file to configured stores.

``load_config(paths)`` parses the files with oslo.config, registers the
options of every ``[store:NAME]`` section it finds and validates every value,
so a bad value fails at load time with the option and section named.
``configure_stores(conf)`` then configures each store in the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import dogpile.cache
from dogpile.cache import make_region
from oslo_config import cfg

from kvs import conf as kvs_conf
from kvs import core, exception

LOG = logging.getLogger(__name__)


def _option_error(group: str, option: str, why: str) -> exception.ConfigurationError:
    return exception.ConfigurationError(
        f"option {option!r} in section [{group}]: {why}", option=option, section=group)


def store_names(conf: cfg.ConfigOpts) -> list[str]:
    """Names of the ``[store:NAME]`` sections in the parsed files, sorted."""
    prefix = kvs_conf.STORE_GROUP_PREFIX
    return sorted(section[len(prefix):] for section in conf.list_all_sections()
                  if section.startswith(prefix) and len(section) > len(prefix))


def load_config(paths: Sequence[str] | None = None, args: Sequence[str] | None = None,
                conf: cfg.ConfigOpts | None = None) -> cfg.ConfigOpts:
    """Parse ini files into a new (or the given) ``ConfigOpts`` and validate them.

    ``paths`` are config files read in order (later ones win); ``None`` uses
    oslo.config's standard search path for project ``kvs``.  ``args`` are
    command-line arguments (the CLI passes its own).
    """
    conf = conf if conf is not None else cfg.ConfigOpts()
    kvs_conf.register_opts(conf)
    # oslo.config looks for <project>.conf(.d) and <prog>.conf(.d); both are
    # kvs.conf for the kvs command, so each would be read twice.
    dirs = list(dict.fromkeys(cfg.find_config_dirs(project="kvs", prog="kvs")))
    if paths is None:
        files = list(dict.fromkeys(cfg.find_config_files(project="kvs", prog="kvs")))
    else:
        files = list(paths)
    try:
        conf(args=list(args or []), project="kvs", prog="kvs", default_config_files=files,
             default_config_dirs=dirs, validate_default_values=True)
    except cfg.ConfigFilesNotFoundError as exc:
        raise exception.ConfigurationError(
            f"config file not found: {', '.join(exc.config_files)}", option="config_file"
        ) from None
    except cfg.ConfigFileParseError as exc:
        raise exception.ConfigurationError(
            f"cannot parse config file {exc.config_file}: {exc.msg}", option="config_file"
        ) from None
    for name in store_names(conf):
        kvs_conf.register_store_opts(conf, name)
    validate(conf)
    return conf


def validate(conf: cfg.ConfigOpts) -> None:
    """Read every kvs option once so that bad values fail now, by name."""
    groups = [(kvs_conf.KVS_GROUP, kvs_conf.kvs_opts)]
    groups += [(kvs_conf.STORE_GROUP_PREFIX + name, kvs_conf.store_opts)
               for name in store_names(conf)]
    for group, opts in groups:
        for opt in opts:
            try:
                getattr(conf[group], opt.dest)
            except (cfg.ConfigFileValueError, ValueError):
                # oslo's message can quote the value, which may be a secret.
                raise _option_error(group, opt.name, "invalid value") from None
    for name in store_names(conf):
        group = kvs_conf.STORE_GROUP_PREFIX + name
        parse_backend_arguments(conf[group].backend_argument, group)


def parse_backend_arguments(items: Sequence[str], group: str) -> dict[str, str]:
    """``['name:value', ...]`` -> ``{name: value}``; values are never echoed."""
    parsed: dict[str, str] = {}
    for position, item in enumerate(items, start=1):
        name, sep, value = item.partition(":")
        name = name.strip()
        if not sep or not name:
            raise _option_error(group, "backend_argument",
                                f"entry {position} is not of the form name:value")
        if name in parsed:
            raise _option_error(group, "backend_argument", f"argument {name!r} given twice")
        parsed[name] = value.strip()
    return parsed


def _coerce_for_stock_backend(value: str) -> Any:
    """Ini text to a Python value for a stock dogpile backend.

    Unlike dogpile's ``coerce_string_conf`` this knows yes/no/on/off.  A
    numeric-looking string becomes a number, so quote-free passwords made of
    digits need a kvs backend (which parses per declared type).
    """
    lowered = value.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered == "none":
        return None
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def register_extra_backends(conf: cfg.ConfigOpts) -> None:
    """Register ``[kvs] backends`` entries with dogpile.cache."""
    for entry in conf.kvs.backends:
        name, sep, target = entry.partition("=")
        if not sep:
            target, name = entry, entry
        module, colon, cls = target.strip().partition(":")
        if not colon:
            module, _, cls = target.strip().rpartition(".")
        if not module or not cls:
            raise _option_error(kvs_conf.KVS_GROUP, "backends",
                                f"cannot read backend entry {entry!r}")
        dogpile.cache.register_backend(name.strip(), module, cls)


def store_arguments(conf: cfg.ConfigOpts, name: str) -> dict[str, Any]:
    """The ``configure()`` keyword arguments for ``[store:<name>]``."""
    group = kvs_conf.STORE_GROUP_PREFIX + name
    section = conf[group]
    backend = section.backend
    args: dict[str, Any] = dict(parse_backend_arguments(section.backend_argument, group))
    try:
        backend_cls = core._load_backend_class(backend)
    except exception.ConfigurationError as exc:
        raise _option_error(group, "backend", exc.message) from None
    if not hasattr(backend_cls, "parse_arguments"):
        args = {key: _coerce_for_stock_backend(value) for key, value in args.items()}
    lock_timeout = section.lock_timeout
    args["lock_timeout"] = conf.kvs.default_lock_timeout if lock_timeout is None else lock_timeout
    if section.lock_wait_timeout is not None:
        args["lock_wait_timeout"] = section.lock_wait_timeout
    elif args["lock_timeout"] == 0 and conf.kvs.default_lock_timeout > 0:
        args["lock_wait_timeout"] = conf.kvs.default_lock_timeout
    if section.key_prefix is not None:
        args["key_prefix"] = section.key_prefix
    args["serializer"] = section.serializer
    if section.default_ttl is not None:
        args["default_ttl"] = section.default_ttl
    args["enable_key_mangler"] = conf.kvs.enable_key_mangler
    args["security_strategy"] = section.security_strategy
    if section.secret_key is not None:
        args["secret_key"] = section.secret_key
    if section.secret_keys:
        args["secret_keys"] = list(section.secret_keys)
    return {"backing_store": backend, "proxy_list": list(section.proxies),
            "locking": section.locking, **args}


def configure_store(conf: cfg.ConfigOpts, name: str) -> core.KeyValueStore:
    """Configure ``[store:<name>]`` alone (configured alike before: returned as is).

    Errors name the section.  The declared-store provider is not built here.
    """
    group = kvs_conf.STORE_GROUP_PREFIX + name
    kwargs = store_arguments(conf, name)
    region = make_region(name=f"{conf.kvs.config_prefix}.{name}")
    store = core.get_key_value_store(name, kvs_region=region)
    try:
        store.configure(**kwargs)  # the same settings again: nothing to do
    except exception.AlreadyConfigured as exc:
        raise exception.AlreadyConfigured(f"[{group}] {exc.message}", store=name,
                                          section=group) from None
    except exception.ConfigurationError as exc:
        if exc.context.get("section"):
            raise
        raise exception.ConfigurationError(
            f"[{group}] {exc.message}", option=exc.context.get("option") or "backend_argument",
            section=group) from None
    return store


def configure_stores(conf: cfg.ConfigOpts) -> dict[str, core.KeyValueStore]:
    """Configure every ``[store:NAME]`` of ``conf``; return ``{name: store}``.

    Also builds the declared-store provider of every store that declares
    endpoints (see :mod:`kvs.provider`).  A store configured before (by an
    earlier call) is returned as it is.
    """
    register_extra_backends(conf)
    stores = {name: configure_store(conf, name) for name in store_names(conf)}
    # Declared stores sit above the core: imported here, not at module level.
    from kvs import provider

    provider.configure_providers(conf, stores)
    return stores
