"""The ``kvs`` command: operate any configured store from a shell.

``kvs [--config-file FILE] [--config-dir DIR] [--format table|json] [--debug] COMMAND ...``

Options and sub-commands are oslo.config CLI options (a ``SubCommandOpt``, as
in ``keystone-manage``).  Without ``--config-file`` the command reads
``etc/kvs.conf`` when run from a checkout, else oslo.config's standard search
path for project ``kvs`` (``~/.kvs/kvs.conf``, ``~/kvs.conf``,
``/etc/kvs/kvs.conf``, ``/etc/kvs.conf``).

``python -m kvs`` and ``python -m kvs.cli`` run it too; ``kvs --version``
prints ``kvs <version>``.

Exit statuses (see :data:`EXIT_STATUSES`): 0 success; 1 not found, a failed
check or a declined confirmation; 2 usage or configuration error (unknown
store, missing or unreadable config file or directory, no config found for
``stores``, a VALUE that is broken JSON); 3 backend unavailable; 4 lease held
by another holder (or lost), or endpoint locked out; 5 a stored value cannot
be read (corrupt or tampered); 70 internal error (a bug); 130 interrupted.
Errors are one line on stderr (``kvs: MESSAGE``; with ``--format json`` the
JSON object ``{"error": MESSAGE, "status": N}``, and all of stderr is JSON
lines); ``--debug`` adds the traceback.  Nothing printed contains a secret of
the configuration (see :class:`kvs.cli.output.Scrubber`).

Modules: :mod:`~kvs.cli.parsers` (the command line), :mod:`~kvs.cli.session`
(configuration, stores, output, exit statuses), one module per group of
commands (:mod:`~kvs.cli.data`, :mod:`~kvs.cli.leases`,
:mod:`~kvs.cli.declared`, :mod:`~kvs.cli.health`) and :mod:`~kvs.cli.output`
(tables, JSON, secret scrubbing).  This module runs a command.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import TextIO

from oslo_config import cfg

from kvs import exception, loader
from kvs.cli.data import cmd_delete, cmd_get, cmd_set, cmd_stores
from kvs.cli.declared import cmd_endpoints, cmd_watch
from kvs.cli.health import cmd_bench, cmd_check, cmd_demo
from kvs.cli.leases import cmd_lock, cmd_unlock
from kvs.cli.output import Scrubber, to_json
from kvs.cli.parsers import COMMAND_NAMES, CommandConfigOpts, cli_opts
from kvs.cli.session import (
    CHECKOUT_CONFIG,
    EXIT_DATA,
    EXIT_FAILED,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_STATUSES,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    Failure,
    Session,
)

__all__ = ["COMMANDS", "EXIT_STATUSES", "main"]

COMMANDS: dict[str, Callable[[Session], int]] = {
    "stores": cmd_stores, "get": cmd_get, "set": cmd_set, "delete": cmd_delete,
    "lock": cmd_lock, "unlock": cmd_unlock, "endpoints": cmd_endpoints, "watch": cmd_watch,
    "check": cmd_check, "bench": cmd_bench, "demo": cmd_demo,
}


#: Errors that are the configuration's or the command line's fault (status 2).
USAGE_ERRORS: tuple[type[BaseException], ...] = (
    exception.ConfigurationError, exception.InvalidKey, exception.NotConfigured,
    exception.AlreadyConfigured, exception.SerializationError, exception.ValueTooLarge,
    exception.UnsupportedProxy, exception.UnconfirmedWrite, exception.CalibrationError,
    cfg.Error)


def status_of(error: BaseException) -> int:
    """The exit status for an error a command raised (see :data:`EXIT_STATUSES`).

    Only a missing key is status 1 ("not found"); an error no command expects
    is :data:`EXIT_INTERNAL`, never 1.
    """
    if isinstance(error, Failure):
        return error.status
    if isinstance(error, exception.NotFound):
        return EXIT_FAILED
    if isinstance(error, exception.BackendUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(error, (exception.LockTimeout, exception.Locked)):
        return EXIT_LOCKED
    if isinstance(error, (exception.CorruptValue, exception.TamperedValue)):
        return EXIT_DATA
    if isinstance(error, USAGE_ERRORS):
        return EXIT_USAGE
    return EXIT_INTERNAL


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


def default_config_files() -> list[str] | None:
    """``etc/kvs.conf`` when run from a checkout, else None: oslo.config's search path.

    :func:`kvs.loader.load_config` reads each default file and directory once.
    """
    return [CHECKOUT_CONFIG] if os.path.isfile(CHECKOUT_CONFIG) else None


class ScrubbingFormatter(logging.Formatter):
    """``kvs: warning: ...``; with ``as_json``, ``{"log": "warning", "message": "..."}``."""

    def __init__(self, scrub: Scrubber, as_json: bool = False) -> None:
        super().__init__("kvs: %(levelname)s: %(message)s")
        self._scrub = scrub
        self._json = as_json

    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        if self._json:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + self.formatException(record.exc_info)
            return to_json({"log": record.levelname, "message": self._scrub(message)},
                           indent=None)
        return self._scrub(super().format(record))


def _setup_logging(debug: bool, scrub: Scrubber, stderr: TextIO,
                   as_json: bool = False) -> logging.Handler:
    handler = logging.StreamHandler(stderr)
    handler.setFormatter(ScrubbingFormatter(scrub, as_json))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("kvs").setLevel(logging.DEBUG if debug else logging.WARNING)
    return handler


def _load_error(error: BaseException) -> exception.ConfigurationError | None:
    """The configuration error for what oslo.config or the OS raised while loading."""
    if isinstance(error, cfg.ConfigDirNotFoundError):
        return exception.ConfigurationError(
            f"config directory not found: {error.config_dir}", option="config_dir")
    if isinstance(error, cfg.ConfigFilesPermissionDeniedError):
        return exception.ConfigurationError(
            f"cannot read config file {', '.join(error.config_files)}: permission denied",
            option="config_file")
    if isinstance(error, OSError):  # a --config-file that is a directory, unreadable, ...
        what = (error.strerror or type(error).__name__).lower()
        where = f" {error.filename}" if error.filename else ""
        return exception.ConfigurationError(f"cannot read config file{where}: {what}",
                                            option="config_file")
    if isinstance(error, cfg.Error):
        return exception.ConfigurationError(f"invalid configuration: {error}")
    return None


def load(conf: cfg.ConfigOpts, argv: Sequence[str], stderr: TextIO,
         as_json: bool = False) -> int | None:
    """Parse ``argv`` and the config files into ``conf``; an exit status if that ends the run.

    argparse prints usage and a message itself and exits; its output is
    captured so that a usage error stays one line (a JSON object with
    ``as_json``).  What oslo.config or the OS raise while reading the files
    becomes a :class:`~kvs.exception.ConfigurationError`.
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
        message = lines[-1] if lines else "kvs: invalid arguments"
        if as_json:
            message = to_json({"error": re.sub(r"^kvs( [\w-]+)?: error: ", "", message),
                               "status": EXIT_USAGE}, indent=None)
        stderr.write(message + "\n")
        return EXIT_USAGE
    except (cfg.Error, OSError) as error:
        replacement = _load_error(error)
        if replacement is None:
            raise
        raise replacement from None
    stderr.write(captured.getvalue())
    return None


