# Entry points for a fresh machine: `make demo`, `make test` and `make lint`.  Each creates .venv and
# installs what it needs (torch 2.14.1 / torchvision 0.29.1 come from the local wheel cache here).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-all lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[test]"
	touch $@

$(VENV)/.lint-installed: $(VENV)/.installed
	$(PIP) install -q -e ".[lint]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/tbx demo --out runs/demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -n 2 -q

# ruff (lint + format check) over the tree; mypy on tbx/config.py, tbx/models, tbx/engine
# (settings in pyproject.toml: strict for the config and engine modules)
lint: $(VENV)/.lint-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -n 2 -q -m ''

clean:
	rm -rf runs/demo .pytest_cache
