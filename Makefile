# The two quick-start commands: `make demo` (the embedded demo sweep) and `make test`.
# Both create ./.venv and install mqepi into it on first use (pinned by constraints.txt).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mqepi-installed

.PHONY: setup assets test lint demo bench

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The llama.cpp tools and the embedded model, built once into ~/.cache/mqepi (or $$MQEPI_CACHE).
assets: $(STAMP)
	$(BIN)/mqepi toolchain build
	$(BIN)/mqepi assets

test: assets
	$(BIN)/python -m pytest

# ruff, configured in pyproject.toml (CI runs it before the tests).
lint: $(STAMP)
	$(BIN)/ruff check .

demo: $(STAMP)
	$(BIN)/mqepi demo

bench: $(STAMP)
	$(BIN)/python benchmarks/lake_append.py
