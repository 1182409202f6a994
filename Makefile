PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/pictory-archiver: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/pictory-archiver
	$(BIN)/pictory-archiver demo

lint: $(BIN)/pictory-archiver
	$(BIN)/ruff check archiver tests
	$(BIN)/ruff format --check archiver tests
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(BIN)/pictory-archiver
	$(BIN)/python tests/bench_sync.py

clean:
	rm -rf $(VENV) pictory-demo .pytest_cache .mypy_cache .ruff_cache
