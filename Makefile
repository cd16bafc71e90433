# Two commands: `make run` serves the bundled models, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles from source; its multimodal part is not needed here.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: run test lint install-run install-test clean

run: $(VENV)/.run-installed
	$(BIN)/llm-router serve $(ARGS)

test: $(VENV)/.test-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

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
