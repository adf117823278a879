"""The command line: oslo.config CLI options and one argparse sub-parser per command."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from oslo_config import cfg

import kvs
from kvs.cli.session import CHECKOUT_CONFIG, FORMATS


def search_places() -> list[str]:
    """Where oslo.config looks for ``kvs.conf`` and ``kvs.conf.d`` (project ``kvs``), in
    order, home written ``~``: the first place that has one wins."""
    places = ["~/.kvs/", "~/", "/etc/kvs/", "/etc/"]
    for variable in ("SNAP_COMMON", "SNAP"):
        if os.environ.get(variable):
            places.append(os.path.join(os.environ[variable], "etc", "kvs") + os.sep)
    return places


def _found(paths: Sequence[str]) -> str:
    home = os.path.expanduser("~")
    shown = [("~" + path[len(home):]) if home != "/" and path.startswith(home + os.sep) else path
             for path in paths]
    return ", ".join(shown) or "none"


def config_file_help(found: Sequence[str]) -> str:
    """``--config-file`` help: the files the command reads without it."""
    places = search_places()
    text = (f"Config file to read; repeat it for more (later files win). Default: "
            f"{CHECKOUT_CONFIG} when it exists (running from a checkout), else the first of "
            f"{', '.join(place + 'kvs.conf' for place in places)} that exists "
            f"(found now: {_found(found)}).")
    return text.replace("%", "%%")  # argparse formats help with %


def config_dir_help(found: Sequence[str]) -> str:
    """``--config-dir`` help: the directory read without it."""
    places = search_places()
    text = (f"Directory whose *.conf files are read, sorted by name, after the config "
            f"files. Default: the first of "
            f"{', '.join(place + 'kvs.conf.d' for place in places)} that exists, read also "
            f"with --config-file (found now: {_found(found)}).")
    return text.replace("%", "%%")


class CommandConfigOpts(cfg.ConfigOpts):
    """The command's ``ConfigOpts``: ``--version``, and ``--config-file``/``--config-dir``
    help naming the files actually searched (oslo's stock help is generic).

    :func:`kvs.loader.load_config` parses it like any ``ConfigOpts``.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("version", f"kvs {kvs.__version__}")
        super().__call__(*args, **kwargs)

    @staticmethod
    def _make_config_options(default_config_files: list[str],
                             default_config_dirs: list[str]) -> list[cfg.Opt]:
        opts = cfg.ConfigOpts._make_config_options(default_config_files, default_config_dirs)
        helps = {"config-file": config_file_help(default_config_files),
                 "config-dir": config_dir_help(default_config_dirs)}
        for opt in opts:
            opt.help = helps.get(opt.name, opt.help)
        return opts


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
                                      "or plain text; text that looks like JSON (starts "
                                      "with [, { or \", or looks like a number) must parse")
    parser.add_argument("--string", action="store_true",
                        help="store VALUE as the text it is, never parsed as JSON")
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
