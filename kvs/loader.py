"""From an ini file to configured stores.

Two ways in:

* **A service embeds kvs** in its own ``ConfigOpts`` (as with
  ``oslo_cache.configure(conf)``): :func:`register_opts` before the service
  parses its arguments and files, :func:`configure_stores` after.  Nothing
  here parses the service's config again or touches its own options.
* **kvs on its own** (the ``kvs`` command, scripts): :func:`load_config`
  parses files into a new ``ConfigOpts`` and checks ``[kvs]``, then
  :func:`configure_stores`.

Each ``[store:NAME]`` section is checked and configured on its own
(:func:`validate_store`, :func:`configure_store`): a broken section fails
alone, and :func:`configure_stores` raises
:class:`~kvs.exception.BrokenStores`, listing every broken section, only
after it has configured the healthy ones.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

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


def register_opts(conf: cfg.ConfigOpts) -> None:
    """Register kvs's ``[kvs]`` options on a service's own ``conf``, before it parses.

    The service then parses its own arguments and files as it always does,
    and calls :func:`configure_stores` with the same ``conf``.  From now on
    ``conf``'s ``[kvs]`` section (``default_lock_timeout``,
    ``enable_key_mangler``) also gives the defaults of stores the service
    configures itself with :meth:`~kvs.KeyValueStore.configure`.  Calling it
    again is harmless.
    """
    _register_kvs_opts(conf)
    core.use_service_defaults(conf)


def _register_kvs_opts(conf: cfg.ConfigOpts) -> None:
    from kvs.provider import options as provider_options

    try:
        kvs_conf.register_opts(conf)
    except cfg.DuplicateOptError as error:
        raise _option_error(kvs_conf.KVS_GROUP, error.opt_name,
                            "the service registered an option of this name differently"
                            ) from None
    provider_options.register_node_name(conf)


def _is_parsed(conf: cfg.ConfigOpts) -> bool:
    # oslo.config registers --config-file when a ConfigOpts is called (parsed).
    return "config_file" in conf


def load_config(paths: Sequence[str] | None = None, args: Sequence[str] | None = None,
                conf: cfg.ConfigOpts | None = None) -> cfg.ConfigOpts:
    """Parse ini files into a new (or the given, unparsed) ``ConfigOpts``; check ``[kvs]``.

    ``paths`` are config files read in order (later ones win); ``None`` uses
    oslo.config's standard search path for project ``kvs``.  ``args`` are
    command-line arguments (the CLI passes its own).  Store sections are
    checked by :func:`configure_stores` (or :func:`validate`), each on its own.

    A ``conf`` that is already parsed (a service's own) is refused with
    :class:`~kvs.exception.ConfigurationError`: parsing it again as project
    ``kvs`` would replace the service's files, options and flags.  Embed kvs
    with :func:`register_opts` and :func:`configure_stores` instead.
    """
    if conf is not None and _is_parsed(conf):
        raise exception.ConfigurationError(
            "load_config() was given a ConfigOpts that is already parsed; parsing it "
            "again would replace the service's own config files and options. Call "
            "kvs.register_opts(conf) before parsing and kvs.configure_stores(conf) after",
            option="conf")
    conf = conf if conf is not None else cfg.ConfigOpts()
    _register_kvs_opts(conf)
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
        # oslo's message quotes the offending line, which may hold a secret.
        found = re.match(r"at .*?:(\d+), (.*?)(?:: '.*')?$", str(exc.msg), re.DOTALL)
        where = f" at line {found.group(1)}: {found.group(2)}" if found else ""
        raise exception.ConfigurationError(
            f"cannot parse config file {exc.config_file}{where}", option="config_file"
        ) from None
    for name in store_names(conf):
        kvs_conf.register_store_opts(conf, name)
    validate_kvs_section(conf)
    return conf


def _read_all(conf: cfg.ConfigOpts, group: str, opts: Sequence[cfg.Opt]) -> None:
    for opt in opts:
        try:
            getattr(conf[group], opt.dest)
        except (cfg.ConfigFileValueError, ValueError):
            # oslo's message can quote the value, which may be a secret.
            raise _option_error(group, opt.name, "invalid value") from None


def validate_kvs_section(conf: cfg.ConfigOpts) -> None:
    """Read every ``[kvs]`` option once, so that a bad value fails now, by name."""
    _register_kvs_opts(conf)
    _read_all(conf, kvs_conf.KVS_GROUP, kvs_conf.kvs_opts)
    core.backend_entries(conf.kvs.backends)  # what register_extra_backends refuses


def store_problems(conf: cfg.ConfigOpts, name: str) -> list[exception.ConfigurationError]:
    """Every problem of ``[store:<name>]`` and its endpoint sections, configuring nothing.

    Every store option, every ``backend_argument`` entry, the store's
    declared-store options and each endpoint it declares are read and
    checked; each problem is a :class:`~kvs.exception.ConfigurationError`
    naming its section and option.  :func:`configure_store` then checks what
    only the backend can (argument names and types, secrets, proxies).
    """
    from kvs.provider import options as provider_options

    group = kvs_conf.register_store_opts(conf, name)
    problems: list[exception.ConfigurationError] = []

    def check(step: Any, *args: Any) -> Any:
        try:
            return step(*args)
        except exception.ConfigurationError as error:
            problems.append(error)
            return None

    for opt in kvs_conf.store_opts:
        check(_read_all, conf, group, [opt])
    if not problems:
        check(parse_backend_arguments, conf[group].backend_argument, group)
    check(provider_options.read_store_settings, conf, name)
    declared = check(provider_options.declared_endpoints, conf, name)
    for endpoint in declared or []:
        check(provider_options.read_endpoint_spec, conf, name, endpoint)
    for section in provider_options.stray_endpoint_sections(conf, {name: declared or []}):
        if section[len(provider_options.ENDPOINT_GROUP_PREFIX):].rpartition(".")[0] == name:
            problems.append(exception.ConfigurationError(
                f"section [{section}] configures an endpoint that [{group}] does not "
                f"declare in its endpoints option", option="endpoints", section=section))
    return problems


def validate_store(conf: cfg.ConfigOpts, name: str) -> None:
    """Raise the first of :func:`store_problems`, if any."""
    problems = store_problems(conf, name)
    if problems:
        raise problems[0]


def validate(conf: cfg.ConfigOpts) -> None:
    """Check ``[kvs]`` and every store section; raise :class:`~kvs.exception.BrokenStores`
    listing every broken section (``[kvs]`` errors raise at once)."""
    validate_kvs_section(conf)
    errors: dict[str, exception.KVSError] = {}
    for name in store_names(conf):
        try:
            validate_store(conf, name)
        except exception.ConfigurationError as error:
            errors[kvs_conf.STORE_GROUP_PREFIX + name] = error
    if errors:
        raise exception.BrokenStores(errors, {})


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
    """Register ``[kvs] backends`` entries with dogpile.cache.

    Keystone's rule: ``package.module.Class`` becomes ``openstack.kvs.Class``
    (see :func:`kvs.core.backend_entries` for every form).
    """
    core.register_backends(conf.kvs.backends)


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
    if section.near_cache is not None:
        args["near_cache"] = section.near_cache
    if section.near_cache_size is not None:
        args["near_cache_size"] = section.near_cache_size
    args["enable_key_mangler"] = conf.kvs.enable_key_mangler
    args["security_strategy"] = section.security_strategy
    if section.secret_key is not None:
        args["secret_key"] = section.secret_key
    if section.secret_keys:
        args["secret_keys"] = list(section.secret_keys)
    return {"backing_store": backend, "proxy_list": list(section.proxies),
            "locking": section.locking, **args}


def configure_store(conf: cfg.ConfigOpts, name: str) -> core.KeyValueStore:
    """Check and configure ``[store:<name>]`` alone (configured alike before: returned as is).

    Errors name the section.  The declared-store provider is not built here.
    """
    group = kvs_conf.STORE_GROUP_PREFIX + name
    validate_store(conf, name)
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
    except exception.UnsupportedProxy as exc:  # a configuration fault: name the section
        raise exception.ConfigurationError(
            f"[{group}] {exc.message}", option=exc.context.get("option") or "proxies",
            section=group) from None
    # Anything else (BackendUnavailable opening a file...) keeps its own type:
    # a retryable failure must not read as a misconfiguration.
    return store


def configure_stores(conf: cfg.ConfigOpts) -> dict[str, core.KeyValueStore]:
    """Configure every ``[store:NAME]`` of ``conf``; return ``{name: store}``.

    ``conf`` is parsed already: a service's own ``ConfigOpts`` (see
    :func:`register_opts`) or one from :func:`load_config`.  It is never parsed
    again; kvs's options are registered on it if they are not yet.

    Each section is checked and configured on its own.  If any is broken, the
    healthy ones are configured (and their providers built) first, then
    :class:`~kvs.exception.BrokenStores` lists every broken section with its
    error.  Also builds the declared-store provider of every store that
    declares endpoints (see :mod:`kvs.provider`).  A store configured alike
    before is returned as it is; configured differently, it is reported as
    broken with :class:`~kvs.exception.AlreadyConfigured`'s message.
    """
    validate_kvs_section(conf)
    register_extra_backends(conf)
    # Declared stores sit above the core: imported here, not at module level.
    from kvs import provider

    stores: dict[str, core.KeyValueStore] = {}
    errors: dict[str, exception.KVSError] = {}
    for name in store_names(conf):
        group = kvs_conf.STORE_GROUP_PREFIX + name
        try:
            store = configure_store(conf, name)
            # One provider at a time: a declared store whose backend is down
            # (its initial values cannot be written) fails alone too.
            provider.configure_providers(conf, {name: store}, warn_unknown=False)
        except exception.KVSError as error:
            errors[group] = error
            continue
        except Exception as error:  # a backend's own constructor, say: never its text
            errors[group] = exception.ConfigurationError(
                f"[{group}] cannot be configured: {type(error).__name__}", section=group)
            continue
        stores[name] = store
    provider.warn_unknown_stores(conf, dict.fromkeys(store_names(conf)))
    if errors:
        raise exception.BrokenStores(errors, stores)
    return stores
