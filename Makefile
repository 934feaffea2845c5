# Two commands do all the set-up on a fresh machine with Python >= 3.11:
#   make test    create .venv, install rnnscan with its test extras, run the tests
#   make bench   the quick benchmark: parallel vs sequential on this machine (< 2 min on 2 CPU cores)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
PYTEST_WORKERS ?= 2

.PHONY: test bench lint format install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,data,train,plot]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) tests

bench: $(STAMP)
	$(PY) -m benchmarks --config configs/quick.yaml

lint: $(STAMP)
	$(PY) -m ruff check rnnscan benchmarks tests
	$(PY) -m ruff format --check rnnscan benchmarks tests

format: $(STAMP)
	$(PY) -m ruff format rnnscan benchmarks tests
	$(PY) -m ruff check --fix rnnscan benchmarks tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
