"""Every python, shell and ini example of README.md and doc/**/*.md runs here.

One test per block (``README.md:54``); the rules and the directives that a
block can carry are in tests/docs/README.md.  Examples never reach a server
the tests did not start: addresses are rewritten (see
:mod:`tests.docs.harness`) and :mod:`tests.docs.netguard` refuses anything
else.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from oslo_config import cfg

import kvs
import kvs.testing
from tests.docs import extract, harness, netguard
from tests.docs.extract import ROOT, Block
from tests.fixtures import common, redis_servers
from tests.fixtures.common import free_port

BLOCKS = extract.all_blocks()
EXAMPLES = extract.examples(BLOCKS)
PYTHON_GROUPS = extract.python_groups(EXAMPLES)
SHELL = [b for b in EXAMPLES if b.language == "shell" and b.runs]
INI = [b for b in EXAMPLES if b.language == "ini"]
NO_RUN = [b for b in EXAMPLES if not b.runs]

#: The Redis of the README's `kvs.conf` (``url:unix:///run/kvs/redis.sock``,
#: ``password:s3cr3t``): the tests' own server, reached through a symlink at
#: the rewritten socket path.
DOC_REDIS_SOCKET = "/run/kvs/redis.sock"
DOC_REDIS_PASSWORD = "s3cr3t"
def _doc_memcached_servers() -> list[str]:
    """The three memcached servers of doc/backends/memcached.md's multi-server
    examples: the first line that names three, in its order.

    Read from the doc, so the tests themselves name no address.  They are text to
    find, never contacted: examples run with them rewritten to the tests' own
    three servers, and any other host:port to a closed loopback port
    (test_every_example_address_is_rewritten_to_loopback).
    """
    for line in (ROOT / "doc/backends/memcached.md").read_text().splitlines():
        found = [f"{host}:{port}" for host, port in harness.ADDRESS.findall(line)]
        if len(set(found)) >= 3:
            return found[:3]
    return []


DOC_MEMCACHED = _doc_memcached_servers()


def _group_id(group: list[Block]) -> str:
    return group[0].id + "".join(f"+{block.line}" for block in group[1:])


@pytest.fixture(scope="session")
def docs_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis_servers.RedisServer]:
    if redis_servers.REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (run `make servers`)")
    workdir = tmp_path_factory.mktemp("docs-redis")
    server = redis_servers.RedisServer(
        workdir, [f"unixsocket {workdir / 'redis.sock'}", "unixsocketperm 700",
                  f"requirepass {DOC_REDIS_PASSWORD}"],
        client_kwargs={"password": DOC_REDIS_PASSWORD})
    with redis_servers.running(server):
        yield server


@pytest.fixture(scope="session")
def docs_certificates(tmp_path_factory: pytest.TempPathFactory) -> common.TestCertificates:
    if common.OPENSSL is None:
        pytest.skip("openssl is not installed (run `make servers`)")
    return common.TestCertificates(tmp_path_factory.mktemp("docs-certs"), label="kvs docs")


def _certificate_for(name: str, certificates: common.TestCertificates) -> Path:
    """The test certificate that stands in for a file an example names."""
    if "ca" in re.split(r"[^a-z]+", name.lower()):
        return certificates.ca
    return certificates.client_key if name.endswith(".key") else certificates.client_cert


TargetsFactory = Callable[[list[Block]], harness.Targets]


@pytest.fixture
def make_targets(request: pytest.FixtureRequest, tmp_path: Path) -> TargetsFactory:
    """The working directory and rewrites of one example (or group of examples)."""

    def factory(blocks: list[Block]) -> harness.Targets:
        cwd = tmp_path / "cwd"
        (cwd / "etc").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "etc" / "kvs.conf", cwd / "etc" / "kvs.conf")
        targets = harness.Targets(cwd=cwd, closed=f"127.0.0.1:{free_port()}")
        text = "".join(block.text + " ".join(d.argument for d in block.directives)
                       for block in blocks)
        down = any(block.has("servers-down") for block in blocks)
        if DOC_REDIS_SOCKET in text and not down:
            server = request.getfixturevalue("docs_redis")
            link = Path(targets.rewrite(DOC_REDIS_SOCKET))
            link.symlink_to(server.workdir / "redis.sock")
        if any(address in text for address in DOC_MEMCACHED):
            if down:
                pytest.fail("servers-down with memcached addresses is not supported")
            servers = request.getfixturevalue("memcached_servers")
            for address, server in zip(DOC_MEMCACHED, servers):
                targets.addresses[address] = server.address
                targets.ports.add(server.port)
        for path in sorted(set(harness.PATH.findall(text))):
            if path.endswith((".pem", ".crt", ".key")):
                certificates = request.getfixturevalue("docs_certificates")
                shutil.copy(_certificate_for(Path(path).name, certificates),
                            targets.rewrite(path))
        return targets

    return factory


def _config_files(block: Block) -> dict[str, Block]:
    """The ini blocks marked ``file NAME`` above ``block`` in its file (the last one wins)."""
    files: dict[str, Block] = {}
    for other in EXAMPLES:
        if other.path == block.path and other.line < block.line and other.language == "ini":
            for directive in other.all("file"):
                files[directive.argument] = other
    return files


def _write_config_files(block: Block, targets: harness.Targets) -> None:
    for name, source in _config_files(block).items():
        (targets.cwd / name).write_text(targets.rewrite(source.text))


@pytest.mark.parametrize("group", PYTHON_GROUPS, ids=[_group_id(g) for g in PYTHON_GROUPS])
def test_python_example(group: list[Block], make_targets: TargetsFactory,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    targets = make_targets([*group, *(b for block in group
                                      for b in _config_files(block).values())])
    for block in group:
        _write_config_files(block, targets)
    monkeypatch.chdir(targets.cwd)
    monkeypatch.syspath_prepend(str(harness.STAND_INS))
    if group[0].has("pytest"):
        _run_as_pytest(group, targets)
        return
    namespace: dict[str, Any] = {"__name__": "__docs_example__"}
    with kvs.testing.isolated_stores():
        try:
            for block in group:
                for directive in block.all("setup"):
                    argv = harness.shlex.split(targets.rewrite(directive.command), comments=True)
                    status, output = harness.run_kvs(argv, targets)
                    assert status == 0, f"{block.id}: setup failed ({status}): {output}"
                source = targets.rewrite(block.text)
                with netguard.guarded(targets.ports, [str(targets.cwd)]):
                    if harness.is_doctest(source):
                        harness.run_doctest(source, block, namespace)
                    else:
                        harness.run_statements(source, block, namespace)
        finally:
            kvs.testing.reset_registry()


def _run_as_pytest(group: list[Block], targets: harness.Targets) -> None:
    test_file = targets.cwd / "test_docs_example.py"
    test_file.write_text("".join(targets.rewrite(block.text) for block in group))
    (targets.cwd / "pytest.ini").write_text("[pytest]\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c",
         str(targets.cwd / "pytest.ini"), "--rootdir", str(targets.cwd), str(test_file)],
        cwd=targets.cwd, env=targets.environment(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"\b[1-9]\d* passed\b", done.stdout), done.stdout


@pytest.mark.parametrize("block", SHELL, ids=[b.id for b in SHELL])
def test_shell_example(block: Block, make_targets: TargetsFactory) -> None:
    targets = make_targets([block, *_config_files(block).values()])
    _write_config_files(block, targets)
    ran = harness.run_transcript(block, targets.rewrite(block.text), targets)
    assert ran > 0


def _sections(text: str) -> list[str]:
    return re.findall(r"^\[([^\]]+)\]\s*$", text, flags=re.MULTILINE)


@pytest.mark.parametrize("block", INI, ids=[b.id for b in INI])
def test_ini_example_has_no_inline_comment(block: Block) -> None:
    """oslo.config keeps ``value  # comment`` whole: the comment becomes part of the value."""
    offenders = [f"{block.path}:{block.line + number}: {line.strip()}"
                 for number, line in enumerate(block.text.splitlines(), start=1)
                 if "=" in line and not line.lstrip().startswith(("#", ";"))
                 and re.search(r"\s[#;]", line.partition("=")[2])]
    assert not offenders, "inline comments in an ini example:\n" + "\n".join(offenders)