def report(error: BaseException, status: int, stderr: TextIO, scrub: Scrubber,
           as_json: bool, debug: bool) -> None:
    """Print ``error`` on stderr: one line ``kvs: MESSAGE`` (the traceback before it with
    ``debug``), or with ``as_json`` one JSON object ``{"error", "status"}`` (and
    ``"traceback"`` with ``debug``)."""
    message = error.message if isinstance(error, exception.KVSError) else str(error)
    if not isinstance(error, (exception.KVSError, Failure, KeyboardInterrupt)):
        message = f"unexpected {type(error).__name__}: {message}"
    message = scrub(message)
    if as_json:
        data: dict[str, object] = {"error": message, "status": status}
        if debug:
            data["traceback"] = scrub(traceback.format_exc())
        stderr.write(to_json(data, indent=None) + "\n")
    else:
        if debug:
            stderr.write(scrub(traceback.format_exc()))
        stderr.write(f"kvs: {message}\n")
    stderr.flush()


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None, stdin: TextIO | None = None) -> int:
    """Run the ``kvs`` command; return its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    stdin = stdin or sys.stdin
    scrub = Scrubber()
    debug = "--debug" in args
    as_json = _format_in(args) == "json"
    handler = _setup_logging(debug, scrub, stderr, as_json)
    conf = CommandConfigOpts()
    conf.register_cli_opts(cli_opts())
    session: Session | None = None
    try:
        try:
            ended = load(conf, args, stderr, as_json)
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
        as_json = session.json
        return COMMANDS[session.command](session)
    except KeyboardInterrupt:
        report(Failure("interrupted", EXIT_INTERRUPTED), EXIT_INTERRUPTED, stderr, scrub,
               as_json, debug=False)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (kvs watch | head): stop quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        return EXIT_OK
    except Exception as error:  # one line per error, no traceback unless --debug
        status = status_of(error)
        report(error, status, stderr, scrub, as_json, debug)
        return status
    finally:
        if session is not None:
            session.close()
        logging.getLogger().removeHandler(handler)
