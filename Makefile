# The two commands of the README: `make run` and `make test`.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# .run-stamp: kvs and what it needs to run (make run).  .installed-stamp: also the
# test and benchmark tools (make test, lint, bench...); it implies .run-stamp.
RUN_STAMP := $(VENV)/.run-stamp
STAMP := $(VENV)/.installed-stamp
CONFIG ?= etc/kvs.conf
# make bench writes benchmarks/results/local/ (ignored by git); the published
# results: make bench BENCH_ARGS=--save
BENCH_ARGS ?=

.PHONY: run test lint typecheck unit functional bench bench-quick soak servers sample-config clean docs

# The distribution was called kvs before dogpile-kvs: a venv made then drops it,
# or both would register kvs's backends and command.
define make_venv
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip uninstall -q -y kvs 2>/dev/null || true
	rm -rf kvs.egg-info
endef

$(RUN_STAMP): setup.cfg setup.py pyproject.toml
	$(make_venv)
	$(PY) -m pip install -q -e .
	touch $(RUN_STAMP)

$(STAMP): setup.cfg setup.py pyproject.toml
	$(make_venv)
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP) $(RUN_STAMP)

servers:
	sh tools/ensure-servers.sh

run: $(RUN_STAMP)
	$(VENV)/bin/kvs --config-file $(CONFIG) demo

lint: $(STAMP)
	$(VENV)/bin/ruff check kvs tests benchmarks examples
	$(VENV)/bin/mypy

typecheck: lint

# Two pytest workers (pytest-xdist): most tests wait on servers, sleeps and child
# processes, so two share the two cores well.  Each worker starts servers of its own.
PYTEST_WORKERS ?= 2

test: $(STAMP) servers lint
	$(VENV)/bin/pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --durations=25 tests

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

functional: $(STAMP) servers
	$(VENV)/bin/pytest -q tests/functional

bench: $(STAMP) servers
	$(PY) -m benchmarks $(BENCH_ARGS)

bench-quick: $(STAMP) servers
	$(PY) -m benchmarks --quick $(BENCH_ARGS)

soak: $(STAMP) servers
	$(PY) -m benchmarks.soak

# The API reference (Sphinx autodoc, doc/source), warnings as errors.
docs: $(STAMP)
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html doc/source build/docs

sample-config: $(RUN_STAMP)
	$(VENV)/bin/oslo-config-generator --namespace kvs --namespace kvs.provider --output-file etc/kvs.conf.sample

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
