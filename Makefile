# The few commands a newcomer needs. Each sets up .venv itself on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test test-sqlite lint bench bench-quick profile clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

## Set up and run the demo on the embedded SQLite default.
demo: $(VENV)/.installed
	$(BIN)/python -m asyncjobs demo

## Set up and run everything CI runs: lint, types, and the whole test suite on every database.
test: $(VENV)/.installed-dev lint
	$(BIN)/python -m pytest

## The test suite on SQLite only (no database server needed).
test-sqlite: $(VENV)/.installed-dev
	$(BIN)/python -m pytest --dialects sqlite

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks

bench-quick: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks --quick

## Where a worker's time goes in a drain (py-spy), per database: benchmarks/results/profiles/.
profile: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks --only sqlite,postgres,mysql --no-raw \
		--workloads drain_1_worker,serial_drain --profile benchmarks/results/profiles \
		--out benchmarks/results/profiles --name profiled

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
