# The two commands of the README: `make run` and `make test`.
# Both create .venv and install what they need on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONFIG ?= etc/kvs.conf

.PHONY: run test lint typecheck unit functional bench bench-quick soak servers sample-config clean

$(STAMP): setup.cfg setup.py pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

servers:
	sh tools/ensure-servers.sh

run: $(STAMP)
	$(VENV)/bin/kvs --config-file $(CONFIG) demo

lint: $(STAMP)
	$(VENV)/bin/ruff check kvs tests benchmarks
	$(VENV)/bin/mypy

typecheck: lint

test: $(STAMP) servers lint
	$(VENV)/bin/pytest -q -p no:cacheprovider tests

unit: $(STAMP)
	$(VENV)/bin/pytest -q tests/unit

functional: $(STAMP) servers
	$(VENV)/bin/pytest -q tests/functional

bench: $(STAMP) servers
	$(PY) -m benchmarks

bench-quick: $(STAMP) servers
	$(PY) -m benchmarks --quick

soak: $(STAMP) servers
	$(PY) -m benchmarks.soak

sample-config: $(STAMP)
	$(VENV)/bin/oslo-config-generator --namespace kvs --namespace kvs.provider --output-file etc/kvs.conf.sample

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
