"""Run the examples of the docs: rewriting, shell transcripts, python blocks.

Rewriting points an example at what the test owns, applied alike to the
example and to the output it shows:

* absolute paths under ``/var``, ``/etc`` and ``/run`` move into the
  example's working directory (their parent directories are created);
* ``host:port`` addresses become a server the test started (see
  ``Targets.addresses``) or, for any other address, a loopback port that
  nobody listens on.
"""

from __future__ import annotations

import ast
import dataclasses
import doctest
import io
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import tokenize
from pathlib import Path
from typing import Any

from tests.docs import netguard
from tests.docs.extract import ROOT, Block

STAND_INS = Path(__file__).resolve().parent / "stand_ins"

PATH = re.compile(r"(?<![\w.~-])/(?:var|etc|run)/[\w.@+-]+(?:/[\w.@+-]+)*")
ADDRESS = re.compile(
    # After ':' too (servers:HOST:11211) and '/' (redis://HOST:6379).
    r"(?<![\w.-])((?:\d{1,3}\.){3}\d{1,3}|localhost|[a-z][a-z0-9-]*(?:\.[a-z0-9-]+)+)"
    r":(\d{2,5})\b")


@dataclasses.dataclass
class Targets:
    """Where one example's paths and addresses go."""

    cwd: Path
    closed: str                                    # "127.0.0.1:PORT", nobody listens
    addresses: dict[str, str] = dataclasses.field(default_factory=dict)
    ports: set[int] = dataclasses.field(default_factory=set)  # the guard lets these through

    def rewrite(self, text: str) -> str:
        def path(match: re.Match[str]) -> str:
            moved = self.cwd / match.group(0).lstrip("/")
            moved.parent.mkdir(parents=True, exist_ok=True)
            return str(moved)

        def address(match: re.Match[str]) -> str:
            return self.addresses.get(match.group(0), self.closed)

        return ADDRESS.sub(address, PATH.sub(path, text))

    def environment(self) -> dict[str, str]:
        """The environment of the ``kvs`` commands an example runs."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("KVS_", "OS_"))}
        env.update(netguard.environment(self.ports | {int(self.closed.rpartition(":")[2])},
                                        [str(self.cwd)]))
        env.update({"HOME": str(self.cwd), "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join([str(ROOT), str(STAND_INS)]),
                    "COLUMNS": "100"})
        return env


# -- shell transcripts --------------------------------------------------------

@dataclasses.dataclass
class Command:
    text: str
    argv: list[str]
    expected: list[str] = dataclasses.field(default_factory=list)
    status: int = 0

    @property
    def interrupt_after(self) -> int | None:
        """How many output lines come before the ``^C`` line, if it has one."""
        return self.expected.index("^C") if "^C" in self.expected else None

    @property
    def answer(self) -> str | None:
        """What the user types at a ``[y/N]`` prompt shown in the output."""
        for line in self.expected:
            match = re.search(r"\[y/N\] (\S+)$", line)
            if match:
                return match.group(1)
        return None


def parse_transcript(text: str) -> list[Command]:
    """``$ command`` lines, each with the output below it and its ``[exit N]``.

    A block with no ``$`` line is a script: every line is a command.
    """
    lines = text.splitlines()
    if not any(line.startswith("$ ") for line in lines):
        return [Command(line, shlex.split(line, comments=True))
                for line in lines if line.strip() and not line.lstrip().startswith("#")]
    commands: list[Command] = []
    for line in lines:
        if line.startswith("$ "):
            commands.append(Command(line[2:], shlex.split(line[2:], comments=True)))
        elif commands:
            commands[-1].expected.append(line)
        elif line.strip():
            raise ValueError(f"output before the first command: {line!r}")
    for command in commands:
        while command.expected and not command.expected[-1].strip():
            command.expected.pop()
        if command.expected and (match := re.fullmatch(r"\[exit (\d+)\]",
                                                       command.expected[-1].strip())):
            command.status = int(match.group(1))
            command.expected.pop()
        command.expected = [line for line in command.expected if line.strip()]
    return commands


_VOLATILE = [
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?\+00:00",   # timestamps
    r"\b[0-9a-f]{32}\b",                                   # lease tokens
    r"\d+(?:\.\d+)? s left",                               # time left on a lease
]
_NUMBER = r"\d[\d,]*(?:\.\d+)?"


def line_pattern(expected: str, loose_numbers: bool) -> re.Pattern[str]:
    """A regex for one shown output line: spaces collapsed, volatile parts wildcards."""
    expected = " ".join(expected.split())
    volatile = _VOLATILE + ([_NUMBER] if loose_numbers else [])
    wildcards = {_VOLATILE[0]: r"\S+", _VOLATILE[1]: r"[0-9a-f]{32}",
                 _VOLATILE[2]: r"\d+(?:\.\d+)? s left", _NUMBER: _NUMBER}
    combined = re.compile("|".join(f"({p})" for p in volatile))
    pattern, last = "", 0
    for match in combined.finditer(expected):
        pattern += re.escape(expected[last:match.start()])
        group = next(i for i, g in enumerate(match.groups()) if g is not None)
        pattern += wildcards[volatile[group]]
        last = match.end()
    return re.compile(pattern + re.escape(expected[last:]))


def check_output(command: Command, actual: str, status: int | None, loose_numbers: bool,
                 where: str) -> None:
    shown = [line for line in command.expected if line != "^C"]
    got = [" ".join(line.split()) for line in actual.splitlines() if line.strip()]
    report = (f"{where}: `{command.text}`\n--- shown in the docs (status {command.status}):\n"
              + "\n".join(shown) + f"\n--- got (status {status}):\n" + "\n".join(got))
    assert status == command.status, report
    if not shown:
        return  # the docs show no output for it: only the status is checked
    assert len(got) == len(shown), report
    for expected, line in zip(shown, got):
        assert line_pattern(expected, loose_numbers).fullmatch(line), \
            f"{report}\n--- first difference:\n{expected}\n{line}"


class Running:
    """A ``kvs`` command in the background ("in another shell")."""

    def __init__(self, argv: list[str], targets: Targets, stdin: str | None = None) -> None:
        self.process = subprocess.Popen(
            kvs_command(argv), cwd=targets.cwd, env=targets.environment(), text=True,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        if stdin is not None:
            assert self.process.stdin is not None
            self.process.stdin.write(stdin)
            self.process.stdin.close()
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_lines(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(1 for line in self.lines if line.strip()) < count:
                if self.process.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"exited ({self.process.returncode}) before printing "
                                         f"{count} lines: {''.join(self.lines)}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {count} lines after {timeout} s: "
                                         f"{''.join(self.lines)}")
                self._changed.wait(min(left, 0.2))

    def interrupt(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 20.0) -> tuple[int | None, str]:
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            self._reader.join(5)
            return None, "".join(self.lines) + "\n(killed: did not end in time)"
        self._reader.join(5)
        return self.process.returncode, "".join(self.lines)


def kvs_command(argv: list[str]) -> list[str]:
    if not argv or argv[0] != "kvs":
        raise AssertionError(f"only `kvs` commands run; mark this block no-run: {argv}")
    return [sys.executable, "-c", netguard.BOOTSTRAP, *argv[1:]]


def run_kvs(argv: list[str], targets: Targets, stdin: str | None = None,
            timeout: float = 60.0) -> tuple[int, str]:
    done = subprocess.run(kvs_command(argv), cwd=targets.cwd, env=targets.environment(),
                          input=stdin if stdin is not None else "", text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return done.returncode, done.stdout


def echo_answer(output: str, answer: str | None) -> str:
    """What a terminal shows: the answer typed at the prompt, then a new line."""
    if answer is None:
        return output
    return re.sub(r"\[y/N\] ", f"[y/N] {answer}\n", output, count=1)


def run_transcript(block: Block, text: str, targets: Targets) -> int:
    """Run every command of a shell block and compare what it prints; return the count."""
    where = block.id
    commands = parse_transcript(text)
    loose = block.has("loose-numbers")

    def hidden(directive: str) -> list[list[str]]:
        return [shlex.split(targets.rewrite(d.command), comments=True)
                for d in block.all(directive)]

    for argv in hidden("setup"):
        status, output = run_kvs(argv, targets)
        assert status == 0, f"{where}: setup `{shlex.join(argv)}` failed ({status}):\n{output}"
    holders = []
    for argv in hidden("while"):
        holder = Running(argv, targets)
        holder.wait_lines(1)
        holders.append(holder)
    background_numbers: set[int] = set()
    for directive in block.all("background"):
        background_numbers |= {int(n) for n in re.split(r"[,\s]+", directive.argument) if n}
    background: list[tuple[Command, Running]] = []
    try:
        for number in sorted(background_numbers):
            command = commands[number - 1]
            running = Running(command.argv, targets, command.answer)
            running.wait_lines(1)
            background.append((command, running))
        for number, command in enumerate(commands, start=1):
            if number in background_numbers:
                continue
            if command.interrupt_after is not None:
                running = Running(command.argv, targets, command.answer)
                running.wait_lines(1)
                background.append((command, running))
                continue
            status, output = run_kvs(command.argv, targets, command.answer)
            check_output(command, echo_answer(output, command.answer), status, loose, where)
        for argv in hidden("after"):
            status, output = run_kvs(argv, targets)
            assert status == 0, f"{where}: `{shlex.join(argv)}` failed ({status}):\n{output}"
        for command, running in background:
            if command.interrupt_after is not None:
                running.wait_lines(command.interrupt_after)
                running.interrupt()
            status_or_none, output = running.finish()
            check_output(command, echo_answer(output, command.answer), status_or_none, loose,
                         where)
    finally:
        for _, running in background:
            running.interrupt()
            running.finish(10)
        for holder in holders:
            holder.interrupt()
            holder.finish(10)
    return len(commands)


def parse_shell(text: str) -> int:
    """Parse-only check of a shell block: every command splits with shlex."""
    return len(parse_transcript(text))


# -- python blocks ------------------------------------------------------------

def _comments(source: str) -> dict[int, str]:
    found: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string.lstrip("#").strip()
    return found


def _shown_value(comment: str) -> tuple[bool, Any]:
    """The Python literal a comment shows as a result (``# 0.75``), if it is one."""
    candidates = [comment, comment.split(" (")[0], comment.split(";")[0]]
    for candidate in candidates:
        try:
            value = ast.literal_eval(candidate.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if "..." in candidate:
            return False, None  # an elided result: nothing to compare
        return True, value
    return False, None


def is_doctest(source: str) -> bool:
    return any(line.lstrip().startswith(">>> ") for line in source.splitlines())


def run_statements(source: str, block: Block, namespace: dict[str, Any]) -> int:
    """Run a python block statement by statement; return how many results were checked.

    A top-level statement whose trailing comment starts with ``raises NAME``
    must raise that exception; an expression whose trailing comment is a
    Python literal (``store.get("peaches")  # 0.75``) must evaluate to it.
    """
    import pytest

    tree = ast.parse(source, filename=block.path)
    ast.increment_lineno(tree, block.line)
    comments = {line + block.line: text for line, text in _comments(source).items()}
    checked = 0
    for statement in tree.body:
        comment = comments.get(statement.end_lineno or statement.lineno, "")
        raises = re.match(r"raises\s+([\w.]+)", comment)
        where = f"{block.path}:{statement.lineno}"
        if raises:
            error = eval(raises.group(1), namespace)  # a name the docs show, e.g. kvs.exception.X
            with pytest.raises(error):
                exec(compile(ast.Module([statement], []), block.path, "exec"), namespace)
            checked += 1
            continue
        if isinstance(statement, ast.Expr):
            value = eval(compile(ast.Expression(statement.value), block.path, "eval"), namespace)
            shown, literal = _shown_value(comment)
            if shown:
                assert value == literal and type(value) is type(literal), \
                    f"{where}: the docs show {literal!r}, got {value!r}"
                checked += 1
            continue
        exec(compile(ast.Module([statement], []), block.path, "exec"), namespace)
    return checked


def run_doctest(source: str, block: Block, namespace: dict[str, Any]) -> int:
    parser = doctest.DocTestParser()
    test = parser.get_doctest(source, namespace, block.id, block.path, block.line)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out: list[str] = []
    result = runner.run(test, out=out.append, clear_globs=False)
    assert result.failed == 0, "".join(out)
    return result.attempted


def parse_python(source: str, block: Block) -> None:
    """Parse-only check: the block (or each doctest example) is valid Python."""
    if is_doctest(source):
        for example in doctest.DocTestParser().get_examples(source):
            ast.parse(example.source, filename=block.id)
    else:
        ast.parse(source, filename=block.id)
