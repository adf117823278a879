"""All metadata is in setup.cfg; this file only builds the long description.

The long description is README.md with its relative links (``doc/provider.md``,
``benchmarks/results/ratios.png``, ...) made absolute under the project's home
URL (setup.cfg ``url``): on a package index a relative link points nowhere.
The README itself keeps relative links, which work in a checkout and on the
repository's own pages.  Links in code blocks and code spans are left alone;
in-page anchors (``#proxies``) and absolute URLs are kept as they are.

Needs nothing but the standard library and setuptools: kvs is never imported.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import setuptools

HERE = Path(__file__).resolve().parent
#: The branch whose files the absolute links show.
BRANCH = "main"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# [text](target "title") and ![alt](target): the target is group "target".
_INLINE = re.compile(r"(?P<head>\]\(\s*<?)(?P<target>[^\s)>]+)")
# [label]: target
_REFERENCE = re.compile(r"^(?P<head> {0,3}\[[^\]]+\]:\s*<?)(?P<target>\S+?)(?=>?(\s|$))")
# <img src="..."> and <a href="...">
_HTML = re.compile(r"(?P<head>\b(?:src|href)\s*=\s*[\"'])(?P<target>[^\"']+)")


def home_url(setup_cfg: Path = HERE / "setup.cfg") -> str:
    """The project's home URL, from setup.cfg's ``[metadata] url``."""
    parser = configparser.RawConfigParser()
    parser.read(setup_cfg, encoding="utf-8")
    return parser.get("metadata", "url").rstrip("/")


def absolute(target: str, home: str, branch: str = BRANCH) -> str:
    """``target`` as a link that works off the repository (unchanged if it already does)."""
    if target.startswith(("#", "//")) or _SCHEME.match(target):
        return target
    path = target
    while path.startswith("./"):
        path = path[2:]
    path = path.lstrip("/")
    bare = path.split("#", 1)[0].split("?", 1)[0]
    kind = "raw" if bare.lower().endswith(IMAGE_SUFFIXES) else "blob"
    return f"{home}/{kind}/{branch}/{path}"


def _rewrite_text(text: str, home: str) -> str:
    """Rewrite the links of ``text``, a line without fences, outside its code spans."""
    def sub(match: re.Match[str]) -> str:
        return match.group("head") + absolute(match.group("target"), home)

    pieces = re.split(r"(`+[^`]*`+)", text)
    for index in range(0, len(pieces), 2):  # even pieces are outside code spans
        piece = _REFERENCE.sub(sub, pieces[index]) if index == 0 else pieces[index]
        piece = _INLINE.sub(sub, piece)
        pieces[index] = _HTML.sub(sub, piece)
    return "".join(pieces)


def absolute_links(markdown: str, home: str) -> str:
    """``markdown`` with every relative link made absolute under ``home``."""
    out: list[str] = []
    fence: str | None = None
    for line in markdown.splitlines(keepends=True):
        opened = _FENCE.match(line)
        if fence is not None:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = None
            out.append(line)
        elif opened:
            fence = opened.group(1)
            out.append(line)
        else:
            out.append(_rewrite_text(line, home))
    return "".join(out)


def long_description() -> str:
    return absolute_links((HERE / "README.md").read_text(encoding="utf-8"), home_url())


if __name__ == "__main__":
    setuptools.setup(long_description=long_description())
