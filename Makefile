# The two commands: `make demo` (set up and run the demo end to end) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench clean

$(BIN)/delaywatch: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

setup: $(BIN)/delaywatch

demo: setup
	$(BIN)/delaywatch demo

test: setup
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs
