# Two entry points do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv run test lint typecheck check bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mesh-analyzer serve

lint: $(STAMP)
	$(BIN)/ruff check analyzer tests benchmarks
	$(BIN)/ruff format --check analyzer tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck
	$(BIN)/mesh-analyzer rules check
	$(BIN)/mesh-analyzer rules test

test: check
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/match_bench.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
