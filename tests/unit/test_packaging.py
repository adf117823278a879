"""The distribution: dogpile-kvs, built, checked and installable by its name (issue 13, item 5).

The slow test builds the sdist and, from it, the wheel (``python -m build
--no-isolation``: offline, a few seconds), runs ``twine check --strict`` on both
and looks inside them.  The others read the build inputs directly.
"""

from __future__ import annotations

import configparser
import email.parser
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

import kvs

ROOT = Path(__file__).resolve().parents[2]
NAME = "dogpile-kvs"
#: What a source tree holds that is not source: never copied into the build.
JUNK = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                              "*.py[cod]", ".mypy_cache", ".ruff_cache", ".pytest_cache",
                              ".hypothesis", "*.sqlite3*", ".coverage", "htmlcov")


def setup_py() -> ModuleType:
    """setup.py as a module, without running setup()."""
    spec = importlib.util.spec_from_file_location("kvs_setup_py", ROOT / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metadata_cfg() -> configparser.SectionProxy:
    parser = configparser.RawConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    return parser["metadata"]


def project_urls() -> dict[str, str]:
    lines = [line for line in metadata_cfg()["project_urls"].splitlines() if line.strip()]
    return {key.strip(): value.strip() for key, value in (line.split("=", 1) for line in lines)}


def rendered_links(markdown: str) -> list[str]:
    """Every href and src of ``markdown`` rendered as a package index renders it."""
    from readme_renderer.markdown import render

    html = render(markdown)
    assert html is not None, "the long description does not render"
    return re.findall(r'\b(?:href|src)="([^"]*)"', html)


def check_links(markdown: str, home: str) -> None:
    """Every link absolute or an in-page anchor; those into the repository name real files."""
    links = rendered_links(markdown)
    assert links, "no links at all: the check would prove nothing"
    for link in links:
        assert link.startswith(("https://", "http://", "#")), f"relative link {link!r}"
        for kind in ("blob", "raw"):
            prefix = f"{home}/{kind}/main/"
            if link.startswith(prefix):
                path = link[len(prefix):].split("#", 1)[0]
                assert (ROOT / path).exists(), f"{link} names no file of the repository"


# -- the name, the version, the URLs ---------------------------------------------------------

def test_the_distribution_name_and_version_source() -> None:
    meta = metadata_cfg()
    assert meta["name"] == NAME
    assert meta["version"] == "attr: kvs.__version__"
    assert meta["license"] == "Apache-2.0"
    assert meta["license_files"].split() == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text  # the full text, not a notice
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)?", kvs.__version__)


