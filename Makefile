# The few targets a newcomer needs. `make build` and `make test` set up everything they use.
PYTHON ?= python3
VENV   ?= .venv
ENVKIT := $(VENV)/bin/envkit
PY     := $(VENV)/bin/python
IMAGE  ?= pytorch-cuda:2.8

.PHONY: setup venv engine build render test test-unit test-integration lint bench-build repro clean

setup: venv engine

# uv installs the project; the CPU torch in the venv serves the tests that run the probe natively.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m pip install --quiet uv
	$(PYTHON) -m uv venv --seed --quiet --allow-existing $(VENV) --python $(PYTHON)
	$(PYTHON) -m uv pip install --quiet --compile-bytecode --python $(PY) -e '.[test]'
	$(PY) -m pip install --quiet 'torch==2.13.0'
	touch $@

venv: $(VENV)/.installed

engine:
	scripts/engine.sh
	scripts/test-deps.sh

render: venv
	$(ENVKIT) render $(IMAGE)

build: setup
	$(ENVKIT) build $(IMAGE)

test: setup
	$(PY) -m pytest tests

test-unit: venv
	$(PY) -m pytest tests/unit

test-integration: setup
	$(PY) -m pytest tests/integration

lint: venv
	$(VENV)/bin/ruff check envkit tests scripts benchmarks

bench-build: setup
	$(PY) benchmarks/bench_build.py --image $(IMAGE)

# Two --no-cache builds here and one on a second engine: prints the three image IDs (issue: repro).
repro: setup
	scripts/repro-check.sh $(IMAGE)

clean:
	rm -rf $(VENV) .pytest_cache dist build
