# The few targets a newcomer needs. `make build` and `make test` set up everything they use.
PYTHON ?= python3
VENV   ?= .venv
ENVKIT := $(VENV)/bin/envkit
PY     := $(VENV)/bin/python
IMAGE  ?= pytorch-cuda:2.8

.PHONY: setup test-setup venv test-venv engine test-deps build render test test-unit test-integration lint bench-build repro clean

setup: venv engine

# Everything `make test` uses: the test tools, the engine and the host clients.
test-setup: test-venv engine test-deps

# uv installs the project; `make build` needs nothing more.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m pip install --quiet uv
	$(PYTHON) -m uv venv --seed --quiet --allow-existing $(VENV) --python $(PYTHON)
	$(PYTHON) -m uv pip install --quiet --compile-bytecode --python $(PY) -e .
	touch $@

# The tests add their tools and a CPU torch (the probe runs natively in some tests).
$(VENV)/.test-installed: $(VENV)/.installed
	$(PYTHON) -m uv pip install --quiet --compile-bytecode --python $(PY) -e '.[test]'
	$(PY) -m pip install --quiet 'torch==2.13.0'
	touch $@

venv: $(VENV)/.installed

test-venv: $(VENV)/.test-installed

engine:
	scripts/engine.sh

# Host clients and servers the tests drive (ssh, a headless browser, a registry): only `make test` needs them.
test-deps:
	scripts/test-deps.sh

render: venv
	$(ENVKIT) render $(IMAGE)

build: setup
	$(ENVKIT) build $(IMAGE)

test: test-setup
	$(PY) -m pytest tests

test-unit: test-venv
	$(PY) -m pytest tests/unit

test-integration: test-setup
	$(PY) -m pytest tests/integration

lint: test-venv
	$(VENV)/bin/ruff check envkit tests scripts benchmarks
	$(VENV)/bin/lint-imports

bench-build: test-setup
	$(PY) benchmarks/bench_build.py --image $(IMAGE)

# Two --no-cache builds here and one on a second engine: prints the three image IDs (issue: repro).
repro: test-setup
	scripts/repro-check.sh $(IMAGE)

clean:
	rm -rf $(VENV) .pytest_cache dist build
