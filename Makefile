# Two commands do all set-up on a fresh machine:  `make demo`  and  `make test`.
# Both create .venv on first use, installing torch (CPU build) first and then everything else
# in ONE pip call (a second call would upgrade botocore past aiobotocore's pin; see README).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0

.PHONY: demo test test-fast bench install clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	touch $@

install: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/mirage demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(BIN)/.installed
	$(BIN)/mirage bench-memory --mode full

clean:
	rm -rf $(VENV) runs .pytest_cache
