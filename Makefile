# Set-up and the two commands of the README.
#   make demo   creates .venv, installs anomem, runs the embedded digits benchmark
#   make test   creates .venv, installs anomem with test tools, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test install lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch==2.13.0 is pinned here only: it is the CPU wheel this machine holds on
# disk. The package itself asks for torch>=2.2, so GPU users keep their build.
install: $(BIN)/python
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.2"
	$(BIN)/pip install -q -e ".[dev]"

demo: install
	$(BIN)/anomem demo

test: install
	$(BIN)/python -m pytest -q -rs

lint: install
	$(BIN)/ruff check anomem tests

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