@pytest.mark.parametrize("block", [b for b in INI if b.runs],
                         ids=[b.id for b in INI if b.runs])
def test_ini_example_loads_and_configures(block: Block, make_targets: TargetsFactory,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ini example loads with kvs's loader and configures every store it declares."""
    targets = make_targets([block])
    monkeypatch.chdir(targets.cwd)
    monkeypatch.syspath_prepend(str(harness.STAND_INS))
    path = targets.cwd / "example.conf"
    path.write_text(targets.rewrite(block.text))
    declared = {section.partition(":")[2] for section in _sections(block.text)
                if section.startswith("store:")}
    with kvs.testing.isolated_stores(), netguard.guarded(targets.ports, [str(targets.cwd)]):
        try:
            conf = kvs.load_config([str(path)])
            stores = kvs.configure_stores(conf)
            assert set(stores) == declared
            for name, store in stores.items():
                assert store.is_configured, name
                assert store.backend_name == conf[f"store:{name}"].backend
        finally:
            kvs.testing.reset_registry()


@pytest.mark.parametrize("block", NO_RUN, ids=[b.id for b in NO_RUN])
def test_no_run_example_parses(block: Block, tmp_path: Path) -> None:
    """A block marked no-run still parses, and says why it does not run."""
    reason = block.get("no-run")
    assert reason is not None and re.fullmatch(r"\(.+\)", reason.argument), \
        f"{block.id}: write the reason, as `no-run (why)`"
    if block.language == "python":
        harness.parse_python(block.text, block)
    elif block.language == "shell":
        assert harness.parse_shell(block.text) > 0
    else:
        path = tmp_path / "example.conf"
        path.write_text(block.text)
        sections: dict[str, Any] = {}
        cfg.ConfigParser(str(path), sections).parse()
        assert sections


def test_transcripts_are_tagged() -> None:
    """A block showing ``$ command`` lines is tagged (```console) so that it runs."""
    untagged = [b.id for b in BLOCKS if not b.language
                and any(line.startswith("$ ") for line in b.text.splitlines())]
    assert not untagged, f"tag these blocks ```console: {untagged}"


def test_examples_are_collected() -> None:
    """The extractor finds the README's examples, each once, with directives it knows."""
    ids = [b.id for b in EXAMPLES]
    assert len(ids) == len(set(ids))
    readme = [b for b in EXAMPLES if b.path == "README.md"]
    assert {b.language for b in readme} == {"python", "shell", "ini"}
    assert any(b.section == "Quick start" and b.language == "python" for b in readme)
    assert os.path.samefile(extract.doc_files()[0], ROOT / "README.md")


@pytest.mark.parametrize("block", [b for b in EXAMPLES if b.runs],
                         ids=[b.id for b in EXAMPLES if b.runs])
def test_every_example_address_is_rewritten_to_loopback(block: Block, tmp_path: Path) -> None:
    """No example runs with a host:port that is not loopback: each becomes a server
    of the tests or a closed loopback port, before anything is run."""
    ours = {address: f"127.0.0.1:{20000 + index}" for index, address in enumerate(DOC_MEMCACHED)}
    targets = harness.Targets(cwd=tmp_path, closed="127.0.0.1:9", addresses=ours)
    text = targets.rewrite(block.text)
    allowed = {targets.closed, *ours.values()}
    for host, port in harness.ADDRESS.findall(text):
        assert f"{host}:{port}" in allowed, f"{block.id}: {host}:{port} survives the rewrite"
    assert not any(address in text for address in DOC_MEMCACHED)
