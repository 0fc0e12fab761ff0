# Quick start (fresh CPU-only machine):  make demo   |   make test
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch; for a GPU machine: make setup TORCH="torch==2.13.0" with your CUDA wheel index.
TORCH ?= torch==2.13.0

.PHONY: setup demo lint test

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev,serve]'
	touch $@

demo: setup
	$(VENV)/bin/sv-engine demo --out demo-out --force

# ruff (configured in pyproject.toml) for lint and format; test runs it first.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/python -m pytest -q tests
