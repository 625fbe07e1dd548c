# Every target sets up what it needs: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-unit lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,onnx]'
	touch $@

demo: venv
	$(VENV)/bin/aegis demo --bind 127.0.0.1:8080

lint: venv
	$(VENV)/bin/ruff check appliance tests bench
	$(VENV)/bin/ruff format --check appliance tests bench

test-unit: venv
	$(PY) -m pytest -q tests

test: lint test-unit

clean:
	rm -rf $(VENV) .aegis-demo
