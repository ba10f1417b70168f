# trionet -- every target sets up .venv itself.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

.PHONY: run test test-long lint docs bench bench-quick soak clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e .
	touch $@

$(VENV)/.test: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[test]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[dev]'
	touch $@

$(VENV)/.bench: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -e '.[bench]'
	touch $@

## make run: start `trionet serve echo` on tcp://127.0.0.1:7007 (Ctrl-C drains and stops)
run: $(VENV)/.runtime
	$(VENV)/bin/trionet serve echo

## make test: the whole test suite (a few minutes)
test: $(VENV)/.test
	$(PY) -m pytest -q

## make test-long: the long property-based/fuzz runs, kept out of `make test`
test-long: $(VENV)/.test
	TRIONET_LONG=1 $(PY) -m pytest -q -m "not peer" tests/test_address.py tests/test_connection.py \
		tests/test_proxy_parse.py

## make lint: ruff (lint and format) + mypy --strict
lint: $(VENV)/.dev
	$(VENV)/bin/ruff check trionet tests benchmarks
	$(VENV)/bin/ruff format --check trionet tests benchmarks
	$(VENV)/bin/mypy --strict trionet

## make docs: Sphinx, warnings are errors
docs: $(VENV)/.dev
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs/source docs/_build/html

## make bench: the full side-by-side benchmark (~16 minutes); results in benchmarks/results/
bench: $(VENV)/.bench
	$(PY) benchmarks/run.py

## make bench-quick: a ~1 minute subset, a pre-commit sanity check
bench-quick: $(VENV)/.bench
	$(PY) benchmarks/run.py --quick

## make soak: the chaos soak (MINUTES=5, WORKERS=0); results in SOAK_OUT (see benchmarks/soak)
MINUTES  ?= 5
WORKERS  ?= 0
SOAK_OUT ?= benchmarks/results/soak-latest
soak: $(VENV)/.bench
	$(PY) -m benchmarks.soak --minutes $(MINUTES) --workers $(WORKERS) --out $(SOAK_OUT)

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .mypy_cache .ruff_cache
