"""oslo.config options of declared stores, and their parsing into endpoint specs.

A store declares its endpoints in its own section::

    [store:prices]
    backend = kvs.sqlite
    endpoints = peaches, chips, status

and each endpoint may have a section ``[endpoint:<store>.<endpoint>]``.  The
options are registered per section when :func:`kvs.provider.configure_providers`
runs, and every value is read once there, so a bad value fails at load time
with a :class:`~kvs.exception.ConfigurationError` naming section and option.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, TypeVar

from oslo_config import cfg

from kvs import conf as kvs_conf
from kvs import exception
from kvs.provider.broadcast import BroadcastPolicy
from kvs.provider.calibration import Calibration, MapCalibration, TemplateCalibration, literal

KVS_GROUP = "kvs"
STORE_GROUP_PREFIX = "store:"
ENDPOINT_GROUP_PREFIX = "endpoint:"

#: Where the sample config documents the options of an [endpoint:STORE.NAME] section.
ENDPOINT_TEMPLATE = cfg.OptGroup(
    "endpoint_template", title="Options of each [endpoint:STORE.NAME] section",
    help="The options of one declared endpoint, read from a section named "
         "[endpoint:STORE.NAME] (for example [endpoint:prices.peaches]) for each endpoint a "
         "store lists in its endpoints option; this section itself is never read.")
#: Default alert channel prefix: dripline's ``sensor_value.<endpoint>``.
DEFAULT_CHANNEL_PREFIX = "sensor_value"

_ENDPOINT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")

node_name_opt = cfg.StrOpt(
    "node_name",
    help="Name of this node for addressing declared endpoints: with it set, "
         "kvs.resolve() also accepts '<node_name>.<store>.<endpoint>'.")

store_opts = [
    cfg.ListOpt("endpoints", default=[],
                help="Names of the declared endpoints of this store (its keys). Each may "
                     "have an [endpoint:<store>.<name>] section."),
    cfg.BoolOpt("autostart_logging", default=False,
                help="Start scheduled logging of every endpoint with a schedule_interval "
                     "when the store is configured (default: wait for start_logging())."),
    cfg.IntOpt("event_log_size", default=1000, min=16,
               help="Change events kept in the store for watchers in other processes "
                    "(a ring buffer); a watcher further behind than this misses events."),
]

endpoint_opts = [
    cfg.StrOpt("initial_value",
               help="Value written when the key does not exist yet: a JSON literal when it "
                    "is one (0.75, true, [1, 2], \"text\"), otherwise the text itself."),
    cfg.StrOpt("calibration",
               help="Template turning the raw value {} into value_cal, e.g. 2*{} or "
                    "times3({}): numbers, + - * / // % **, unary minus, parentheses and "
                    "registered calibration functions only."),
    cfg.DictOpt("calibration_map",
                help="Map calibration, e.g. CLOSE:on, OPEN:off. Values are JSON literals "
                     "when they are one. Exclusive with calibration."),
    cfg.BoolOpt("get_on_set", default=False,
                help="set() returns the get() result of the value just stored."),
    cfg.BoolOpt("log_on_set", default=False,
                help="Every set() broadcasts the new value (reason on_set) and resets the "
                     "broadcast baseline."),
    cfg.FloatOpt("schedule_interval", default=0.0, min=0,
                 help="Seconds between scheduled samples; 0 disables scheduled logging."),
    cfg.FloatOpt("max_interval", default=0.0, min=0,
                 help="Broadcast a sample when more than this many seconds passed since "
                      "the last broadcast; 0 disables the rule."),
    cfg.FloatOpt("max_fractional_change", min=0,
                 help="Broadcast a sample whose symmetric relative change "
                      "2|new-old|/(|new|+|old|) exceeds this; unset disables the rule."),
    cfg.FloatOpt("max_absolute_change", min=0,
                 help="Broadcast a sample that moved by more than this; unset disables "
                      "the rule."),
    cfg.StrOpt("alert_channel",
               help="Channel of this endpoint's broadcasts (Redis pub/sub). "
                    "Default: sensor_value.<endpoint>."),
]


@dataclasses.dataclass(frozen=True)
class EndpointSpec:
    """Everything the configuration says about one endpoint."""

    store: str
    name: str
    initial_value: Any = None
    calibration: Calibration | None = None
    get_on_set: bool = False
    log_on_set: bool = False
    schedule_interval: float = 0.0
    policy: BroadcastPolicy = dataclasses.field(default_factory=BroadcastPolicy)
    alert_channel: str = ""

    @property
    def section(self) -> str:
        return endpoint_group(self.store, self.name)

    @property
    def address(self) -> str:
        return f"{self.store}.{self.name}"


def store_group(store: str) -> str:
    return STORE_GROUP_PREFIX + store


def endpoint_group(store: str, endpoint: str) -> str:
    return f"{ENDPOINT_GROUP_PREFIX}{store}.{endpoint}"


def option_error(section: str, option: str, why: str) -> exception.ConfigurationError:
    return exception.ConfigurationError(
        f"option {option!r} in section [{section}]: {why}", option=option, section=section)


T = TypeVar("T")


def _read(conf: cfg.ConfigOpts, section: str, option: str,
          convert: Callable[[Any], T] | None = None) -> Any:
    """Read one option, turning oslo's value errors into ConfigurationError."""
    try:
        value = getattr(conf[section], option)
    except (cfg.ConfigFileValueError, ValueError):
        # oslo's message quotes the value, which is no business of a log line.
        raise option_error(section, option, "invalid value") from None
    return convert(value) if convert is not None and value is not None else value


