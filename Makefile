# The two commands: `make run` and `make test`. Both set up .venv from scratch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= results/quick

.PHONY: run test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# torch first, pinned: that exact version is a CPU wheel; anything else pulls CUDA.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: $(VENV)/.installed
	$(BIN)/slt-superposition reproduce weights-vs-activations --quick --out $(OUT)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15 tests

clean:
	rm -rf $(VENV) results .pytest_cache
