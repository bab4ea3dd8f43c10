# Two entry points for a fresh machine: `make demo` and `make test`.  Both create .venv and install
# what they need (torch 2.14.1 / torchvision 0.29.1 come from the local wheel cache here).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-all install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/tbx demo --out runs/demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -n 2 -q

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -n 2 -q -m ''

clean:
	rm -rf runs/demo .pytest_cache
