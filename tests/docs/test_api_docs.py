"""The API reference (doc/source, Sphinx autodoc) builds with no warning."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from tests.docs.extract import ROOT

sphinx_cmd = pytest.importorskip("sphinx.cmd.build", reason="sphinx is in the docs extra")

#: Modules the reference must document (each becomes a ``py:module`` target).
PUBLIC_MODULES = [
    "kvs", "kvs.core", "kvs.lock", "kvs.proxy", "kvs.exception", "kvs.loader", "kvs.conf",
    "kvs.testing", "kvs.backends", "kvs.backends.base", "kvs.backends.memory",
    "kvs.backends.sqlite", "kvs.backends.redis", "kvs.backends.redis_sentinel",
    "kvs.backends.redis_cluster", "kvs.backends.memcached", "kvs.provider",
    "kvs.serializers", "kvs.manglers", "kvs.security",
]


@pytest.mark.timeout(120)
def test_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = sphinx_cmd.build_main(
            ["-W", "--keep-going", "-q", "-E", "-b", "html",
             "-d", str(tmp_path / "doctrees"), str(ROOT / "doc" / "source"),
             str(tmp_path / "html")])
    assert status == 0, err.getvalue() + out.getvalue()
    assert "WARNING" not in err.getvalue(), err.getvalue()
    pages = "".join(path.read_text(encoding="utf-8")
                    for path in (tmp_path / "html").rglob("*.html"))
    documented = set(re.findall(r'id="module-([\w.]+)"', pages))
    assert set(PUBLIC_MODULES) <= documented, sorted(set(PUBLIC_MODULES) - documented)
    # autodoc really ran: members of the main classes have entries.
    for target in ("kvs.core.KeyValueStore.configure", "kvs.lock.KeyValueStoreLock.acquire",
                   "kvs.exception.LeaseLost", "kvs.loader.load_config"):
        assert f'id="{target}"' in pages, target