def _register(conf: cfg.ConfigOpts, opts: list[cfg.Opt], group: str) -> None:
    try:
        conf.register_opts(opts, group=group)
    except cfg.DuplicateOptError as error:
        raise exception.ConfigurationError(
            f"section [{group}]: option {error.opt_name!r} is already registered differently",
            option=error.opt_name, section=group) from None


def register_store_opts(conf: cfg.ConfigOpts, store: str) -> None:
    """Register ``endpoints`` and friends on ``[store:<store>]``."""
    _register(conf, store_opts, store_group(store))


def register_node_name(conf: cfg.ConfigOpts) -> None:
    """Register ``[kvs] node_name`` unless the core already did."""
    try:
        conf.kvs.node_name  # noqa: B018 (probing for the option)
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError, AttributeError):
        conf.register_opt(node_name_opt, group=KVS_GROUP)


def node_name(conf: cfg.ConfigOpts) -> str | None:
    register_node_name(conf)
    value = _read(conf, KVS_GROUP, "node_name")
    return value or None


def declared_endpoints(conf: cfg.ConfigOpts, store: str) -> list[str]:
    """The endpoint names ``[store:<store>]`` declares, validated."""
    register_store_opts(conf, store)
    section = store_group(store)
    names = [name.strip() for name in _read(conf, section, "endpoints")]
    seen: set[str] = set()
    for name in names:
        if not _ENDPOINT_NAME.match(name):
            raise option_error(section, "endpoints",
                               f"endpoint name {name!r} must be letters, digits, _ or - "
                               f"(not starting with a digit or -)")
        if name in seen:
            raise option_error(section, "endpoints", f"endpoint {name!r} is declared twice")
        seen.add(name)
    return names


def read_store_settings(conf: cfg.ConfigOpts, store: str) -> dict[str, Any]:
    """The store-level provider options (``autostart_logging``, ``event_log_size``)."""
    register_store_opts(conf, store)
    section = store_group(store)
    return {"autostart_logging": bool(_read(conf, section, "autostart_logging")),
            "event_log_size": int(_read(conf, section, "event_log_size"))}


def read_endpoint_spec(conf: cfg.ConfigOpts, store: str, name: str) -> EndpointSpec:
    """Register and read ``[endpoint:<store>.<name>]`` (absent sections give defaults)."""
    section = endpoint_group(store, name)
    _register(conf, endpoint_opts, section)

    initial = _read(conf, section, "initial_value", literal)
    template = _read(conf, section, "calibration")
    mapping = _read(conf, section, "calibration_map")
    if template is not None and mapping:
        raise option_error(section, "calibration",
                           "set calibration or calibration_map, not both")
    calibration: Calibration | None = None
    if template is not None:
        calibration = TemplateCalibration(template, where=f"[{section}] calibration")
    elif mapping is not None:
        calibration = MapCalibration(mapping, where=f"[{section}] calibration_map")

    channel = _read(conf, section, "alert_channel")
    if channel is not None and not channel.strip():
        raise option_error(section, "alert_channel", "must not be empty")
    return EndpointSpec(
        store=store,
        name=name,
        initial_value=initial,
        calibration=calibration,
        get_on_set=bool(_read(conf, section, "get_on_set")),
        log_on_set=bool(_read(conf, section, "log_on_set")),
        schedule_interval=float(_read(conf, section, "schedule_interval")),
        policy=BroadcastPolicy(
            max_interval=float(_read(conf, section, "max_interval")),
            max_absolute_change=_read(conf, section, "max_absolute_change", float),
            max_fractional_change=_read(conf, section, "max_fractional_change", float),
        ),
        alert_channel=(channel or f"{DEFAULT_CHANNEL_PREFIX}.{name}").strip(),
    )


def stray_endpoint_sections(conf: cfg.ConfigOpts, declared: dict[str, list[str]]) -> list[str]:
    """``[endpoint:S.E]`` sections of known stores ``S`` whose ``E`` is not declared."""
    stray = []
    for section in conf.list_all_sections():
        if not section.startswith(ENDPOINT_GROUP_PREFIX):
            continue
        address = section[len(ENDPOINT_GROUP_PREFIX):]
        for store, names in declared.items():
            prefix = store + "."
            # A longer store name may own it ("a.b" vs "a"): only stray if no
            # known store declares it exactly.
            if (address.startswith(prefix) and address[len(prefix):] not in names
                    and not any(address == f"{other}.{ep}"
                                for other, eps in declared.items() for ep in eps)):
                stray.append(section)
    return sorted(set(stray))


def list_opts() -> list[tuple[str | cfg.OptGroup, list[cfg.Opt]]]:
    """Options for oslo-config-generator, under template section names."""
    return [
        (KVS_GROUP, [node_name_opt]),
        (kvs_conf.STORE_TEMPLATE, list(store_opts)),
        (ENDPOINT_TEMPLATE, list(endpoint_opts)),
    ]
