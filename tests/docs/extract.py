"""Fenced code blocks of the Markdown docs, with the directives that say how to run them.

A block is a fenced code block of README.md or doc/**/*.md, found with its
file, the line of its opening fence (``README.md:54``), its language and the
section (the nearest heading above it).  Languages are normalised:
``python``/``py``/``pycon`` -> ``python``; ``sh``/``shell``/``console``/``bash``
-> ``shell``; ``ini``/``cfg`` -> ``ini``; anything else (or nothing) is not an
example.

Directives are HTML comments (invisible when rendered) on the lines right
above the fence, ``<!-- example: DIRECTIVE; DIRECTIVE -->``; commands inside
directives are written in backticks.  See tests/docs/README.md for the list.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

LANGUAGES = {
    "python": "python", "py": "python", "pycon": "python",
    "sh": "shell", "shell": "shell", "console": "shell", "bash": "shell",
    "ini": "ini", "cfg": "ini",
}

#: Directive name -> whether it takes an argument.
DIRECTIVES = {
    "no-run": True,        # (reason): parsed only
    "continues": False,    # python: runs after the previous python block, same namespace
    "file": True,          # ini: also written as this file for later shell blocks of the file
    "setup": True,         # `command`: run first, must exit 0 (output not checked)
    "while": True,         # `command`: runs in the background for the whole block
    "after": True,         # `command`: run after the visible commands, must exit 0
    "background": True,    # N[, M]: these commands start first, as in another shell
    "servers-down": False,  # the example's servers are unreachable
    "loose-numbers": False,  # any number in the shown output matches any number
    "pytest": False,       # python: the block is a test module, run with pytest
}

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$")
_COMMENT = re.compile(r"^\s*<!--\s*example:(?P<body>.*?)-->\s*$")


@dataclasses.dataclass(frozen=True)
class Directive:
    name: str
    argument: str = ""

    @property
    def command(self) -> str:
        """The backticked command of ``setup``/``while``/``after``."""
        match = re.fullmatch(r"`(.+)`", self.argument.strip())
        if not match:
            raise ValueError(f"directive {self.name!r} needs a `command`, got {self.argument!r}")
        return match.group(1)


@dataclasses.dataclass(frozen=True)
class Block:
    path: str          # relative to the repository root
    line: int          # line of the opening fence, 1-based
    info: str          # the fence's info string as written (``python``, ``console``, ...)
    text: str
    section: str
    directives: tuple[Directive, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def language(self) -> str:
        return LANGUAGES.get(self.info.split()[0].lower(), "") if self.info else ""

    def has(self, name: str) -> bool:
        return any(d.name == name for d in self.directives)

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.directives if d.name == name]

    def get(self, name: str) -> Directive | None:
        found = self.all(name)
        return found[0] if found else None

    @property
    def runs(self) -> bool:
        return not self.has("no-run")


def parse_directives(body: str, where: str) -> list[Directive]:
    """``a; b `x; y`; c`` -> directives, splitting on ``;`` outside backticks."""
    parts, current, quoted = [], "", False
    for char in body:
        if char == "`":
            quoted = not quoted
        if char == ";" and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    directives = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        name, _, argument = part.partition(" ")
        if name not in DIRECTIVES:
            raise ValueError(f"{where}: unknown example directive {name!r}")
        if DIRECTIVES[name] and not argument.strip():
            raise ValueError(f"{where}: directive {name!r} needs an argument")
        if not DIRECTIVES[name] and argument.strip():
            raise ValueError(f"{where}: directive {name!r} takes no argument")
        directives.append(Directive(name, argument.strip()))
    return directives


def blocks_of(path: Path, root: Path = ROOT) -> Iterator[Block]:
    """Every fenced block of one Markdown file, in order."""
    relative = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    section = ""
    index = 0
    while index < len(lines):
        line = lines[index]
        fence = _FENCE.match(line)
        if fence is None:
            heading = _HEADING.match(line)
            if heading:
                section = heading.group("title")
            index += 1
            continue
        marker = fence.group("fence")
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and not (lines[index].strip().startswith(marker)
                                          and set(lines[index].strip()) <= {marker[0]}):
            body.append(lines[index])
            index += 1
        index += 1  # the closing fence
        # Directive comments sit on the lines right above the fence (no blank line).
        directives: list[Directive] = []
        above = start - 1
        while above >= 0 and (comment := _COMMENT.match(lines[above])):
            directives[:0] = parse_directives(comment.group("body"), f"{relative}:{above + 1}")
            above -= 1
        yield Block(relative, start + 1, fence.group("info").strip(), "\n".join(body) + "\n",
                    section, tuple(directives))


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and doc/**/*.md, sorted."""
    return [root / "README.md", *sorted((root / "doc").rglob("*.md"))]


def all_blocks(root: Path = ROOT) -> list[Block]:
    return [block for path in doc_files(root) for block in blocks_of(path, root)]


def examples(blocks: Iterable[Block]) -> list[Block]:
    """The blocks in a language the harness runs or parses."""
    return [block for block in blocks if block.language]


def python_groups(blocks: Iterable[Block]) -> list[list[Block]]:
    """Runnable python blocks; a ``continues`` block joins the group before it (same file)."""
    groups: list[list[Block]] = []
    for block in blocks:
        if block.language != "python" or not block.runs:
            continue
        if block.has("continues"):
            if not groups or groups[-1][-1].path != block.path:
                raise ValueError(f"{block.id}: 'continues' but no python block before it")
            groups[-1].append(block)
        else:
            groups.append([block])
    return groups
