# Two commands: `make run` serves the bundled models, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles from source; its multimodal part is not needed here.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt
PHOENIX := $(VENV)/phoenix/bin/phoenix

.PHONY: run test lint install-run install-test system-packages llama-server clean
# Debian packages the tests start for real (Redis, PostgreSQL; chromium, which Playwright
# drives for the dashboard's tests), installed when missing.
APT_PACKAGES := redis-server postgresql chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

run: $(VENV)/.run-installed
	$(BIN)/llm-router serve $(ARGS)

test: $(VENV)/.test-installed system-packages llama-server $(PHOENIX)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Arize Phoenix, a real OpenTelemetry collector (OTLP over HTTP and gRPC; what it stored is read
# back from its REST API) for tests/test_tracing_collector.py: from PyPI (~1 min), in a venv of
# its own, since its many dependencies are not the project's.
$(PHOENIX): | $(VENV)/bin/python
	$(BIN)/python -m venv $(VENV)/phoenix
	$(VENV)/phoenix/bin/python -m pip install --quiet --disable-pip-version-check 'arize-phoenix>=20.26,<21'

# llama.cpp's own llama-server, built once from the very source llama-cpp-python vendors
# (~10 min on two cores): the tests compare /tokenize, /detokenize, /apply-template and /props
# with it, and the benchmarks measure against it.
llama-server: $(VENV)/.test-installed
	bench/build_llama_server.sh $(BIN)/python > /dev/null

system-packages:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update && $(SUDO) apt-get install -y --no-install-recommends $$missing; \
	fi

lint: $(VENV)/.test-installed
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/mypy

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e '.[default-model]'
	touch $@

$(VENV)/.test-installed: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e '.[all,test]'
	touch $@ $(VENV)/.run-installed

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