def test_the_version_is_read_without_importing_kvs_dependencies(tmp_path: Path) -> None:
    # A build environment has setuptools and nothing of kvs's: attr: must work statically.
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent('''
        import sys

        class Refuse:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("dogpile", "oslo_config", "msgpack"):
                    raise ModuleNotFoundError(name, name=name)
                return None

        sys.meta_path.insert(0, Refuse())
        from setuptools.config.expand import read_attr
        print(read_attr("kvs.__version__", root_dir=sys.argv[1]))
        print("kvs" in sys.modules)
    '''))
    done = subprocess.run([sys.executable, str(probe), str(ROOT)], capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [kvs.__version__, "False"]


def test_project_urls_all_start_at_the_one_home_url() -> None:
    home = metadata_cfg()["url"]
    assert home.startswith("https://")
    assert setup_py().home_url() == home
    urls = project_urls()
    assert set(urls) == {"Source", "Documentation", "Issues"}
    for label, url in urls.items():
        assert url == home or url.startswith(home + "/"), (label, url)


# -- the long description --------------------------------------------------------------------

def test_the_long_description_has_only_absolute_links_and_anchors() -> None:
    module = setup_py()
    readme = (ROOT / "README.md").read_text()
    text = module.long_description()
    home = module.home_url()
    check_links(text, home)
    # It is the README: only link targets changed.
    assert len(text.splitlines()) == len(readme.splitlines())
    # The README's own relative links are what got rewritten (it keeps them for a checkout).
    assert "](doc/provider.md)" in readme
    assert f"]({home}/blob/main/doc/provider.md)" in text
    assert "](benchmarks/results/ratios.png)" in readme
    assert f"]({home}/raw/main/benchmarks/results/ratios.png)" in text


def test_link_rewriting_leaves_code_anchors_and_urls_alone() -> None:
    module = setup_py()
    home = "https://example.org/p"
    source = textwrap.dedent("""\
        See [the guide](doc/guide.md#setup), [here](#here), [out](https://x.org/a),
        [mail](mailto:a@b.c), ![plot](./results/plot.png "Plot") and `[code](doc/a.md)`.

        ```python
        d[k](doc/not-a-link.md)
        ```

        <img src="img/logo.svg" alt="logo"> and [a ref][ref].
        [ref]: doc/ref.md
        * [item](examples/)
        """)
    text = module.absolute_links(source, home)
    assert f"[the guide]({home}/blob/main/doc/guide.md#setup)" in text
    assert "[here](#here)" in text and "[out](https://x.org/a)" in text
    assert "[mail](mailto:a@b.c)" in text
    assert f'![plot]({home}/raw/main/results/plot.png "Plot")' in text
    assert "`[code](doc/a.md)`" in text
    assert "d[k](doc/not-a-link.md)" in text
    assert f'<img src="{home}/raw/main/img/logo.svg"' in text
    assert f"\n[ref]: {home}/blob/main/doc/ref.md\n" in text
    assert f"* [item]({home}/blob/main/examples/)" in text
    for link in rendered_links(text):
        assert link.startswith(("https://", "mailto:", "#")), link


# -- make run installs no extras ---------------------------------------------------------------

def make_dry_run(target: str, venv: Path) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "-n", "-C", str(ROOT), target, f"VENV={venv}"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MAKEFLAGS": ""})
    assert done.returncode == 0, done.stderr
    return [line for line in done.stdout.splitlines() if " pip install " in line]


def test_make_run_installs_kvs_without_test_or_bench_extras(tmp_path: Path) -> None:
    venv = tmp_path / "fresh-venv"  # no stamps there: make plans every install step
    installs = make_dry_run("run", venv)
    assert any(line.rstrip().endswith("pip install -q -e .") for line in installs), installs
    for line in installs:
        assert "[" not in line, f"make run installs extras: {line}"
    assert not venv.exists()  # -n ran nothing


def test_make_lint_installs_the_test_and_bench_extras(tmp_path: Path) -> None:
    installs = make_dry_run("lint", tmp_path / "fresh-venv")
    assert any("-e '.[test,bench]'" in line for line in installs), installs


# -- the built sdist and wheel -------------------------------------------------------------------

def sdist_names(path: Path) -> set[str]:
    with tarfile.open(path) as archive:
        names = archive.getnames()
    top = names[0].split("/", 1)[0]
    return {name.split("/", 1)[1] for name in names if "/" in name and name.startswith(top)}


def test_sdist_and_wheel_build_and_pass_twine_check(tmp_path: Path) -> None:
    source, dist = tmp_path / "src", tmp_path / "dist"
    shutil.copytree(ROOT, source, ignore=JUNK)  # the build writes egg-info: not in the tree
    shutil.rmtree(source / "benchmarks" / "results" / "local", ignore_errors=True)
    # The default build: the sdist, then the wheel from the unpacked sdist.
    built = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir",
                            str(dist), str(source)], capture_output=True, text=True,
                           timeout=180, cwd=tmp_path)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    [sdist] = dist.glob("*.tar.gz")
    [wheel] = dist.glob("*.whl")
    assert wheel.name == f"dogpile_kvs-{kvs.__version__}-py3-none-any.whl"

    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict",
                              str(sdist), str(wheel)], capture_output=True, text=True,
                             timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.count("PASSED") == 2, checked.stdout

    names = sdist_names(sdist)
    for required in ("LICENSE", "README.md", "MANIFEST.in", "Makefile", "tox.ini", "setup.py",
                     "setup.cfg", "pyproject.toml", "PKG-INFO", "doc/provider.md",
                     "doc/backends/redis.md", "etc/kvs.conf", "tests/conftest.py",
                     "tests/unit/test_packaging.py", "benchmarks/__main__.py",
                     "benchmarks/results/latest.json", "benchmarks/results/ratios.png",
                     "tools/ensure-servers.sh", "kvs/__init__.py", "kvs/py.typed"):
        assert required in names, f"sdist lacks {required}"
    for tracked in ("doc", "tests", "etc", "examples", "benchmarks", "tools"):
        for path in (source / tracked).rglob("*") if (source / tracked).exists() else ():
            if path.is_file():
                assert path.relative_to(source).as_posix() in names, f"sdist lacks {path}"
    assert not [name for name in names if "__pycache__" in name or name.endswith(".pyc")]
    assert not [name for name in names if name.startswith("benchmarks/results/local")]

    with zipfile.ZipFile(wheel) as archive:
        files = archive.namelist()
        info = f"dogpile_kvs-{kvs.__version__}.dist-info"
        metadata = email.parser.Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert metadata["Name"] == NAME
    assert metadata["Version"] == kvs.__version__
    assert metadata["License"] == "Apache-2.0"
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert sorted(metadata.get_all("Project-URL") or []) == sorted(
        f"{label}, {url}" for label, url in project_urls().items())
    assert "kvs/py.typed" in files and "kvs/__init__.py" in files
    assert any(name.startswith(info) and name.endswith("/LICENSE") for name in files), files
    strays = [name for name in files if not name.startswith(("kvs/", info + "/"))]
    assert strays == [], "the wheel carries more than the kvs package"
    assert "kvs = kvs.cli:main" in entry_points
    # The description a package index shows: the README with working links.
    description = metadata.get_payload()
    assert "# kvs" in description and "## Quick start" in description
    check_links(description, metadata_cfg()["url"])
