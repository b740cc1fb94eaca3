# `make dev` and `make test` work from a fresh clone: both create .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SOCKET ?= /tmp/apisix-python-runner.sock

.PHONY: dev test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

dev: $(VENV)/.installed
	$(PY) -m runner run --socket $(SOCKET) --plugins plugins --log-level debug

test: $(VENV)/.installed lint
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check runner tests plugins
	$(PY) -m ruff format --check runner tests plugins
	$(PY) -m mypy

bench: $(VENV)/.installed
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
